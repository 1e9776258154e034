"""Calls release the GIL: other Python threads run meanwhile, two generations run at
once, and one Model shared by several threads gives each its own correct answer."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import GREEDY12, VARIANTS, case, case_images, load_cases, model_for

LONG = {"max_new_tokens": 300, "min_new_tokens": 300, "greedy": True}
LONGER = {"max_new_tokens": 600, "min_new_tokens": 600, "greedy": True}


def _count_ticks_during(action):
    """Ticks a pure-Python counter thread makes while `action` runs, and its duration."""
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.05)
        before, start = ticks, time.perf_counter()
        action()
        return ticks - before, time.perf_counter() - start
    finally:
        done.set()
        counter.join()


def test_python_threads_run_while_the_model_works(qwen25, photo):
    qwen25.describe(photo, max_new_tokens=2)  # warm up
    free_ticks, free_seconds = _count_ticks_during(lambda: time.sleep(0.3))
    ticks, seconds = _count_ticks_during(lambda: qwen25.describe(photo, **LONGER))
    share = (ticks / seconds) / (free_ticks / free_seconds)
    # With the GIL held for the whole call the counter would only run until the call
    # starts (a few ms of a >= 0.4 s call: a share under 0.05); released, it gets a core,
    # or a fair part of one on a busy machine.
    assert seconds > 0.2, seconds
    assert share > 0.2, (share, ticks, seconds)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_two_threads_generate_faster_than_one_after_the_other(qwen25, photo):
    def one():
        return qwen25.ask(photo, "What is in this picture?", **LONG)

    load_before = os.getloadavg()[0]
    expected = one()  # warm up
    results = []
    sequential, parallel = [], []
    # Other processes only ever add time, so the fastest of five rounds is the measure.
    with ThreadPoolExecutor(2) as pool:
        for _ in range(5):
            sequential.append(_timed(lambda: [one(), one()]))
            parallel.append(_timed(lambda: results.extend(pool.map(lambda _: one(), range(2)))))
    assert len(results) == 10 and all(r == expected for r in results)
    ratio = min(parallel) / min(sequential)
    print(f"parallel/sequential {ratio:.3f} (fastest of {sequential} / {parallel})")
    # About 0.55-0.65 on two free cores; with the GIL held it would be >= 1.0.
    if ratio >= 0.8 and load_before > os.cpu_count():
        pytest.skip(f"machine busy (load {load_before:.1f}): parallel/sequential {ratio:.2f}")
    assert ratio < 0.8


def test_one_model_many_threads_each_gets_its_own_answer():
    jobs = []
    for variant in VARIANTS:
        model = model_for(variant)
        for c in load_cases(variant):
            if "messages" in c:
                jobs.append((model, case_images(variant, c), c["messages"], c["greedy_tokens"]))
    jobs = jobs * 2

    def run(job):
        model, images, messages, _ = job
        return model.generate(images, messages, **GREEDY12).token_ids

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, jobs))
    assert got == [job[3] for job in jobs]


def test_streams_from_several_threads(qwen25):
    c = case("qwen2_5_vl", "two_images")
    images = case_images("qwen2_5_vl", c)

    def run(_):
        return "".join(qwen25.stream(images, c["messages"], **GREEDY12))

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(run, range(6))) == [c["greedy_text"]] * 6
