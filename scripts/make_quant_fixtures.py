#!/usr/bin/env python3
"""Block-format fixtures for glm5's quant kernels, with the PyPI `gguf` package (llama.cpp's
gguf-py) as the independent oracle.

For each of Q8_0, Q4_K, Q5_K, Q6_K and the formats of crates/kernels/src/lowbit.rs (Q4_0, Q4_1,
Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M):
`testdata/quant/<type>.blocks.bin` holds 64 blocks (24 for the low-bit formats, 32-64 where a grid has more entries) of random bytes (the f16 scale fields
replaced by finite values of realistic size; IQ1_M's scale is spread over four nibbles) and
`<type>.dequant.npy` holds gguf-py's `dequantize` of them (float32). The i-quants' grid
indices sweep every grid entry, so a changed entry changes some value. The low-bit formats use
their own generator (seed + 1), so the first four files do not change when formats are added. For Q8_0 also
`q8_0.input.npy` (random float32 rows with outliers and an all-zero block) and
`q8_0.quantized.bin`, gguf-py's bit-exact port of ggml's `quantize_row_q8_0_ref`.

Made with gguf 0.19.0 (PyPI) and numpy.
Usage:  pip install gguf numpy
        python3 scripts/make_quant_fixtures.py [--out testdata/quant]
CI never runs this.
"""
import argparse
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_BLOCKS = 64
# (type, block bytes, byte offsets of f16 scale fields)
LAYOUT = {
    "q8_0": (T.Q8_0, 34, [0]),
    "q4_k": (T.Q4_K, 144, [0, 2]),
    "q5_k": (T.Q5_K, 176, [0, 2]),
    "q6_k": (T.Q6_K, 210, [208]),
}


# The formats of lowbit.rs: (type, block bytes, byte offsets of f16 scale fields).
LOW_BIT = {
    "q4_0": (T.Q4_0, 18, [0]),
    "q4_1": (T.Q4_1, 20, [0, 2]),
    "q5_0": (T.Q5_0, 22, [0]),
    "q5_1": (T.Q5_1, 24, [0, 2]),
    "iq4_nl": (T.IQ4_NL, 18, [0]),
    "q2_k": (T.Q2_K, 84, [80, 82]),
    "q3_k": (T.Q3_K, 110, [108]),
    "iq4_xs": (T.IQ4_XS, 136, [0]),
    "iq2_xxs": (T.IQ2_XXS, 66, [0]),
    "iq2_xs": (T.IQ2_XS, 74, [0]),
    "iq2_s": (T.IQ2_S, 82, [0]),
    "iq3_xxs": (T.IQ3_XXS, 98, [0]),
    "iq3_s": (T.IQ3_S, 110, [0]),
    "iq1_s": (T.IQ1_S, 50, [0]),
    "iq1_m": (T.IQ1_M, 56, []),
}


LOW_BIT_BLOCKS = 24
# Blocks for the grid formats whose grids have more entries than 24 blocks index.
GRID_BLOCKS = {"iq2_s": 32, "iq1_s": 64, "iq1_m": 64}
GRID_SIZES = {"iq2_xxs": 256, "iq2_xs": 512, "iq2_s": 1024, "iq3_xxs": 256, "iq3_s": 512, "iq1_s": 2048, "iq1_m": 2048}


