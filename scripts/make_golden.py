#!/usr/bin/env python3
"""Build the golden fixtures in testdata/golden/ from the reference: HF transformers 5.23.

Each fixture folder holds a tiny checkpoint written by `save_pretrained` (or, for FP8, by this
script's block quantizer), plus `reference.safetensors` with:
  tokens                                  I64 [T]     the input ids
  logits                                  F32 [T, V]  reference logits (float32 model)
  logits_bf16                             F32 [T, V]  (bf16 fixture only) HF run in bfloat16
  layers.{i}.mlp.gate.topk                I64 [T, k]  routed experts chosen per token
  layers.{i}.self_attn.indexer.topk       I64 [T, K]  indexer selection per query (full layers)

Usage:  pip install torch transformers==5.23.0 safetensors numpy
        python3 scripts/make_golden.py [--seed N] [--out testdata/golden]
CI never runs this; it only reads the committed output. Re-run with another seed to check the
Rust code is not tuned to one fixture (tests read whatever is in the folder).
"""
import argparse
import json
import math
import os
import shutil

import torch
from safetensors.torch import save_file, load_file

import transformers
from transformers import (
    DeepseekV32Config,
    DeepseekV32ForCausalLM,
    Glm4MoeLiteConfig,
    Glm4MoeLiteForCausalLM,
    GlmMoeDsaConfig,
    GlmMoeDsaForCausalLM,
)

assert transformers.__version__.startswith("5.23"), f"need transformers 5.23, have {transformers.__version__}"

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_attention_heads=2,
    num_key_value_heads=2,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    routed_scaling_factor=2.5,
    max_position_embeddings=256,
    initializer_range=0.1,
    eos_token_id=[1],
    pad_token_id=None,
    bos_token_id=0,
)
DSA = dict(index_n_heads=4, index_head_dim=16, index_topk=5)

FIXTURES = {
    # Several dense layers; T=16 > index_topk=5 so the sparse path drops keys.
    "dsa_f32": (GlmMoeDsaConfig, GlmMoeDsaForCausalLM, dict(
        num_hidden_layers=4, first_k_dense_replace=2, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        **DSA), "float32", 16),
    # IndexShare (full, shared, full, shared, shared) and group-limited routing.
    "dsa_share_groups": (GlmMoeDsaConfig, GlmMoeDsaForCausalLM, dict(
        num_hidden_layers=5, first_k_dense_replace=1, index_topk_freq=3, index_skip_topk_offset=2,
        n_group=4, topk_group=2, num_experts_per_tok=3,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, **DSA), "float32", 14),
    # GLM-4.7-Flash: MLA + MoE, no indexer.
    "lite_f32": (Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM, dict(
        num_hidden_layers=3, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}), "float32", 12),
    # DeepSeek-V3.2: half-split indexer RoPE, YaRN with mscale, group-limited routing.
    "dsv32_yarn": (DeepseekV32Config, DeepseekV32ForCausalLM, dict(
        num_hidden_layers=3, first_k_dense_replace=1, n_group=4, topk_group=2,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0,
                         "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
                         "mscale": 1.0, "mscale_all_dim": 1.0},
        **DSA), "float32", 13),
    # BF16 storage.
    "dsa_bf16": (GlmMoeDsaConfig, GlmMoeDsaForCausalLM, dict(
        num_hidden_layers=3, first_k_dense_replace=1, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        **DSA), "bfloat16", 12),
    # Block FP8 with ragged last blocks (16x16 blocks over 24/32/40/... sized matrices).
    "dsa_fp8": (GlmMoeDsaConfig, GlmMoeDsaForCausalLM, dict(
        num_hidden_layers=3, first_k_dense_replace=1, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        **DSA), "fp8", 12),
}

FP8_BLOCK = [16, 16]
# What GLM-5-FP8 quantizes: attention, indexer wq_b/wk, MLP and expert projections.
FP8_SUFFIXES = ("q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight",
                "o_proj.weight", "wq_b.weight", "wk.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def randomize_non_matrices(model, gen):
    """Norms near 1 (not all ones), a random correction bias, random LayerNorm bias."""
    for name, p in model.named_parameters():
        if p.dim() == 1:
            with torch.no_grad():
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.05 * torch.randn(b.shape, generator=gen))


