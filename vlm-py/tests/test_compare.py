"""vlm.compare: the `vlm compare` evaluation from Python, returning results.json's
records, on the tiny Qwen2-VL and BLIP-2 fixtures and photos the test draws."""

import json
from pathlib import Path

import pytest
import vlm
from PIL import Image

from conftest import REPO

FIXTURES = REPO / "vlm-models" / "tests" / "fixtures"
QWEN = FIXTURES / "qwen" / "qwen2_vl" / "model"
BLIP2 = FIXTURES / "blip2" / "opt" / "model"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (40 * i, 120, 200 - 50 * i)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a photo")
    return folder


def test_compare_returns_plain_records_and_writes_the_report(photos, tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        json.dumps({"photo": "p0.png", "question": "What is this?", "answer": "a cat"})
        + "\n"
        + json.dumps({"photo": "nope.png", "caption": "x"})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "report"
    r = vlm.compare(
        [QWEN, BLIP2, tmp_path / "missing"],
        photos,
        references=refs,
        price_per_hour=3.2,
        batch_size=2,
        max_new_tokens=4,
        languages=["en"],
        cascade=("opt/model", "qwen2_vl/model"),
        threshold=0.0,
        device="cpu",
        dtype="f32",
        report=out,
    )
    assert isinstance(r, dict)
    assert r["photos"] == ["p0.png", "p1.png"]
    assert r["failed_photos"][0]["photo"] == "broken.jpg"
    assert r["unknown_references"] == [{"line": 2, "photo": "nope.png"}]
    qwen, blip2, missing = r["models"]
    assert "missing" in missing["error"] and missing["metrics"] is None
    for m in (qwen, blip2):
        x = m["metrics"]
        assert x["latency_p95_s"] >= x["latency_p50_s"] > 0
        assert x["peak_gpu_memory_bytes"] is None
        assert x["gpu_memory_note"].startswith("not measured")
        assert x["cost_per_1000_photos"] == pytest.approx(
            3.2 * 1000 / x["throughput_photos_per_s"] / 3600
        )
        assert m["quality"]["vqa_scored"] == 1
    # Threshold 0: every photo goes to the strong model, so the cascade scores as Qwen.
    c = r["cascade"]
    assert c["routed_share"] == 1.0
    assert c["quality"] == qwen["quality"]
    for name in ("report.md", "report.html", "results.json"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text(encoding="utf-8")) == r


def test_compare_bad_input_raises_input_error(photos, tmp_path):
    with pytest.raises(vlm.InputError, match="no photo could be read"):
        vlm.compare([QWEN], tmp_path, device="cpu")
    with pytest.raises(vlm.InputError, match="cascade"):
        vlm.compare([QWEN], photos, cascade=("a", "b"), device="cpu")
    with pytest.raises(vlm.InputError, match="language"):
        vlm.compare([QWEN], photos, languages=["fr"], device="cpu")
