"""ray_caption.py on a real local Ray (CPU) with the tiny Qwen2.5-VL fixture: captions
equal vlm's own greedy describe, and a second run only captions the new photo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[1]
MODEL = EXAMPLE_DIR.parents[1] / "vlm-models/tests/fixtures/qwen/qwen2_5_vl/model"

ray = pytest.importorskip("ray", reason="pip install 'ray[data]' to run the Ray example's test")
sys.path.insert(0, str(EXAMPLE_DIR))
import ray_caption  # noqa: E402

import vlm  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # Ray's workers import ray_caption to rebuild the actors: put it on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(EXAMPLE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def photo(path: Path, seed: int) -> None:
    from PIL import Image

    img = Image.new("RGB", (64, 48))
    img.putdata([((x * 7 + seed * 60) % 256, (y * 11 + seed * 30) % 256, seed * 80 % 256)
                 for y in range(48) for x in range(64)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def rows(output: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [r for f in sorted(output.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return [json.loads(line) for f in sorted(output.glob("*.json"))
            for line in f.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_captions_then_resumes_with_only_the_new_photo(local_ray, tmp_path, fmt, capsys):
    photos, output = tmp_path / "photos", tmp_path / "captions"
    photo(photos / "a.png", 1)
    photo(photos / "trip/b.png", 2)
    (photos / "notes.txt").write_text("not a photo")
    args = ["--model", str(MODEL), "--input", str(photos), "--output", str(output),
            "--format", fmt, "--batch-size", "2", "--concurrency", "1", "--num-gpus", "0",
            "--device", "cpu", "--max-new-tokens", "6"]

    assert ray_caption.main(args) == 0
    first = rows(output, fmt)
    assert sorted(Path(r["path"]).name for r in first) == ["a.png", "b.png"]
    assert "2 photos captioned, 0 skipped" in capsys.readouterr().out

    model = vlm.load(str(MODEL), device="cpu")
    for r in first:
        assert r["error"] is None
        assert r["model"] == "model"
        assert r["caption"] == model.describe(r["path"], max_new_tokens=6, greedy=True, max_pixels=1003520)

    photo(photos / "c.png", 3)
    assert ray_caption.main(args) == 0
    assert "1 photos captioned, 2 skipped" in capsys.readouterr().out
    second = rows(output, fmt)
    assert sorted(Path(r["path"]).name for r in second) == ["a.png", "b.png", "c.png"]
    assert len({r["hash"] for r in second}) == 3, "a photo was captioned twice"


def test_a_broken_photo_gets_an_error_row_and_is_retried(local_ray, tmp_path, capsys):
    photos, output = tmp_path / "photos", tmp_path / "captions"
    photo(photos / "good.png", 4)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["--model", str(MODEL), "--input", str(photos), "--output", str(output),
            "--format", "jsonl", "--num-gpus", "0", "--device", "cpu", "--max-new-tokens", "4"]
    assert ray_caption.main(args) == 0
    by_name = {Path(r["path"]).name: r for r in rows(output, "jsonl")}
    assert by_name["good.png"]["caption"]
    assert by_name["broken.jpg"]["caption"] is None
    assert "Image" in by_name["broken.jpg"]["error"]
    assert "1 without a caption" in capsys.readouterr().out
    # The next run tries the broken one again and nothing else.
    assert ray_caption.main(args) == 0
    assert "0 photos captioned, 1 skipped" in capsys.readouterr().out
