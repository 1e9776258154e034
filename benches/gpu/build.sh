#!/usr/bin/env bash
# Builds the CUDA binaries that run on the GPU machine: vlm-bench and the parity tests
# (the GPU check). With a system CUDA (nvcc on PATH, CUDA_COMPUTE_CAP set) this is just
# `cargo build --release --features cuda`; on a machine without CUDA it first installs the
# CUDA 13.0 build toolchain from PyPI (../shared/gpu/cuda-toolchain.sh) when that exists.
# Output: .devbin/{vlm-bench,album,vlm,gpu_check}.xz plus the files run.sh needs (about 35 MiB with the
# assets: the device carries 64 MiB with the working tree).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
if ! command -v nvcc >/dev/null && [ -f "$root/../shared/gpu/cuda-toolchain.sh" ]; then
  # shellcheck disable=SC1091
  source "$root/../shared/gpu/cuda-toolchain.sh"
fi
# One target directory per checkout: cargo's artifacts of workspace members do not depend
# on the checkout's path, so two checkouts sharing a directory took each other's build
# script output as fresh (2026-12-03: a binary with the other checkout's PTX, whose kernel
# signatures no longer matched the host code: illegal addresses on the GPU).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cargo build --release --features cuda -p vlm-bench -p vlm-album -p vlm-examples
# The GPU check: every family's parity tests, the quantization and fused-kernel tests, in
# one binary (tests/gpu_check.rs).
tests=(gpu_check)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo test --release --features cuda -p vlm-models "${args[@]}" --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])' > /tmp/vlm-test-bins.txt
mkdir -p .devbin
# xz: half of gzip's size, and the device carries at most 64 MiB with the working tree.
rm -f .devbin/*.gz
xz -9 -T2 -c "$CARGO_TARGET_DIR/release/vlm-bench" > .devbin/vlm-bench.xz
xz -9 -T2 -c "$CARGO_TARGET_DIR/release/album" > .devbin/album.xz
# The `vlm` command (benches/gpu/compare.sh runs `vlm compare` with it).
xz -9 -T2 -c "$CARGO_TARGET_DIR/release/vlm" > .devbin/vlm.xz
for t in "${tests[@]}"; do
  bin=$(awk -v t="$t" '$1 == t {print $2}' /tmp/vlm-test-bins.txt | tail -1)
  strip -o "/tmp/$t.stripped" "$bin" && xz -9 -T2 -c "/tmp/$t.stripped" > ".devbin/$t.xz"
done
# OLD_CARDS=1: the GPU check again, built for compute capability 7.5 (Turing) in target
# directories of its own, twice. candle compiles its quantized matmul kernels to machine code
# for CUDA_COMPUTE_CAP alone, so on the H100/H200:
# - gpu_check_sm75: those kernels cannot run (a build for another card, as a user may
#   have); the load-time check sees it and quantized layers dequantize instead;
# - gpu_check_sm75ptx: NVCC_APPEND_FLAGS adds compute_75 PTX to them, which the driver
#   compiles for the card, so the pre-Ampere quantized kernels themselves run.
# Both run our PTX and candle's for 7.5, without the bf16 and tensor-core paths (candle
# leaves its bf16 kernels out below 8.0, build.rs our mma attention): run.sh with
# CHECKS="gpu_check_sm75 gpu_check_sm75ptx" CHECK_DTYPES="f32 f16". CUDA 13's nvcc takes 7.5
# and up; Pascal (6.x) needs a CUDA 12 toolkit (docs/troubleshooting.md).
sm75_check() { # name, NVCC_APPEND_FLAGS
  CARGO_TARGET_DIR=$root/target/cuda-$1 CUDA_COMPUTE_CAP=75 NVCC_APPEND_FLAGS=$2 cargo test --release \
    --features cuda -p vlm-models --test gpu_check --no-run --message-format=json 2>/dev/null | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | tail -1 > "/tmp/vlm-$1-bin.txt"
  strip -o "/tmp/gpu_check_$1.stripped" "$(cat "/tmp/vlm-$1-bin.txt")" &&
    xz -9 -T2 -c "/tmp/gpu_check_$1.stripped" > ".devbin/gpu_check_$1.xz"
}
if [ "${OLD_CARDS:-0}" = 1 ]; then
  sm75_check sm75 ""
  sm75_check sm75ptx "-gencode=arch=compute_75,code=compute_75"
fi
[ -f "$root/../shared/gpu/device-env.sh" ] && cp "$root/../shared/gpu/device-env.sh" .devbin/
# Real-size configs and tokenizer files for the random checkpoints (not in the repo), packed
# with xz (the tokenizer JSON shrinks ~6×); run.sh unpacks them into .devbin/assets.
assets=$(mktemp -d)
if [ -d "$root/../shared/assets/qwen-vl" ]; then
  cp -r "$root/../shared/assets/qwen-vl/Qwen2.5-VL-7B-Instruct" "$assets/"
  mkdir -p "$assets/Qwen3-VL-8B-Instruct"
  cp "$root/../shared/assets/qwen-vl/Qwen3-VL-8B-Instruct/"*.json "$assets/Qwen3-VL-8B-Instruct/"
  cp "$root/../shared/assets/qwen-vl/Qwen2.5-VL-7B-Instruct/"{vocab.json,merges.txt} "$assets/Qwen3-VL-8B-Instruct/"
  # Qwen2.5-VL-3B shares the 7B's tokenizer and processor files: run.sh assembles its
  # folder, as for the configs in benches/gpu/configs.
  mkdir -p "$assets/configs"
  cp "$root/../shared/assets/qwen-vl/Qwen2.5-VL-3B-Instruct/config.json" "$assets/configs/Qwen2.5-VL-3B-Instruct.json"
fi
if [ -d "$root/../shared/assets/minigpt4/llama-tokenizer" ]; then
  cp -r "$root/../shared/assets/minigpt4/llama-tokenizer" "$assets/"
fi
if [ -d "$root/../shared/assets/blip2/blip2-opt-2.7b" ]; then
  cp -r "$root/../shared/assets/blip2/blip2-opt-2.7b" "$assets/"
fi
rm -rf .devbin/assets
chmod -R u+w "$assets"
tar -cf - -C "$assets" . | xz -9 -T2 > .devbin/assets.tar.xz
rm -rf "$assets"
ls -la .devbin