def sweep_grid(name, blocks, rng):
    """Set the grid indices of `blocks` so that every grid entry is used at least once (a
    changed entry then changes some dequantized value)."""
    n = blocks.shape[0]
    per = {"iq3_xxs": 64, "iq3_s": 64}.get(name, 32)
    idx = np.concatenate([rng.permutation(GRID_SIZES[name]) for _ in range(-(-n * per // GRID_SIZES[name]))])
    idx = idx[: n * per].reshape(n, per).astype(np.uint32)
    if name == "iq2_xxs":
        for ib in range(8):
            blocks[:, 2 + 8 * ib:6 + 8 * ib] = idx[:, 4 * ib:4 * ib + 4]
    elif name == "iq2_xs":
        words = blocks[:, 2:66].copy().view(np.uint16)
        words = (words & np.uint16(0xFE00)) | idx.astype(np.uint16)
        blocks[:, 2:66] = words.view(np.uint8)
    elif name == "iq2_s":
        blocks[:, 2:34] = idx & 0xFF
        qh = np.zeros((n, 8), dtype=np.uint32)
        for g in range(32):
            qh[:, g // 4] |= (idx[:, g] >> 8) << (2 * (g % 4))
        blocks[:, 66:74] = qh
    elif name == "iq3_xxs":
        blocks[:, 2:66] = idx
    elif name == "iq3_s":
        blocks[:, 2:66] = idx & 0xFF
        qh = np.zeros((n, 8), dtype=np.uint32)
        for i in range(64):
            qh[:, i // 8] |= (idx[:, i] >> 8) << (i % 8)
        blocks[:, 66:74] = qh
    elif name == "iq1_s":
        blocks[:, 2:34] = idx & 0xFF
        words = blocks[:, 34:50].copy().view(np.uint16) & np.uint16(0xF000)
        for g in range(32):
            words[:, g // 4] |= ((idx[:, g] >> 8) << (3 * (g % 4))).astype(np.uint16)
        blocks[:, 34:50] = words.view(np.uint8)
    elif name == "iq1_m":
        blocks[:, 0:32] = idx & 0xFF
        qh = blocks[:, 32:48].astype(np.uint32) & 0x88
        for g in range(32):
            qh[:, g // 2] |= (idx[:, g] >> 8) << (4 * (g % 2))
        blocks[:, 32:48] = qh


def scales(rng, n=LOW_BIT_BLOCKS):
    return (rng.uniform(1e-4, 2e-2, size=n) * rng.choice([-1, 1], size=n)).astype(np.float16)


def low_bit(out, rng):
    for name, (qt, size, f16_fields) in LOW_BIT.items():
        n = GRID_BLOCKS.get(name, LOW_BIT_BLOCKS)
        blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
        for off in f16_fields:
            blocks[:, off:off + 2] = scales(rng, n).view(np.uint8).reshape(n, 2)
        if name in GRID_SIZES:
            sweep_grid(name, blocks, rng)
        if qt == T.IQ1_M:
            # The f16 scale's four nibbles are the top nibbles of the four u16 scale words.
            bits = scales(rng, n).view(np.uint16).astype(np.uint16)
            words = blocks[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
            for i in range(4):
                words[:, i] |= ((bits >> np.uint16(4 * i)) & np.uint16(0xF)) << np.uint16(12)
            blocks[:, 48:56] = words.view(np.uint8)
        raw = blocks.reshape(-1)
        deq = dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert np.isfinite(deq).all(), name
        raw.tofile(os.path.join(out, f"{name}.blocks.bin"))
        np.save(os.path.join(out, f"{name}.dequant.npy"), deq)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata", "quant"))
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for name, (qt, size, f16_fields) in LAYOUT.items():
        blocks = rng.integers(0, 256, size=(N_BLOCKS, size), dtype=np.uint8)
        for off in f16_fields:
            vals = (rng.uniform(1e-4, 2e-2, size=N_BLOCKS) * rng.choice([-1, 1], size=N_BLOCKS)).astype(np.float16)
            blocks[:, off:off + 2] = vals.view(np.uint8).reshape(N_BLOCKS, 2)
        raw = blocks.reshape(-1)
        deq = dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert np.isfinite(deq).all()
        raw.tofile(os.path.join(args.out, f"{name}.blocks.bin"))
        np.save(os.path.join(args.out, f"{name}.dequant.npy"), deq)
    low_bit(args.out, np.random.default_rng(args.seed + 1))
    x = rng.standard_normal((8, 96)).astype(np.float32)
    x[1, 5] = 40.0  # outlier
    x[2, :32] = 0.0  # all-zero block
    x[3] *= 1e-3
    np.save(os.path.join(args.out, "q8_0.input.npy"), x)
    quantize(x, T.Q8_0).reshape(-1).tofile(os.path.join(args.out, "q8_0.quantized.bin"))
    print("fixtures ->", args.out)


if __name__ == "__main__":
    main()
