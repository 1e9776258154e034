"""Batch jobs that survive bad photos, the image cache, pixel budgets per call and Ctrl-C."""

import _thread
import signal
import threading
import time

import pytest
import vlm

from conftest import FIXTURES, GREEDY12, model_for

IMAGES = FIXTURES / "qwen2_5_vl" / "images"
GREEDY4 = {"max_new_tokens": 4, "greedy": True}


@pytest.fixture
def broken(tmp_path):
    """A file that is not an image, and a path that does not exist."""
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    return text, tmp_path / "missing.jpg"


def ten_items(broken):
    photos = sorted(IMAGES.glob("*.png"))
    items = [photos[i % len(photos)] for i in range(10)]
    items[2], items[7] = broken
    return items


def test_a_batch_of_ten_with_two_broken_files_returns_eight_results_and_two_errors(qwen25, broken):
    items = ten_items(broken)
    got = qwen25.describe_batch(items, batch_size=4, on_error="return", **GREEDY4)
    assert len(got) == 10
    assert isinstance(got[2], vlm.ImageError) and not isinstance(got[2], vlm.ImageNotFoundError)
    assert isinstance(got[7], vlm.ImageNotFoundError)
    for i, r in enumerate(got):
        if i not in (2, 7):
            assert r == qwen25.describe(items[i], **GREEDY4), i
    with pytest.raises(vlm.ImageError):
        qwen25.describe_batch(items, batch_size=4, **GREEDY4)


def test_full_results_and_ask_batch(qwen25):
    photos = sorted(IMAGES.glob("*.png"))
    full = qwen25.describe_batch(photos, batch_size=2, full=True, **GREEDY4)
    assert all(isinstance(g, vlm.Generation) for g in full)
    questions = ["What is this?", "照片中主菜是什么?", "Any text?"]
    pairs = list(zip(photos, questions))
    got = qwen25.ask_batch(pairs, batch_size=2, **GREEDY4)
    assert got == [qwen25.ask(p, q, **GREEDY4) for p, q in pairs]
    with pytest.raises(vlm.InputError, match="pair"):
        qwen25.ask_batch([photos[0]], **GREEDY4)
    bad = qwen25.ask_batch([photos[0], (photos[0], "ok?")], on_error="return", **GREEDY4)
    assert isinstance(bad[0], vlm.InputError) and isinstance(bad[1], str)
    with pytest.raises(vlm.InputError, match="on_error"):
        qwen25.describe_batch(photos, on_error="ignore")


def test_map_yields_in_order_as_batches_finish_and_reads_lazily(qwen25):
    photo = IMAGES / "a.png"
    pulled = []

    def library():
        for i in range(30):
            pulled.append(i)
            yield photo

    results = qwen25.map(library(), batch_size=3, max_new_tokens=1)
    first = next(results)
    assert isinstance(first, str)
    time.sleep(1.0)  # a slow consumer: the job waits for it instead of reading on
    # At most: the results waiting for the consumer (2 batches), the batch whose results
    # wait to be sent, and the batch prepared meanwhile.
    assert len(pulled) <= 15, pulled
    rest = list(results)
    assert len(rest) == 29 and len(pulled) == 30


def test_a_generator_that_raises_midway_keeps_the_finished_items(qwen25):
    photo = IMAGES / "a.png"

    def library():
        yield photo
        yield photo
        yield photo
        raise RuntimeError("disk gone")

    got = qwen25.describe_batch(library(), batch_size=2, on_error="return", **GREEDY4)
    assert len(got) == 4 and all(isinstance(r, str) for r in got[:3])
    assert isinstance(got[3], RuntimeError)
    with pytest.raises(RuntimeError, match="disk gone") as info:
        qwen25.describe_batch(library(), batch_size=2, **GREEDY4)
    assert len(info.value.partial_results) == 3
    seen = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for r in qwen25.map(library(), batch_size=2, **GREEDY4):
            seen.append(r)
    assert len(seen) == 3


def test_the_image_cache_skips_the_vision_tower_for_the_same_photo():
    model = vlm.load(FIXTURES / "qwen2_5_vl" / "model", device="cpu", dtype="f32", image_cache_mb=16)
    plain = model_for("qwen2_5_vl")
    photo = IMAGES / "single.png"
    assert model.cache_stats() == {"hits": 0, "misses": 0, "bytes": 0, "entries": 0, "capacity_bytes": 16 << 20}
    first = model.generate(photo, "Describe it.", **GREEDY12)
    second = model.generate(photo.read_bytes(), "What is the main dish?", **GREEDY12)
    assert first.timings.image_cache_hits == 0 and second.timings.image_cache_hits == 1
    assert second.token_ids == plain.generate(photo, "What is the main dish?", **GREEDY12).token_ids
    stats = model.cache_stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)
    assert 0 < stats["bytes"] <= stats["capacity_bytes"]
    assert plain.info["fixed_image_size"] is None


def test_pixel_budget_per_call_and_at_load():
    plain = model_for("qwen2_5_vl")
    photo = IMAGES / "single.png"
    small = plain.generate(photo, "Hi", max_pixels=4 * 28 * 28, **GREEDY4)
    default = plain.generate(photo, "Hi", **GREEDY4)
    assert small.prompt_tokens < default.prompt_tokens
    loaded = vlm.load(FIXTURES / "qwen2_5_vl" / "model", device="cpu", dtype="f32", max_pixels=4 * 28 * 28)
    assert loaded.generate(photo, "Hi", **GREEDY4).token_ids == small.token_ids
    with pytest.raises(vlm.InputError, match="max_pixels"):
        plain.generate(photo, "Hi", max_pixels=100, **GREEDY4)
    with pytest.raises(vlm.InputError, match="min_pixels"):
        plain.generate(photo, "Hi", min_pixels=20000, max_pixels=10000, **GREEDY4)
    with pytest.raises(vlm.InputError, match="max_pixels"):
        vlm.load(FIXTURES / "qwen2_5_vl" / "model", device="cpu", max_pixels=10)


@pytest.fixture
def ctrl_c():
    """Python's own Ctrl-C handler for the test: a shell starts background jobs with SIGINT
    ignored, and Python then installs none, so `interrupt_main` would do nothing (a CI run
    started in the background failed these tests so)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_stops_a_long_call_and_the_model_stays_usable(qwen25, photo, ctrl_c):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            qwen25.describe(photo, max_new_tokens=20000, min_new_tokens=20000)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 10
    assert qwen25.describe(photo, **GREEDY4) == qwen25.describe(photo, **GREEDY4)


def test_ctrl_c_stops_a_batch_job(qwen25, photo, ctrl_c):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            qwen25.describe_batch([photo] * 1000, batch_size=4, max_new_tokens=200, min_new_tokens=200)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 10
    assert len(qwen25.describe_batch([photo], **GREEDY4)) == 1
