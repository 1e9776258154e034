"""Pixel budgets (min_pixels / max_pixels) through the Python API give the reference's prompt
length and greedy tokens (budgets.json, made by tools/fixtures/qwen_budgets.py with HF
transformers), at load and per call; budgets that make no sense are InputError."""

import json

import pytest
import vlm
from conftest import FIXTURES, VARIANTS, case_images, model_for

GREEDY8 = {"max_new_tokens": 8, "greedy": True}


def load_budgets(variant):
    return json.loads((FIXTURES / variant / "budgets.json").read_text(encoding="utf-8"))


def budget_case(variant, name):
    return next(c for c in load_budgets(variant)["cases"] if c["name"] == name)


def budget_kwargs(c):
    """Only the values the case sets: an unset one must fall back to the load option or the
    checkpoint, as in the reference."""
    return {k: c[k] for k in ("min_pixels", "max_pixels") if c[k] is not None}


def check(c, out):
    assert out.prompt_tokens == c["prompt_len"] == len(c["input_ids"])
    if c["compare_tokens"]:
        assert out.token_ids == c["greedy_tokens"]


CALL_CASES = [(v, c["name"]) for v in VARIANTS for c in load_budgets(v)["cases"]]
# small_single sets both values, max_only_a only max_pixels
LOAD_CASES = [(v, n) for v in VARIANTS for n in ("small_single", "max_only_a")]
INVALID = [(v, c["name"]) for v in VARIANTS for c in load_budgets(v)["invalid_budgets"]]


@pytest.mark.parametrize("variant,name", LOAD_CASES)
def test_load_budget_matches_reference(variant, name):
    c = budget_case(variant, name)
    model = vlm.load(FIXTURES / variant / "model", device="cpu", dtype="f32", **budget_kwargs(c))
    check(c, model.generate(case_images(variant, c), c["messages"], **GREEDY8))


@pytest.mark.parametrize("variant,name", CALL_CASES)
def test_call_budget_matches_reference(variant, name):
    c = budget_case(variant, name)
    out = model_for(variant).generate(case_images(variant, c), c["messages"], **budget_kwargs(c), **GREEDY8)
    check(c, out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_call_budget_overrides_load_budget(variant):
    c = budget_case(variant, "large_single")
    tight = budget_case(variant, "one_group_single")
    model = vlm.load(FIXTURES / variant / "model", device="cpu", dtype="f32", **budget_kwargs(tight))
    check(c, model.generate(case_images(variant, c), c["messages"], **budget_kwargs(c), **GREEDY8))
    check(tight, model.generate(case_images(variant, tight), tight["messages"], **GREEDY8))


def invalid_budget(variant, name):
    c = next(c for c in load_budgets(variant)["invalid_budgets"] if c["name"] == name)
    return c, {"min_pixels": c["min_pixels"], "max_pixels": c["max_pixels"]}


@pytest.mark.parametrize("variant,name", INVALID)
def test_invalid_call_budget_is_input_error(variant, name):
    c, budget = invalid_budget(variant, name)
    with pytest.raises(vlm.InputError, match="min_pixels|max_pixels"):
        model_for(variant).ask(case_images(variant, c)[0], c["question"], **budget, **GREEDY8)


@pytest.mark.parametrize("variant,name", INVALID)
def test_invalid_load_budget_is_input_error(variant, name):
    c, budget = invalid_budget(variant, name)
    # refused when loading or, at the latest, by the first call
    with pytest.raises(vlm.InputError, match="min_pixels|max_pixels"):
        model = vlm.load(FIXTURES / variant / "model", device="cpu", dtype="f32", **budget)
        model.ask(case_images(variant, c)[0], c["question"], **GREEDY8)
