"""vlm-server through the official `openai` Python client, on loopback with the tiny
Qwen2.5-VL fixture (random weights: gibberish text, but deterministic). Greedy answers
must equal what the `vlm` CLI prints for the same prompt and images."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import FIXTURE

openai = pytest.importorskip("openai", reason="pip install openai to run the server's client tests")

IMAGES = FIXTURE / "images"


def client(server, key: str = "no-key-needed"):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def data_url(name: str) -> str:
    return "data:image/png;base64," + base64.b64encode((IMAGES / name).read_bytes()).decode()


def user(images: list[str], text: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(n)}} for n in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def cli(vlm_cli, *args: str) -> dict:
    out = subprocess.run([str(vlm_cli), *args, "--model", str(FIXTURE / "model"),
                          "--device", "cpu", "--greedy", "--json"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_plain_and_streamed_text(start_server):
    c = client(start_server())
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."}]
    whole = c.chat.completions.create(model="model", messages=messages, max_tokens=16, temperature=0)
    answer = whole.choices[0].message.content
    assert answer and whole.model == "model"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 16

    stream = c.chat.completions.create(model="model", messages=messages, max_tokens=16,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == answer
    assert len(pieces) > 1
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_one_image_as_data_url_equals_the_cli(start_server, vlm_cli):
    c = client(start_server())
    question = "What is in the photo?"
    got = c.chat.completions.create(model="model", messages=[user(["a.png"], question)],
                                    max_tokens=12, temperature=0)
    want = cli(vlm_cli, "ask", "--image", str(IMAGES / "a.png"), "--max-new-tokens", "12", question)
    assert got.choices[0].message.content == want["text"]
    assert got.usage.completion_tokens == len(want["token_ids"])
    assert got.usage.prompt_tokens == want["prompt_tokens"]


def test_two_images_equal_the_cli(start_server, vlm_cli):
    c = client(start_server())
    instruction = "Compare the two photos."
    got = c.chat.completions.create(model="model", messages=[user(["a.png", "b.png"], instruction)],
                                    max_tokens=12, temperature=0)
    # `vlm relate` with an instruction is one user turn: the images, then the instruction.
    want = cli(vlm_cli, "relate", "--image", str(IMAGES / "a.png"), "--image",
               str(IMAGES / "b.png"), "--max-new-tokens", "12", instruction)
    assert got.choices[0].message.content == want["text"]
    assert got.usage.prompt_tokens == want["prompt_tokens"]


def test_a_bad_image_is_a_400(start_server):
    c = client(start_server())
    broken = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(b"no jpeg").decode()}},
        {"type": "text", "text": "?"}]}
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="model", messages=[broken], max_tokens=4)
    assert err.value.status_code == 400
    assert "image 1" in err.value.body["message"]


def test_api_keys(start_server):
    server = start_server("--api-key", "s3cret")
    with pytest.raises(openai.AuthenticationError) as err:
        client(server, "wrong").chat.completions.create(
            model="model", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    ok = client(server, "s3cret")
    assert [m.id for m in ok.models.list()] == ["model"]
    assert ok.chat.completions.create(
        model="model", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics").read().decode()
    return next(float(line.split()[1]) for line in text.splitlines() if line.split()[0] == name)


def wait_until(server, requests: int, queued: int) -> None:
    """Until the server got `requests` requests and `queued` of them wait (the others
    run): a fixed sleep fails on a loaded machine."""
    deadline = time.monotonic() + 30
    while metric(server, "vlm_requests_total") < requests or metric(server, "vlm_queue_depth") != queued:
        assert time.monotonic() < deadline, f"never {requests} requests with {queued} queued"
        time.sleep(0.01)


def test_overload_is_a_429_with_retry_after(start_server):
    server = start_server("--max-batch-size", "1", "--max-queue", "1", "--max-wait-ms", "0")
    c = client(server)
    hi = [{"role": "user", "content": "hi"}]
    results = []

    def call(tokens: int) -> None:
        # vLLM's min_tokens keeps the tiny model from stopping early.
        r = c.chat.completions.create(model="model", messages=hi, max_tokens=tokens,
                                      temperature=0, extra_body={"min_tokens": tokens})
        results.append(r.usage.completion_tokens)

    running = threading.Thread(target=call, args=(3000,))
    running.start()
    wait_until(server, requests=1, queued=0)
    waiting = threading.Thread(target=call, args=(4,))
    waiting.start()
    wait_until(server, requests=2, queued=1)
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="model", messages=hi, max_tokens=4)
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "1"
    running.join()
    waiting.join()
    assert sorted(results) == [4, 3000]


def test_response_format_json_schema_constrains_the_answer(start_server):
    """The tiny random model's free output is garbage; constrained, it must be valid JSON of
    the schema."""
    import json

    c = client(start_server())
    schema = {"type": "object", "properties": {"dish": {"type": "string", "maxLength": 8},
                                                "people": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["dish", "people"], "additionalProperties": False}
    whole = c.chat.completions.create(
        model="model", messages=[user(["a.png"], "What is on the table?")], max_tokens=48,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "meal", "schema": schema}})
    answer = json.loads(whole.choices[0].message.content)
    assert set(answer) == {"dish", "people"} and isinstance(answer["people"], int), answer
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="model", messages=[user([], "Hi")], max_tokens=4,
                                  response_format={"type": "xml"})
