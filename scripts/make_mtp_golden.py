#!/usr/bin/env python3
"""Build testdata/golden/mtp_tiny/reference.safetensors: the MTP layer of the bundled model
(models/glm5-tiny, trained jointly with it) computed by PyTorch, following SGLang's and vLLM's
DeepSeek "nextn" formula (glm5-architecture.md section 4):

    e = embed_tokens(t_{i+1});  u = eh_proj(cat(enorm(e), hnorm(h_i)));  u = layer_N(u, pos i)
    logits = lm_head(shared_head.norm(u))

with h_i the main model's final-normed hidden state (transformers 5.23 GlmMoeDsaForCausalLM in
float32) and layer_N transformers' own GlmMoeDsaDecoderLayer (MLA + its own DSA indexer + MoE).

Contents:
  tokens            I64 [T]          the input ids (T > index_topk, so the MTP layer's indexer selects)
  rows              I64 [R]          the positions whose logits are kept (to keep the file small)
  mtp_logits        F32 [R, V]       step 1 at those positions: pair (h_i, t_{i+1}) at position i
  draft             I64 [1]          argmax of step 1 at the last position i = T-2
  chain_logits      F32 [V]          a chained step: pair (u_{T-2}, draft) at position T-1, after the
                                     T-1 step-1 pairs (the MTP cache); u before shared_head.norm is
                                     fed back, as vLLM's proposer does and as the model was trained

Usage:  pip install torch transformers==5.23.0 safetensors
        python3 scripts/make_mtp_golden.py [--out testdata/golden/mtp_tiny]
CI never runs this.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import GlmMoeDsaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny import Mtp, causal_mask, load_init  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: and "
    "God divided the light from the darkness. And God called the light Day, and the darkness he called "
    "Night. And the evening and the morning were the first day. And God said, Let there be a firmament in "
    "the midst of the waters, and let it divide the waters from the waters. And God made the firmament, "
    "and divided the waters which were under the firmament from the waters which were above the "
    "firmament: and it was so. And God called the firmament Heaven."
)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "glm5-tiny"))
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata", "golden", "mtp_tiny"))
    args = ap.parse_args()

    model = GlmMoeDsaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    config = model.config
    mtp = Mtp(config).eval()
    load_init(model, mtp, config, args.model)  # main weights again (same values) and the MTP layer
    model.float(), mtp.float()

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model, "tokenizer.json"))
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert len(ids) > config.index_topk + 8, len(ids)
    ids = torch.tensor(ids)[None]  # [1, T]
    t = ids.shape[1]

    h = model.model(input_ids=ids).last_hidden_state  # [1, T, H], final-normed
    n = t - 1
    pos = torch.arange(n)[None]
    u1, logits1 = mtp(model, h[:, :n], ids[:, 1:], pos, causal_mask(n))  # pairs (h_i, t_{i+1})
    draft = int(logits1[0, -1].argmax())

    # The chained step as a cache would see it: the n step-1 pairs, then (u_{n-1}, draft) at n.
    hs = torch.cat([h[:, :n], u1[:, -1:]], dim=1)
    nxt = torch.cat([ids[:, 1:], torch.tensor([[draft]])], dim=1)
    _, logits2 = mtp(model, hs, nxt, torch.arange(n + 1)[None], causal_mask(n + 1))

    rows = sorted(set(list(range(0, n, 9)) + list(range(n - 6, n))))
    os.makedirs(args.out, exist_ok=True)
    save_file(
        {
            "tokens": ids[0].to(torch.int64),
            "rows": torch.tensor(rows, dtype=torch.int64),
            "mtp_logits": logits1[0, rows].float().contiguous(),
            "draft": torch.tensor([draft], dtype=torch.int64),
            "chain_logits": logits2[0, -1].float().contiguous(),
        },
        os.path.join(args.out, "reference.safetensors"),
    )
    agree = (logits1[0, :-1].argmax(-1) == ids[0, 2:]).float().mean()
    print(f"T={t}, rows={len(rows)}, draft={draft}, step-1 top-1 agreement with the text {agree:.3f}")


if __name__ == "__main__":
    main()
