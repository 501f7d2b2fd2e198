#!/usr/bin/env python3
"""GGUF fixtures made by llama.cpp's own converter, for glm5's GGUF tests.

Writes testdata/gguf/glm5-tiny-vocab.gguf: `convert_hf_to_gguf.py --vocab-only` of the bundled
model (models/glm5-tiny): every hyperparameter and tokenizer key llama.cpp writes for a
`glm-dsa` model (tokenizer.ggml.*, the chat template, general.sampling.*), no tensors and no
`tokenizer.huggingface.json`. Tests rebuild the tokenizer from it and pair it with tensors that
`glm5 quantize` writes in the converter's layout.

The converter comes from the llama.cpp tree vendored in PyPI's `llama-cpp-python` sdist
(0.3.36 was used), and needs torch + transformers (2.15 / 5.25 were used). Two adjustments,
because the bundled model is not one of the converter's known checkpoints:
- config.json gets `"architectures": ["GlmMoeDsaForCausalLM"]` (in a temporary copy);
- the pre-tokenizer is named `glm4`: the converter recognises pre-tokenizers by hashing a known
  model's token ids, and the bundled tokenizer has GLM-4's split regex with its own vocabulary.

Usage:  pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:  (or fetch the sdist)
        tar xzf llama_cpp_python-0.3.36.tar.gz
        pip install torch transformers safetensors numpy
        python3 scripts/make_gguf_fixtures.py --llama-cpp llama_cpp_python-0.3.36/vendor/llama.cpp
        (add --outtype q8_0 --out F.gguf to write the whole model instead)
CI never runs this.
"""
import argparse
import json
import os
import runpy
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "glm5-tiny"))
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata", "gguf", "glm5-tiny-vocab.gguf"))
    ap.add_argument("--outtype", default=None, help="write the whole model in this type (f32, bf16, q8_0)")
    args = ap.parse_args()
    llama = os.path.abspath(args.llama_cpp)
    with tempfile.TemporaryDirectory() as top:
        tmp = os.path.join(top, os.path.basename(os.path.abspath(args.model)))
        os.mkdir(tmp)
        for f in os.listdir(args.model):
            src = os.path.join(os.path.abspath(args.model), f)
            if f != "config.json":
                os.symlink(src, os.path.join(tmp, f))
        with open(os.path.join(args.model, "config.json")) as f:
            cfg = json.load(f)
        cfg["architectures"] = ["GlmMoeDsaForCausalLM"]
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        sys.path[:0] = [os.path.join(llama, "gguf-py"), llama]
        os.chdir(llama)
        from conversion import base  # noqa: E402  (the tree's own package)
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "glm4"
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        argv = ["convert_hf_to_gguf.py", tmp, "--outfile", os.path.abspath(args.out)]
        argv += ["--outtype", args.outtype] if args.outtype else ["--vocab-only"]
        sys.argv = argv
        runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
    print("fixture ->", args.out)


if __name__ == "__main__":
    main()
