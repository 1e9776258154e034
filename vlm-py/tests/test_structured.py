"""json_schema= / regex= / choices= on the tiny random models: their free output is
garbage, so output that validates comes from the constraint alone."""

import json

import jsonschema
import pytest
import vlm
from test_families import FIXTURES, fixture

RECORD = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "maxLength": 12},
        "scene": {"enum": ["indoor", "outdoor"]},
        "people": {"type": "integer", "minimum": 0, "maximum": 20},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "place": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 6}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["caption", "scene", "people", "confidence", "tags", "place"],
    "additionalProperties": False,
}

# BLIP-2 OPT and MiniGPT-4's fixtures have a 128- and 64-token context.
SMALL = {
    "type": "object",
    "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 1}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "family,variant,schema,budget",
    [
        ("qwen", "qwen2_vl", RECORD, 200),
        ("qwen", "qwen2_5_vl", RECORD, 200),
        ("qwen", "qwen3_vl", RECORD, 200),
        ("blip2", "opt", SMALL, 40),
        ("minigpt4", "llama2", SMALL, 24),
    ],
)
def test_json_schema_output_validates(family, variant, schema, budget):
    root, model, _ = fixture(family, variant)
    text = model.describe(root / "images" / "a.png", json_schema=schema, max_new_tokens=budget)
    jsonschema.validate(json.loads(text), schema)


def test_pydantic_style_schema_objects_are_taken():
    class Tags:  # what pydantic's BaseModel classes offer
        @classmethod
        def model_json_schema(cls):
            return {"type": "array", "items": {"enum": ["cake", "dog"]}, "minItems": 1, "maxItems": 2}

    root, model, _ = fixture("qwen", "qwen2_5_vl")
    g = model.generate(root / "images" / "a.png", "tags?", json_schema=Tags, max_new_tokens=32)
    assert g.finish_reason == "eos"
    jsonschema.validate(json.loads(g.text), Tags.model_json_schema())


def test_choices_and_regex():
    root, model, _ = fixture("qwen", "qwen3_vl")
    photo = root / "images" / "a.png"
    assert model.ask(photo, "indoors?", choices=["yes", "no"], max_new_tokens=8) in ("yes", "no")
    year = model.ask(photo, "year?", regex=r"(19|20)[0-9]{2}", max_new_tokens=8)
    assert len(year) == 4 and year[:2] in ("19", "20") and year.isdigit()


def test_bad_schemas_are_input_errors_naming_the_construct():
    root, model, _ = fixture("qwen", "qwen2_vl")
    photo = root / "images" / "a.png"
    with pytest.raises(vlm.InputError, match="if"):
        model.ask(photo, "x", json_schema={"type": "object", "if": {}}, max_new_tokens=8)
    with pytest.raises(ValueError):
        model.ask(photo, "x", json_schema={"type": "string"}, regex="a", max_new_tokens=8)
    with pytest.raises(TypeError, match="json_schema"):
        model.ask(photo, "x", json_schema=3, max_new_tokens=8)


def test_too_short_a_budget_says_length():
    root, model, _ = fixture("qwen", "qwen2_5_vl")
    g = model.generate(root / "images" / "a.png", "x", json_schema=RECORD, max_new_tokens=4)
    assert g.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(g.text)


@pytest.mark.parametrize("variant", ["qwen2_5_vl", "qwen3_vl"])
def test_locate_gives_boxes_in_the_photo(variant):
    root, model, _ = fixture("qwen", variant)
    assert model.info["grounding"] is True
    from PIL import Image

    photo = root / "images" / "a.png"
    w, h = Image.open(photo).size
    found = model.locate(photo, "the cake", max_new_tokens=80, temperature=1.0, seed=2)
    assert isinstance(found, list)
    for d in found:
        assert set(d) == {"label", "bbox"}
        x1, y1, x2, y2 = d["bbox"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


def test_locate_without_grounding_is_an_input_error():
    root, model, _ = fixture("blip2", "opt")
    assert model.info["grounding"] is False
    with pytest.raises(vlm.InputError, match="cannot locate"):
        model.locate(root / "images" / "a.png", "the cake")
