#!/usr/bin/env bash
# Builds the CUDA binaries that run on the GPU machine: vlm-bench and the parity tests
# (the GPU check). With a system CUDA (nvcc on PATH, CUDA_COMPUTE_CAP set) this is just
# `cargo build --release --features cuda`; on a machine without CUDA it first installs the
# CUDA 13.0 build toolchain from PyPI (../shared/gpu/cuda-toolchain.sh) when that exists.
# Output: .devbin/{vlm-bench,qwen_parity}.gz plus the files run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
if ! command -v nvcc >/dev/null && [ -f "$root/../shared/gpu/cuda-toolchain.sh" ]; then
  # shellcheck disable=SC1091
  source "$root/../shared/gpu/cuda-toolchain.sh"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/vlm-target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cargo build --release --features cuda -p vlm-bench
test_bin=$(cargo test --release --features cuda -p vlm-models --test qwen_parity --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "qwen_parity":
        print(m["executable"])' | tail -1)
mkdir -p .devbin
gzip -9c "$CARGO_TARGET_DIR/release/vlm-bench" > .devbin/vlm-bench.gz
strip -o /tmp/qwen_parity.stripped "$test_bin" && gzip -9c /tmp/qwen_parity.stripped > .devbin/qwen_parity.gz
[ -f "$root/../shared/gpu/device-env.sh" ] && cp "$root/../shared/gpu/device-env.sh" .devbin/
# real-size configs and tokenizer files for the random checkpoints (not in the repo)
if [ -d "$root/../shared/assets/qwen-vl" ]; then
  mkdir -p .devbin/assets
  cp -r "$root/../shared/assets/qwen-vl/Qwen2.5-VL-7B-Instruct" .devbin/assets/
  mkdir -p .devbin/assets/Qwen3-VL-8B-Instruct
  cp "$root/../shared/assets/qwen-vl/Qwen3-VL-8B-Instruct/"*.json .devbin/assets/Qwen3-VL-8B-Instruct/
  cp "$root/../shared/assets/qwen-vl/Qwen2.5-VL-7B-Instruct/"{vocab.json,merges.txt} .devbin/assets/Qwen3-VL-8B-Instruct/
fi
ls -la .devbin
