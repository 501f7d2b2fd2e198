#!/usr/bin/env bash
# Decode speed of glm5 and llama.cpp on the same llama.cpp-made GGUFs of the bench model,
# alternating runs (BENCHMARKS.md, "llama.cpp's own GGUFs"). CI never runs this.
#
# llama.cpp: the tree vendored in PyPI's llama-cpp-python sdist, e.g.
#   curl -LO <sdist url of llama-cpp-python 0.3.36 from pypi.org/pypi/llama-cpp-python/json>
#   tar xzf llama_cpp_python-0.3.36.tar.gz && cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp \
#     -B llbuild -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
#   make -C llbuild -j2 llama-quantize llama-imatrix llama-bench llama-perplexity
# Usage: scripts/bench_vs_llama_cpp.sh LLAMA_BIN_DIR CALIBRATION_TEXT TYPE...   (e.g. Q4_K_M IQ4_XS)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 text=$2; shift 2
w=bench/weights
glm5=target/release/glm5
[ -d $w/glm5-bench ] || $glm5 synth --config ../shared/bench/glm5-bench.json --out $w/glm5-bench
[ -f $w/glm5-bench-bf16.gguf ] || $glm5 quantize --model $w/glm5-bench --tokenizer models/glm5-tiny \
  --type bf16 --out $w/glm5-bench-bf16.gguf
[ -f $w/bench.imatrix ] || "$bin/llama-imatrix" -m $w/glm5-bench-bf16.gguf -f "$text" \
  -o $w/bench.imatrix -c 512 --chunks 4 -t 2
for t in "$@"; do
  f=$w/llama-$t.gguf
  [ -f "$f" ] || "$bin/llama-quantize" --imatrix $w/bench.imatrix $w/glm5-bench-bf16.gguf "$f" "$t" 2
  for round in 1 2; do
    g=$($glm5 bench --model "$f" --prompt-tokens 16 --gen-tokens 64 --reps 3 --json 2>/dev/null |
      python3 -c "import json,sys; d=json.load(sys.stdin); print('%.1f tok/s, %.0f%% of roofline' % (d['decode_tokens_per_s'], d['decode_roofline_pct']))")
    l=$("$bin/llama-bench" -m "$f" -t 2 -p 0 -n 64 -r 3 -o json 2>/dev/null |
      python3 -c "import json,sys; print('%.1f tok/s' % json.load(sys.stdin)[0]['avg_ts'])")
    echo "$t round $round: glm5 $g | llama.cpp $l"
  done
done
