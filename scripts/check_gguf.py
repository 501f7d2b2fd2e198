#!/usr/bin/env python3
"""Check a GGUF written by `glm5 quantize` with the PyPI `gguf` package (llama.cpp's gguf-py),
an independent reader and dequantizer for every block format.

    pip install gguf numpy safetensors torch
    glm5 quantize --model models/glm5-tiny --out /tmp/t.gguf --type q4_k_m
    python scripts/check_gguf.py models/glm5-tiny /tmp/t.gguf

For every tensor: gguf-py parses it, dequantizes it, and the values are compared with the HF
checkpoint (experts stacked, kv_b_proj split into attn_k_b (transposed per head) / attn_v_b as
llama.cpp's converter does). The relative RMS error must be within the format's budget. Also
checks the metadata llama.cpp's glm-dsa loader requires.
"""
import json
import re
import sys

import numpy as np
import gguf
from safetensors.numpy import load_file
import glob

BUDGET = {"F32": 1e-7, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 1e-2, "Q6_K": 3e-2, "Q4_K": 1.2e-1, "Q5_K": 6e-2, "IQ4_XS": 1.2e-1, "IQ4_NL": 1.2e-1}


def hf_tensors(d):
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        import torch
        from safetensors.torch import load_file as lt
        for k, v in lt(f).items():
            out[k] = v.float().numpy()
    return out


def main(hf_dir, path):
    cfg = json.load(open(f"{hf_dir}/config.json"))
    hf = hf_tensors(hf_dir)
    r = gguf.GGUFReader(path)
    f = {k: v for k, v in r.fields.items()}

    def val(k):
        fld = f[k]
        if fld.types[0] == gguf.GGUFValueType.STRING:
            return bytes(fld.parts[-1]).decode()
        if fld.types[0] == gguf.GGUFValueType.ARRAY:
            return [fld.parts[i].tolist()[0] if fld.types[-1] != gguf.GGUFValueType.STRING else bytes(fld.parts[i]).decode() for i in fld.data]
        return fld.parts[-1].tolist()[0]

    assert val("general.architecture") == "glm-dsa"
    a = "glm-dsa"
    L = cfg["num_hidden_layers"]
    n_mtp = cfg.get("num_nextn_predict_layers", 0)
    assert val(f"{a}.block_count") == L + n_mtp
    assert val(f"{a}.embedding_length") == cfg["hidden_size"]
    assert val(f"{a}.attention.kv_lora_rank") == cfg["kv_lora_rank"]
    assert val(f"{a}.attention.key_length_mla") == cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    assert val(f"{a}.attention.indexer.top_k") == cfg["index_topk"]
    assert val(f"{a}.expert_count") == cfg["n_routed_experts"]
    if "indexer_types" in cfg:
        assert [bool(x) for x in val(f"{a}.attention.indexer.types")] == [t == "full" for t in cfg["indexer_types"]]
    toks = val("tokenizer.ggml.tokens")
    assert len(toks) == cfg["vocab_size"], len(toks)

    nh, nope, vd, rk = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    names = {
        "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    per = {
        "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q_a.weight": "self_attn.q_a_proj.weight", "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
        "attn_q_b.weight": "self_attn.q_b_proj.weight", "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
        "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight", "attn_output.weight": "self_attn.o_proj.weight",
        "indexer.attn_q_b.weight": "self_attn.indexer.wq_b.weight", "indexer.attn_k.weight": "self_attn.indexer.wk.weight",
        "indexer.k_norm.weight": "self_attn.indexer.k_norm.weight", "indexer.k_norm.bias": "self_attn.indexer.k_norm.bias",
        "indexer.proj.weight": "self_attn.indexer.weights_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
        "ffn_gate_inp.weight": "mlp.gate.weight", "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
        "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight", "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
        "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight", "nextn.enorm.weight": "enorm.weight",
        "nextn.hnorm.weight": "hnorm.weight", "nextn.eh_proj.weight": "eh_proj.weight",
        "nextn.shared_head_norm.weight": "shared_head.norm.weight",
    }
    worst = {}
    for t in r.tensors:
        got = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        m = re.match(r"blk\.(\d+)\.(.+)", t.name)
        if m is None:
            want = hf[names[t.name]]
        else:
            b, rest = int(m.group(1)), m.group(2)
            p = f"model.layers.{b}."
            ex = re.match(r"ffn_(gate|up|down)_exps\.weight", rest)
            if ex:
                want = np.stack([hf[f"{p}mlp.experts.{e}.{ex.group(1)}_proj.weight"] for e in range(cfg["n_routed_experts"])])
            elif rest in ("attn_k_b.weight", "attn_v_b.weight"):
                kvb = hf[p + "self_attn.kv_b_proj.weight"].reshape(nh, nope + vd, rk)
                want = kvb[:, :nope, :].transpose(0, 2, 1) if rest.startswith("attn_k_b") else kvb[:, nope:, :]
            else:
                want = hf[p + per[rest]]
        got = got.reshape(want.shape)
        err = float(np.sqrt(((got - want) ** 2).sum() / max((want ** 2).sum(), 1e-30)))
        ty = t.tensor_type.name
        worst[ty] = max(worst.get(ty, 0.0), err)
        assert err <= BUDGET[ty], f"{t.name} ({ty}): relative RMS error {err:.3g} > {BUDGET[ty]}"
    print(f"{path}: {len(r.tensors)} tensors read by gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''} and match the checkpoint;",
          ", ".join(f"{k} worst rel. RMS {v:.2e}" for k, v in sorted(worst.items())))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
