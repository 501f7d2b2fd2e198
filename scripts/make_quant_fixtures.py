#!/usr/bin/env python3
"""Block-format fixtures for glm5's quant kernels, with the PyPI `gguf` package (llama.cpp's
gguf-py) as the independent oracle.

For each of Q8_0, Q4_K, Q5_K, Q6_K: `testdata/quant/<type>.blocks.bin` holds 64 blocks of random
bytes (the f16 scale fields replaced by finite values of realistic size) and
`<type>.dequant.npy` holds gguf-py's `dequantize` of them (float32). For Q8_0 also
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
    x = rng.standard_normal((8, 96)).astype(np.float32)
    x[1, 5] = 40.0  # outlier
    x[2, :32] = 0.0  # all-zero block
    x[3] *= 1e-3
    np.save(os.path.join(args.out, "q8_0.input.npy"), x)
    quantize(x, T.Q8_0).reshape(-1).tofile(os.path.join(args.out, "q8_0.quantized.bin"))
    print("fixtures ->", args.out)


if __name__ == "__main__":
    main()