def fp8_quantize(w, block):
    rows, cols = w.shape
    b0, b1 = block
    sr, sc = math.ceil(rows / b0), math.ceil(cols / b1)
    scale = torch.zeros(sr, sc)
    q = torch.zeros_like(w)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * b0:(i + 1) * b0, j * b1:(j + 1) * b1] = (blk / s).clamp(-448, 448)
    q8 = q.to(torch.float8_e4m3fn)
    deq = q8.float() * scale.repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
    return q8, scale, deq


def boundary_gap(scores, k):
    """Smallest gap between the k-th and (k+1)-th finite score over rows (inf if none)."""
    gap = float("inf")
    for row in scores:
        row = row[torch.isfinite(row) & (row > -1e30)]
        if row.numel() > k:
            v = torch.sort(row, descending=True).values
            gap = min(gap, float(v[k - 1] - v[k]))
    return gap


def indexer_scores(mod, hidden_states, q_resid, position_embeddings, attention_mask):
    """The indexer's pre-top-k scores, recomputed exactly as HF 5.23 does (no cache)."""
    import transformers.models.glm_moe_dsa.modeling_glm_moe_dsa as g
    import transformers.models.deepseek_v32.modeling_deepseek_v32 as d
    B, S, _ = hidden_states.shape
    cos, sin = position_embeddings
    q = mod.wq_b(q_resid).view(B, S, mod.n_heads, mod.head_dim)
    q_rot, q_pass = torch.split(q, [mod.qk_rope_head_dim, mod.head_dim - mod.qk_rope_head_dim], dim=-1)
    k = mod.k_norm(mod.wk(hidden_states)).unsqueeze(2)
    k_rot, k_pass = torch.split(k, [mod.qk_rope_head_dim, mod.head_dim - mod.qk_rope_head_dim], dim=-1)
    if "glm_moe_dsa" in type(mod).__module__:
        q_rot, k_rot = g.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    else:
        q_rot, k_rot = d.apply_rotary_pos_emb(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    q = torch.cat([q_rot, q_pass], dim=-1)
    k = torch.cat([k_rot, k_pass], dim=-1).squeeze(2)
    scores = torch.relu(torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1)) * mod.softmax_scale)
    w = mod.weights_proj(hidden_states).float() * (mod.n_heads ** -0.5)
    return (torch.matmul(w.unsqueeze(-2), scores).squeeze(-2) + attention_mask)[0]


