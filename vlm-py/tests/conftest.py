"""Shared fixtures: the tiny random-weight Qwen-VL parity models of vlm-models.

Each variant folder holds ``model/`` (a loadable checkpoint), ``images/`` and
``cases.json``, whose cases carry the reference's 12 greedy token ids
(tools/fixtures/qwen_vl.py made them with HF transformers).
"""

import json
import os
from pathlib import Path

# One compute thread for candle: the tiny models are dominated by per-op overhead, which
# a pool of several threads only adds to (4x slower on two busy cores), and each
# generation then keeps to about one core, so the thread test measures the GIL release
# rather than candle's own parallelism. Must be set before vlm starts its thread pool.
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import pytest
import vlm

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "vlm-models" / "tests" / "fixtures" / "qwen"
VARIANTS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def load_cases(variant):
    return json.loads((FIXTURES / variant / "cases.json").read_text(encoding="utf-8"))["cases"]


def case(variant, name):
    return next(c for c in load_cases(variant) if c["name"] == name)


def case_images(variant, c):
    return [FIXTURES / variant / p for p in c["images"]]


_models = {}


def model_for(variant):
    """One loaded model per variant for the whole session (f32 on the CPU, as the
    reference tokens were made)."""
    if variant not in _models:
        _models[variant] = vlm.load(FIXTURES / variant / "model", device="cpu", dtype="f32")
    return _models[variant]


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture
def model(variant):
    return model_for(variant)


@pytest.fixture
def qwen25():
    return model_for("qwen2_5_vl")


@pytest.fixture
def photo():
    """The single-image cases' photo (qwen2_5_vl's copy)."""
    return FIXTURES / "qwen2_5_vl" / "images" / "single.png"


GREEDY12 = {"max_new_tokens": 12, "greedy": True}
