#!/usr/bin/env bash
# What a new Rust app does: a crate outside this workspace with one dependency line,
# `vlm-core = { path = … }`, that loads a model folder and describes a photo. CI runs it
# (.ci/run) on the tiny Qwen2.5-VL fixture, so `cargo add vlm-core` stays enough.
#
#   scripts/scratch_app.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
app=$(mktemp -d "${TMPDIR:-/tmp}/vlm-scratch-app.XXXXXX")
trap 'rm -rf "$app"' EXIT
mkdir -p "$app/src"
cat > "$app/Cargo.toml" <<TOML
[package]
name = "scratch-app"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
vlm-core = { path = "$root/vlm-core" }

# As in the workspace: candle and gemm optimised even in debug builds (and, sharing its
# target directory, the very artifacts the tests already compiled).
[profile.dev.package."*"]
opt-level = 3
debug = false
TOML
cat > "$app/src/main.rs" <<'RUST'
use vlm_core::{GenerationOptions, Image, LoadOptions};

fn main() -> vlm_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let (dir, photo) = (args.next().expect("model dir"), args.next().expect("photo"));
    let model = vlm_core::load(&dir, &LoadOptions::default())?;
    let image = Image::open(&photo)?;
    let caption = model.describe(&image, &GenerationOptions::greedy(6))?;
    println!("{} via {}: {caption:?}", photo, model.info().model_type);
    Ok(())
}
RUST
# The workspace's lock file pins the same dependency versions the tests use, and its target
# directory already holds them compiled.
cp "$root/Cargo.lock" "$app/"
python3 - "$app/photo.png" <<'PY'
import struct, sys, zlib
w, h = 32, 24
raw = b"".join(b"\0" + b"".join(bytes((x * 8 % 256, y * 10 % 256, 128)) for x in range(w)) for y in range(h))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
out=$(cargo run --quiet --manifest-path "$app/Cargo.toml" -- \
  "$root/vlm-models/tests/fixtures/qwen/qwen2_5_vl/model" "$app/photo.png")
echo "$out"
case "$out" in
  *"via qwen2_5_vl: "*) echo "scratch app: ok" ;;
  *) echo "scratch app: unexpected output" >&2; exit 1 ;;
esac
