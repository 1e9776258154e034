#!/usr/bin/env bash
# What CI runs for the Python bindings: build the wheel with maturin, install it into a
# fresh venv with the test tools, run pytest (stubtest included).
#
#   vlm-py/tests/run.sh [pytest arguments...]
#
# VLM_PY_PROFILE  cargo profile of the wheel (default: dev; CI uses release, the wheel users get). The workspace's dev profile
#                 builds every dependency at opt-level 3 (candle and gemm are the hot
#                 code), so the tests run at full speed, and those dependency builds are
#                 the ones `cargo build/test` already made; only vlm-core, vlm-models and
#                 vlm-py compile unoptimised. Use `release` to time or ship a wheel.
# VLM_PY_FEATURES cargo features of the wheel, e.g. "cuda" (default: none).
# PYTHON          the interpreter the venv is made from (default: python3, >= 3.9).
# VLM_PY_EXTRA_TESTS  more pytest folders, relative to the repository root, run after
#                 vlm-py's own tests with the same venv and wheel (scripts/test.sh adds the
#                 examples': examples/server/tests/python, examples/python/tests).
# VLM_PY_EXTRA_PIP  more pip packages those tests need (e.g. "openai ray[data]").
set -euo pipefail

crate_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
profile=${VLM_PY_PROFILE:-dev}
features=${VLM_PY_FEATURES:-}
extra_tests=${VLM_PY_EXTRA_TESTS:-}
# Split into words without globbing (`ray[data]` is a pattern to the shell).
read -r -a extra_pip <<< "${VLM_PY_EXTRA_PIP:-}"

work=$(mktemp -d "${TMPDIR:-/tmp}/vlm-py-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

start=$SECONDS
echo "== venv ($("$python" --version 2>&1)) in $work"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet --disable-pip-version-check \
    "maturin>=1.9.4,<2" pytest numpy pillow mypy tqdm jsonschema ${extra_pip[@]+"${extra_pip[@]}"}

echo "== wheel (profile $profile${features:+, features $features})"
"$work/venv/bin/maturin" build --quiet --manifest-path "$crate_dir/Cargo.toml" \
    --profile "$profile" ${features:+--features "$features"} --out "$work/wheels"
wheel=$(ls "$work"/wheels/*.whl)
# One abi3 wheel serves every CPython >= 3.9; a version-specific tag would mean the pyo3
# feature was lost.
case "$(basename "$wheel")" in
  vlm_rs-*-cp39-abi3-*.whl) echo "== $(basename "$wheel")" ;;
  *) echo "expected an abi3 wheel named vlm_rs-…-cp39-abi3-…, got $(basename "$wheel")" >&2; exit 1 ;;
esac
"$venv_python" -m pip install --quiet --disable-pip-version-check --no-index "$wheel"
echo "== built and installed in $((SECONDS - start)) s"

echo "== pytest"
# From the tests folder, so `import vlm` is the installed wheel, not python/vlm.
cd "$crate_dir/tests"
# -rs lists each skip with its reason; strict_skips fails them under VLM_REQUIRE_ALL_TESTS=1.
export PYTHONPATH="$crate_dir/tests${PYTHONPATH:+:$PYTHONPATH}"
"$venv_python" -m pytest -p no:cacheprovider -p strict_skips -rs -q "$@"
for dir in $extra_tests; do
    echo "== pytest $dir"
    (cd "$crate_dir/../$dir" && "$venv_python" -m pytest -p no:cacheprovider -p strict_skips -rs -q)
done
echo "== done in $((SECONDS - start)) s"
