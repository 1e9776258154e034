"""Every fixture case through the Python API gives the reference's greedy token ids."""

import pytest
from conftest import FIXTURES, GREEDY12, VARIANTS, case, case_images, load_cases, model_for

CASES = [(v, c["name"]) for v in VARIANTS for c in load_cases(v)]


def run_case(method, variant, name):
    c = case(variant, name)
    model = model_for(variant)
    images = case_images(variant, c)
    if "raw_prompt" in c:
        return c, method(model)(images, c["raw_prompt"], raw=True, **GREEDY12)
    return c, method(model)(images, c["messages"], **GREEDY12)


@pytest.mark.parametrize("variant,name", CASES)
def test_generate_matches_reference(variant, name):
    c, out = run_case(lambda m: m.generate, variant, name)
    assert out.token_ids == c["greedy_tokens"]
    assert out.prompt_tokens == c["prompt_len"]
    assert out.text == c["greedy_text"]
    assert out.finish_reason == "length"


@pytest.mark.parametrize("variant,name", CASES)
def test_stream_matches_reference(variant, name):
    c, stream = run_case(lambda m: m.stream, variant, name)
    pieces = list(stream)
    assert stream.result is not None
    assert stream.result.token_ids == c["greedy_tokens"]
    assert "".join(pieces) == stream.result.text == c["greedy_text"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ask_matches_reference(variant):
    c = case(variant, "chinese_question")
    (photo,) = case_images(variant, c)
    question = c["messages"][0]["content"][1]["text"]
    assert model_for(variant).ask(photo, question, **GREEDY12) == c["greedy_text"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_relate_with_instruction_matches_reference(variant):
    c = case(variant, "two_images")
    instruction = c["messages"][0]["content"][2]["text"]
    got = model_for(variant).relate(case_images(variant, c), instruction, **GREEDY12)
    assert got == c["greedy_text"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_plain_text_prompt_is_one_user_turn(variant):
    c = case(variant, "text_only")
    out = model_for(variant).generate(None, c["messages"][0]["content"][0]["text"], **GREEDY12)
    assert out.token_ids == c["greedy_tokens"]


def test_fixtures_are_present():
    for v in VARIANTS:
        assert (FIXTURES / v / "model" / "config.json").is_file()
