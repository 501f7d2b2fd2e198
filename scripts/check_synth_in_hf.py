#!/usr/bin/env python3
"""Check that checkpoints written by `glm5 synth` load in HF transformers 5.23 and give the same
logits as `glm5 logits`.

Usage:  cargo build --release && pip install torch transformers==5.23.0 safetensors numpy
        python3 scripts/check_synth_in_hf.py
Builds a tiny glm_moe_dsa config (with an MTP layer, which HF ignores by design), synthesizes it
in f32 and bf16, loads each with GlmMoeDsaForCausalLM.from_pretrained (no missing keys allowed),
and compares HF float32 logits with `glm5 logits` on a token sequence longer than index_topk.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import GlmMoeDsaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GLM5 = os.path.join(ROOT, "target", "release", "glm5")
CONFIG = {
    "architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa", "vocab_size": 128,
    "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 3,
    "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 32,
    "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
    "routed_scaling_factor": 2.5, "norm_topk_prob": True, "index_n_heads": 4, "index_head_dim": 32,
    "index_topk": 6, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-5, "max_position_embeddings": 512,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "rope_interleave": True,
    "indexer_rope_interleave": True, "tie_word_embeddings": False, "eos_token_id": [1], "bos_token_id": 0,
}


def main():
    print("transformers", transformers.__version__)
    tokens = [3, 17, 99, 42, 5, 5, 8, 120, 64, 1, 33, 7, 90, 12]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(CONFIG, f)
        for dtype in ["f32", "bf16"]:
            out = os.path.join(tmp, dtype)
            subprocess.run([GLM5, "synth", "--config", cfg_path, "--out", out, "--dtype", dtype, "--seed", "5"], check=True)
            model, info = GlmMoeDsaForCausalLM.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
            model = model.float().eval()
            print(dtype, "missing:", info["missing_keys"], "unexpected (MTP, ignored by HF):", len(info["unexpected_keys"]))
            if info["missing_keys"] or info["mismatched_keys"]:
                ok = False
            with torch.no_grad():
                ref = model(torch.tensor([tokens]), use_cache=False).logits[0].numpy()
            npy = os.path.join(tmp, f"{dtype}.npy")
            subprocess.run([GLM5, "logits", "--model", out, "--tokens", ",".join(map(str, tokens)), "--out", npy], check=True)
            ours = np.load(npy)
            rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
            print(f"{dtype}: max|glm5 - HF| / max|HF| = {rel:.2e}")
            ok &= rel < 1e-4
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
