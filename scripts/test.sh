#!/usr/bin/env bash
# Every test of the project, CPU only: the Rust workspace (unit, parity, doc tests), then
# the Python package (wheel built with maturin into a fresh venv, pytest), and in the same
# venv the examples' Python tests: vlm-server through the `openai` client, and the Ray
# Data captioning example on a local CPU Ray.
# Set VLM_ASSETS to the shared assets folder to include the real-tokenizer checks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
VLM_PY_EXTRA_TESTS="examples/server/tests/python examples/python/tests" \
VLM_PY_EXTRA_PIP="openai ray[data]" \
    bash vlm-py/tests/run.sh
