"""The installed distribution: its name is free on PyPI (`vlm-rs`), it imports as `vlm`, and
its metadata names the license and every family."""

import importlib.metadata as md

import vlm


def test_distribution_name_and_import_name():
    dist = md.distribution("vlm-rs")
    assert dist.metadata["Name"] == "vlm-rs"
    assert dist.version == vlm.__version__
    # The wheel holds the package `vlm`, nothing else at the top level.
    tops = {f.parts[0] for f in dist.files or [] if not f.parts[0].endswith(".dist-info")}
    assert tops == {"vlm"}, tops


def test_metadata_is_complete():
    meta = md.metadata("vlm-rs")
    license_text = meta.get("License-Expression") or meta.get("License") or ""
    assert "MIT" in license_text and "Apache-2.0" in license_text, dict(meta)
    summary = meta["Summary"]
    for family in ("Qwen2-VL", "Qwen2.5-VL", "Qwen3-VL", "BLIP-2", "MiniGPT-4"):
        assert family in summary, summary
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Rust" in classifiers
    assert "Typing :: Typed" in classifiers
    assert meta["Requires-Python"] == ">=3.9"
    files = [str(f) for f in md.files("vlm-rs") or []]
    assert any(f.endswith("LICENSE-MIT") for f in files), files
    assert any(f.endswith("LICENSE-APACHE") for f in files), files