def capture(model, cfg):
    """Hooks that record router and indexer top-k per layer, and the smallest top-k boundary gap."""
    rec = {}
    gaps = []
    hooks = []
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if hasattr(mlp, "gate") and hasattr(mlp.gate, "e_score_correction_bias"):
            def gate_hook(mod, inp, out, i=i):
                rec[f"layers.{i}.mlp.gate.topk"] = out[2].detach().to(torch.int64).reshape(-1, out[2].shape[-1])
                x = inp[0].reshape(-1, mod.hidden_dim).float()
                choice = torch.sigmoid(x @ mod.weight.float().T) + mod.e_score_correction_bias
                g = choice.view(-1, mod.num_group, mod.num_experts // mod.num_group)
                gs = g.topk(2, dim=-1)[0].sum(-1)
                if mod.num_group > 1:
                    gaps.append(boundary_gap(gs, mod.topk_group))
                keep = gs.topk(mod.topk_group, dim=-1)[1]
                mask = torch.zeros_like(gs).scatter(1, keep, 1).bool()
                masked = choice.masked_fill(~mask.repeat_interleave(mod.num_experts // mod.num_group, 1), float("-inf"))
                gaps.append(boundary_gap(masked, mod.top_k))
            hooks.append(mlp.gate.register_forward_hook(gate_hook))
        ix = getattr(layer.self_attn, "indexer", None)
        if ix is not None:
            def ix_hook(mod, inp, out, i=i):
                rec[f"layers.{i}.self_attn.indexer.topk"] = out.detach().to(torch.int64)[0]
                gaps.append(boundary_gap(indexer_scores(mod, *inp[:4]), mod.index_topk))
            hooks.append(ix.register_forward_hook(ix_hook))
    return rec, gaps, hooks


def build(name, spec, seed, out_root):
    cfg_cls, model_cls, kw, dtype, T = spec
    kw = dict(COMMON, **kw)
    torch.manual_seed(seed)
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    randomize_non_matrices(model, gen)
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if dtype == "bfloat16":
        # Store bf16; the f32 reference runs over the bf16-rounded weights.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        model_bf16 = model_cls(cfg).eval()
        model_bf16.load_state_dict(model.state_dict())
        model_bf16 = model_bf16.to(torch.bfloat16)
        for n_, b in model_bf16.named_buffers():
            if n_.endswith("e_score_correction_bias"):
                b.data = b.data.float()
        model_bf16.save_pretrained(out)
    elif dtype == "fp8":
        sd = model.state_dict()
        stored = {}
        with torch.no_grad():
            for k, v in sd.items():
                if k.endswith(FP8_SUFFIXES) and v.dim() == 2 and ".experts." not in k:
                    q8, scale, deq = fp8_quantize(v.float(), FP8_BLOCK)
                    stored[k] = q8
                    stored[k + "_scale_inv"] = scale
                    v.copy_(deq)
                else:
                    stored[k] = v.contiguous()
        # Experts are fused in memory ([E, 2I, H] / [E, H, I]); store them per expert as checkpoints do.
        for k in list(stored):
            if k.endswith("mlp.experts.gate_up_proj"):
                fused = stored.pop(k)
                pre = k[: -len("gate_up_proj")]
                inter = fused.shape[1] // 2
                for e in range(fused.shape[0]):
                    for part, w in (("gate_proj", fused[e, :inter]), ("up_proj", fused[e, inter:])):
                        q8, scale, deq = fp8_quantize(w.float(), FP8_BLOCK)
                        stored[f"{pre}{e}.{part}.weight"] = q8
                        stored[f"{pre}{e}.{part}.weight_scale_inv"] = scale
                        w.copy_(deq)
            elif k.endswith("mlp.experts.down_proj"):
                fused = stored.pop(k)
                pre = k[: -len("down_proj")]
                for e in range(fused.shape[0]):
                    q8, scale, deq = fp8_quantize(fused[e].float(), FP8_BLOCK)
                    stored[f"{pre}{e}.down_proj.weight"] = q8
                    stored[f"{pre}{e}.down_proj.weight_scale_inv"] = scale
                    fused[e].copy_(deq)
        model.load_state_dict(sd)
        save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(out, "model.safetensors"),
                  metadata={"format": "pt"})
        cfg.save_pretrained(out)
        with open(os.path.join(out, "config.json")) as f:
            c = json.load(f)
        c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": FP8_BLOCK,
                                    "modules_to_not_convert": ["lm_head", "model.embed_tokens", "mlp.gate",
                                                               "indexer.weights_proj"]}
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
    else:
        model.save_pretrained(out)
    # Pick input tokens whose top-k decisions have no near-ties (ReLU makes exact zero ties common),
    # so that the logits are a well-defined target; the Rust tests still compare top-k tie-aware.
    for attempt in range(200):
        tokens = torch.randint(0, cfg.vocab_size, (T,), generator=gen)
        _, gaps, hooks = capture(model, cfg)
        with torch.no_grad():
            model(tokens[None], use_cache=False)
        for h in hooks:
            h.remove()
        if min(gaps, default=1.0) > 1e-4:
            break
    else:
        raise SystemExit(f"{name}: no tie-free token sequence found")
    ref = {"tokens": tokens.clone()}
    if dtype == "bfloat16":
        with torch.no_grad():
            ref["logits_bf16"] = model_bf16(tokens[None], use_cache=False).logits[0].float()
    rec, gaps, hooks = capture(model, cfg)
    with torch.no_grad():
        ref["logits"] = model(tokens[None], use_cache=False).logits[0].float()
    for h in hooks:
        h.remove()
    ref.update(rec)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: T={T} min top-k gap {min(gaps, default=float('inf')):.2e} (attempt {attempt}) vocab={cfg.vocab_size} {size/1024:.0f} KiB, max|logit|={ref['logits'].abs().max():.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "testdata", "golden"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, spec in FIXTURES.items():
        build(name, spec, args.seed, args.out)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(f"Made by `python3 scripts/make_golden.py --seed {args.seed}` with torch {torch.__version__}, "
                f"transformers {transformers.__version__}. See the script's docstring for the file layout.\n")


if __name__ == "__main__":
    main()
