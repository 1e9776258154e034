"""Calls release the GIL: other Python threads run meanwhile, two generations run at
once, and one Model shared by several threads gives each its own correct answer."""

import hashlib
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

    def work_for_half_a_second():
        start = time.perf_counter()
        while time.perf_counter() - start < 0.5:
            qwen25.describe(photo, **LONGER)

    free_ticks, free_seconds = _count_ticks_during(lambda: time.sleep(0.3))
    ticks, seconds = _count_ticks_during(work_for_half_a_second)
    share = (ticks / seconds) / (free_ticks / free_seconds)
    # With the GIL held through each call the counter would only run between calls (a few
    # ms of >= 0.5 s: a share under 0.05); released, it gets a core, or a fair part of one
    # on a busy machine.
    assert share > 0.2, (share, ticks, seconds)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _hash_for(seconds):
    """A GIL-free workload (hashlib releases the GIL on large buffers) of about `seconds`."""
    data = bytes(range(256)) * (1 << 14)  # 4 MiB
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 4:
        hashlib.sha256(data).digest()
        rounds += 1
    rounds = max(1, rounds * 4)
    return lambda: [hashlib.sha256(data).digest() for _ in range(rounds)]


def _speedup(job, pool):
    """Times of two runs of `job` one after the other, then two at once."""
    sequential = _timed(lambda: [job(), job()])
    parallel = _timed(lambda: list(pool.map(lambda _: job(), range(2))))
    return sequential, parallel


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
@pytest.mark.skip_allowed("the machine's load decides whether a second core is free")
def test_two_threads_generate_faster_than_one_after_the_other(qwen25, photo):
    def one():
        return qwen25.ask(photo, "What is in this picture?", **LONG)

    expected = one()  # warm up
    reference = _hash_for(_timed(one))
    model, free = {"seq": [], "par": []}, {"seq": [], "par": []}
    # What two threads gain depends on the cores the machine gives this process right now,
    # so a GIL-free reference workload of the same length runs in the same rounds: the
    # model must gain about as much as it does. Other processes only ever add time, so the
    # fastest of seven rounds is the measure.
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: one(), range(2))) == [expected] * 2
        for _ in range(7):
            for times, job in ((model, one), (free, reference)):
                s, p = _speedup(job, pool)
                times["seq"].append(s)
                times["par"].append(p)
    ratio = min(model["par"]) / min(model["seq"])
    possible = min(free["par"]) / min(free["seq"])
    print(f"parallel/sequential: model {ratio:.3f}, GIL-free reference {possible:.3f}")
    # About 0.55-0.65 for both on two free cores; with the GIL held the model's would be
    # >= 1.0 whatever the reference shows.
    if possible > 0.8:
        pytest.skip(f"the machine gives no second core now (reference {possible:.2f})")
    assert ratio < max(0.8, possible + 0.15), (ratio, possible)


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
