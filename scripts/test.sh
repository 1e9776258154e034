#!/usr/bin/env bash
# Every test of the project, CPU only: the Rust workspace (unit, parity, doc tests), then
# the Python package (wheel built with maturin into a fresh venv, pytest).
# Set VLM_ASSETS to the shared assets folder to include the real-tokenizer checks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
bash vlm-py/tests/run.sh
