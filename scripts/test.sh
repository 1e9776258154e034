#!/usr/bin/env bash
# Every test of the project, CPU only: the Rust workspace (unit, parity, doc tests), then
# the Python package (wheel built with maturin into a fresh venv, pytest), and in the same
# venv the examples' Python tests: vlm-server through the `openai` client, and the Ray
# Data captioning example on a local CPU Ray.
# Set VLM_ASSETS to the shared assets folder to include the real-tokenizer checks.
# Tests that cannot run here (no VLM_ASSETS, no chromium...) print a SKIPPED line and are
# counted at the end; with VLM_REQUIRE_ALL_TESTS=1 (.ci/run) they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VLM_SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/vlm-skipped.XXXXXX")
export VLM_SKIP_LOG
trap 'rm -f "$VLM_SKIP_LOG"' EXIT
cargo test --workspace
VLM_PY_EXTRA_TESTS="examples/server/tests/python examples/python/tests" \
VLM_PY_EXTRA_PIP="openai ray[data]" \
    bash vlm-py/tests/run.sh
skipped=$(grep -c '^SKIPPED' "$VLM_SKIP_LOG" || true)
echo "== Rust tests skipped: $skipped (Python skips: pytest's summaries above)"
[ "$skipped" = 0 ] || sed 's/^/   /' "$VLM_SKIP_LOG"
