"""What runs where: vlm.cuda_available(), vlm.devices(), and the Rust log events (device
fallback, load steps and times) arriving in Python's `logging` under "vlm.*" loggers."""

import logging

import pytest
import vlm
from conftest import FIXTURES

MODEL = FIXTURES / "qwen2_5_vl" / "model"


def test_devices_lists_the_cpu_first():
    devices = vlm.devices()
    cpu = devices[0]
    assert cpu["kind"] == "cpu" and cpu["index"] == 0
    assert isinstance(cpu["name"], str) and cpu["name"]
    if cpu["total_memory"] is not None:
        assert 0 < cpu["total_memory"]
        assert cpu["free_memory"] is None or cpu["free_memory"] <= cpu["total_memory"]
    assert all(d["kind"] == "cuda" for d in devices[1:])
    assert set(cpu) == {"index", "name", "kind", "total_memory", "free_memory", "compute_capability"}
    # A GPU is listed exactly when CUDA is usable.
    assert (len(devices) > 1) == vlm.cuda_available()


@pytest.mark.skipif(vlm.cuda_available(), reason="needs a build or machine without CUDA")
def test_auto_device_warns_why_it_falls_back_and_logs_the_load(caplog):
    caplog.set_level(logging.INFO, logger="vlm")
    model = vlm.load(MODEL, device="auto")
    assert model.info["device"] == "cpu"

    fallback = [r for r in caplog.records if r.name == "vlm.device"]
    assert [r.levelno for r in fallback] == [logging.WARNING], caplog.text
    message = fallback[0].getMessage()
    assert "device=auto runs on the CPU" in message
    # This test runs on CPU-only builds: the reason says how to get CUDA.
    assert "--features cuda" in message or "no CUDA device is visible" in message

    loaded = [
        r
        for r in caplog.records
        if r.name == "vlm.load" and r.levelno == logging.INFO and "loaded" in r.getMessage()
    ]
    assert len(loaded) == 1, caplog.text
    text = loaded[0].getMessage()
    assert "qwen2_5_vl" in text and " on cpu" in text and "weights read" in text, text


def test_python_log_levels_apply_at_once(caplog):
    # Levels are read from Python at each record, not cached at the first one.
    caplog.set_level(logging.ERROR, logger="vlm")
    vlm.load(MODEL, device="cpu")
    assert not [r for r in caplog.records if r.name.startswith("vlm")], caplog.text
    caplog.set_level(logging.DEBUG, logger="vlm")
    vlm.load(MODEL, device="cpu")
    steps = [r.getMessage() for r in caplog.records if r.name == "vlm.load"]
    assert any(m.startswith("weights: ") for m in steps), steps
    assert any("config, tokenizer and device ready" in m for m in steps), steps
