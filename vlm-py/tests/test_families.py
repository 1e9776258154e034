"""BLIP-2 and MiniGPT-4 through the Python API: the fixture models of vlm-models give the
reference's greedy tokens (tools/fixtures/blip2.py, tools/fixtures/minigpt4/)."""

import json

import pytest
import vlm
from conftest import GREEDY12, REPO

FIXTURES = REPO / "vlm-models" / "tests" / "fixtures"
_models = {}


def fixture(family, variant):
    root = FIXTURES / family / variant
    cases = json.loads((root / "cases.json").read_text(encoding="utf-8"))["cases"]
    key = (family, variant)
    if key not in _models:
        _models[key] = vlm.load(root / "model", device="cpu", dtype="f32")
    return root, _models[key], {c["name"]: c for c in cases}


@pytest.mark.parametrize("variant", ["opt", "t5"])
def test_blip2_raw_prompts_match_reference(variant):
    root, model, cases = fixture("blip2", variant)
    assert model.info["family"] == "blip2"
    for c in cases.values():
        out = model.generate(root / c["image"], c["prompt"] or "", raw=True, **GREEDY12)
        assert out.token_ids == c["greedy_tokens"], c["name"]


@pytest.mark.parametrize("variant", ["opt", "t5"])
def test_blip2_ask_is_question_answer(variant):
    root, model, cases = fixture("blip2", variant)
    out = model.generate(root / "images/a.png", "Question: what is in the picture? Answer:", raw=True, **GREEDY12)
    assert model.ask(root / "images/a.png", "what is in the picture?", **GREEDY12) == out.text
    assert out.token_ids == cases["question"]["greedy_tokens"]


def test_blip2_takes_one_image_per_call():
    root, model, _ = fixture("blip2", "opt")
    with pytest.raises(vlm.VlmError):
        model.generate([root / "images/a.png", root / "images/b.png"], "", raw=True, **GREEDY12)


@pytest.mark.parametrize("variant", ["vicuna0", "llama2"])
def test_minigpt4_chat_matches_reference(variant):
    root, model, cases = fixture("minigpt4", variant)
    assert model.info["family"] == "minigpt4"
    for name in ["describe", "ask", "two_images"]:
        c = cases[name]
        images = [root / "images" / p for p in c["images"]]
        # The fixture's cases turn the demo's repetition penalty (1.05, our default) off.
        out = model.generate(images, c["question"], repetition_penalty=1.0, **GREEDY12)
        assert out.token_ids == c["greedy_tokens"], name


@pytest.mark.parametrize("variant", ["vicuna0", "llama2"])
def test_minigpt4_describe_uses_the_demo_question(variant):
    root, model, cases = fixture("minigpt4", variant)
    text = model.describe(root / "images/a.png", repetition_penalty=1.0, **GREEDY12)
    want = model.generate(
        root / "images/a.png", "Describe this image in detail.", repetition_penalty=1.0, **GREEDY12
    )
    assert want.token_ids == cases["describe"]["greedy_tokens"]
    assert text == want.text


def test_int4_save_and_reload(tmp_path):
    root = FIXTURES / "qwen" / "qwen2_5_vl"
    out = tmp_path / "int4"
    held = vlm.save_quantized(root / "model", out, "int4", dtype="f32")
    assert (out / "model.gguf").is_file()
    fresh = vlm.load(root / "model", device="cpu", dtype="f32", quant="int4")
    saved = vlm.load(out, device="cpu", dtype="f32")
    assert saved.info["quantization"] == "int4"
    assert saved.info["weight_bytes"] == fresh.info["weight_bytes"] == held
    photo = root / "images" / "single.png"
    assert saved.describe(photo, **GREEDY12) == fresh.describe(photo, **GREEDY12)
