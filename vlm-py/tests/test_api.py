"""Every method of vlm.Model, vlm.load and the result types."""

import time

import pytest
import vlm
from conftest import FIXTURES, GREEDY12, case, case_images


def test_load_and_info(variant):
    model = vlm.load(str(FIXTURES / variant / "model"), "cpu", "f32", None)
    info = model.info
    assert isinstance(info, dict)
    assert info["model_type"] == variant
    assert info["family"] == "qwen_vl"
    assert (info["device"], info["dtype"], info["quantization"]) == ("cpu", "f32", "none")
    assert info["weight_bytes"] == 4 * info["parameters"] > 0
    assert info["native_multi_image"] is True
    assert info["max_context"] > 0
    assert set(info) == {
        "family",
        "model_type",
        "parameters",
        "dtype",
        "quantization",
        "device",
        "weight_bytes",
        "max_images",
        "native_multi_image",
        "max_context",
        "fixed_image_size",
        "grounding",
    }
    assert info["fixed_image_size"] is None
    assert variant in repr(model)
    assert variant in vlm.supported_model_types()


def test_load_defaults_are_auto(variant):
    info = vlm.load(FIXTURES / variant / "model").info  # os.PathLike, device/dtype "auto"
    if info["device"] == "cpu":
        assert info["dtype"] == "f32"
    else:  # a CUDA build on a machine with a GPU
        assert info["device"].startswith("cuda") and info["dtype"] == "bf16"


def test_quant_option_reaches_the_loader(qwen25):
    path = FIXTURES / "qwen2_5_vl" / "model"
    try:
        model = vlm.load(path, device="cpu", quant="int8")
    except vlm.InputError as e:  # Qwen-VL quantization not implemented yet
        assert "int8" in str(e)
    else:
        assert model.info["quantization"] == "int8"
    with pytest.raises(vlm.InputError, match="int8 or int4"):
        vlm.load(path, quant="int3")


def test_describe_returns_text_and_follows_language(qwen25, photo):
    en = qwen25.describe(photo, **GREEDY12)
    assert isinstance(en, str) and en
    assert qwen25.describe(photo, language="en", **GREEDY12) == en
    zh = qwen25.describe(photo, language="zh", **GREEDY12)
    # Random weights: the text means nothing, but a different prompt gives other tokens.
    assert zh != en
    with pytest.raises(vlm.InputError, match="language"):
        qwen25.describe(photo, language="klingon")


def test_describe_equals_stream_without_prompt(qwen25, photo):
    text = qwen25.describe(photo, language="zh", **GREEDY12)
    stream = qwen25.stream(photo, language="zh", **GREEDY12)
    assert "".join(stream) == text == stream.result.text


def test_ask_equals_stream_with_question(qwen25, photo):
    text = qwen25.ask(photo, "What is in this picture?", **GREEDY12)
    assert "".join(qwen25.stream(photo, question="What is in this picture?", **GREEDY12)) == text
    # A one-element list is one image too.
    assert qwen25.ask([photo], "What is in this picture?", **GREEDY12) == text


def test_relate_default_wording_and_stream(qwen25):
    c = case("qwen2_5_vl", "two_images")
    images = case_images("qwen2_5_vl", c)
    text = qwen25.relate(images, **GREEDY12)
    assert text and text != qwen25.relate(
        images, c["messages"][0]["content"][2]["text"], **GREEDY12
    )
    assert "".join(qwen25.stream(images, **GREEDY12)) == text
    assert qwen25.relate(tuple(images), language="en", **GREEDY12) == text
    assert qwen25.relate(images, language="zh", **GREEDY12) != text


def test_generate_result_object(qwen25, photo):
    out = qwen25.generate([photo], "What is in this picture?", return_logits=True, **GREEDY12)
    assert isinstance(out, vlm.Generation)
    assert len(out.token_ids) == 12 and all(isinstance(t, int) for t in out.token_ids)
    assert out.finish_reason == "length" and out.stop_string is None
    assert out.prompt_tokens > 12
    assert str(out) == out.text
    assert "Generation(" in repr(out)
    t = out.timings
    assert isinstance(t, vlm.Timings)
    for seconds in (t.preprocess, t.image_encode, t.prefill, t.decode, t.time_to_first_token):
        assert isinstance(seconds, float) and 0.0 <= seconds < 60.0
    assert t.preprocess > 0.0 and t.image_encode > 0.0
    assert t.time_to_first_token == pytest.approx(t.preprocess + t.image_encode + t.prefill)
    assert t.decode_steps == 11
    assert t.decode_tokens_per_second > 0
    assert "Timings(" in repr(t)
    # Entry 0 is the prompt's last position, then one per generated token but the last.
    assert len(out.logits) == 12
    vocab = len(out.logits[0])
    assert vocab > max(out.token_ids)
    assert all(len(step) == vocab for step in out.logits)
    # Greedy: each token is the arg-max of its step's logits.
    assert [max(range(vocab), key=s.__getitem__) for s in out.logits] == out.token_ids
    assert qwen25.generate(photo, "What is in this picture?", **GREEDY12).logits is None


def test_generate_messages_with_system_turn(qwen25):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": ["Hello", {"type": "text", "text": ", who are you?"}]},
    ]
    out = qwen25.generate(None, messages, **GREEDY12)
    default_system = qwen25.generate(None, "Hello, who are you?", **GREEDY12)
    assert out.prompt_tokens != default_system.prompt_tokens


def test_generate_rejects_malformed_prompts(qwen25, photo):
    with pytest.raises(TypeError, match="role"):
        qwen25.generate(None, [{"content": "hi"}])
    with pytest.raises(TypeError, match="content type"):
        qwen25.generate(None, [{"role": "user", "content": [{"type": "video"}]}])
    with pytest.raises(TypeError, match="raw=True"):
        qwen25.generate(None, [{"role": "user", "content": "hi"}], raw=True)
    with pytest.raises(TypeError, match="prompt must be"):
        qwen25.generate(None, 42)
    with pytest.raises(vlm.InputError, match="placeholder"):
        qwen25.generate(None, "<|vision_start|><|image_pad|><|vision_end|>hi", raw=True)


def test_generation_options(qwen25, photo):
    base = qwen25.generate(photo, "What is in this picture?", max_new_tokens=20, greedy=True)
    # Stop strings cut the text where the string first appears.
    at = next(
        i for i in range(2, len(base.text)) if base.text[i].isascii() and base.text[i].isalpha()
    )
    stop = base.text[at]
    stopped = qwen25.generate(photo, "What is in this picture?", max_new_tokens=20, stop=[stop])
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert stopped.text == base.text[: base.text.index(stop)]
    assert (
        qwen25.generate(photo, "What is in this picture?", max_new_tokens=20, stop=stop).text
        == stopped.text
    )
    # Sampling: the seed decides.
    kw = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 0.95, "top_k": 50}
    a = qwen25.generate(photo, "What is in this picture?", seed=1, **kw).token_ids
    assert qwen25.generate(photo, "What is in this picture?", seed=1, **kw).token_ids == a
    assert any(
        qwen25.generate(photo, "What is in this picture?", seed=s, **kw).token_ids != a
        for s in (2, 3, 4)
    )
    assert qwen25.generate(
        photo, "What is in this picture?", greedy=False, seed=1, max_new_tokens=4
    ).token_ids
    # Repetition penalty changes greedy output; min_new_tokens holds off the end.
    penalised = qwen25.generate(
        photo, "What is in this picture?", max_new_tokens=20, greedy=True, repetition_penalty=3.0
    )
    assert penalised.token_ids != base.token_ids
    assert len(qwen25.generate(photo, "hi", max_new_tokens=30, min_new_tokens=30).token_ids) == 30
    # None means "not given".
    assert (
        qwen25.generate(
            photo, "What is in this picture?", max_new_tokens=20, greedy=True, seed=None, stop=None
        ).text
        == base.text
    )


def test_generation_option_errors(qwen25, photo):
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_tokens'"):
        qwen25.describe(photo, max_tokens=3)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        qwen25.describe(photo, max_new_tokens="3")
    with pytest.raises(TypeError, match="greedy must be a bool"):
        qwen25.describe(photo, greedy=1)
    with pytest.raises(TypeError, match="stop must be"):
        qwen25.describe(photo, stop=[1])
    with pytest.raises(vlm.InputError, match="greedy=True"):
        qwen25.describe(photo, greedy=True, temperature=0.7)
    with pytest.raises(vlm.InputError, match="max_new_tokens"):
        qwen25.describe(photo, max_new_tokens=0)
    with pytest.raises(vlm.InputError, match="max_new_tokens"):
        qwen25.describe(photo, max_new_tokens=-1)
    with pytest.raises(vlm.InputError, match="temperature"):
        qwen25.describe(photo, temperature=0.0)
    with pytest.raises(vlm.InputError, match="top_p"):
        qwen25.describe(photo, top_p=1.5)
    with pytest.raises(vlm.InputError, match="min_new_tokens"):
        qwen25.describe(photo, max_new_tokens=2, min_new_tokens=3)


def test_stream_is_an_iterator_with_a_result(qwen25, photo):
    stream = qwen25.stream(photo, "What is in this picture?", max_new_tokens=12, greedy=True)
    assert isinstance(stream, vlm.TextStream)
    assert iter(stream) is stream
    assert stream.result is None
    first = next(stream)
    assert isinstance(first, str) and first
    rest = list(stream)
    assert stream.result.text == first + "".join(rest)
    assert list(stream) == []
    assert "finished" in repr(stream)


def test_stream_close_stops_generation(qwen25, photo):
    # 5,000 forced tokens are seconds of work; close() must end it at the next piece.
    stream = qwen25.stream(photo, max_new_tokens=5000, min_new_tokens=5000)
    next(stream)
    stream.close()
    assert list(stream) == [] and stream.result is None
    assert "closed" in repr(stream)
    time.sleep(0.2)
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.2, "generation kept running after close()"
    # Breaking out of a loop drops the stream, which stops it the same way.
    for _ in qwen25.stream(photo, max_new_tokens=5000, min_new_tokens=5000):
        break
    time.sleep(0.2)
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.2, "generation kept running after the loop"


def test_stream_argument_errors(qwen25, photo):
    with pytest.raises(vlm.InputError, match="not both"):
        qwen25.stream(photo, "a prompt", question="a question")
    with pytest.raises(vlm.InputError, match="one image"):
        qwen25.stream([photo, photo], question="a question")
    with pytest.raises(vlm.InputError, match="at least one"):
        qwen25.stream(None)
    with pytest.raises(vlm.ImageError):
        qwen25.stream(b"not an image", question="a question")


def test_stream_generation_errors_raise_from_next(qwen25, photo):
    stream = qwen25.stream(photo, question="   ")
    with pytest.raises(vlm.InputError, match="question"):
        next(stream)


def test_describe_batch_equals_one_at_a_time(qwen25):
    photos = sorted((FIXTURES / "qwen2_5_vl" / "images").glob("*.png"))
    one_by_one = [qwen25.describe(p, **GREEDY12) for p in photos]
    assert qwen25.describe_batch(photos, **GREEDY12) == one_by_one
    assert qwen25.describe_batch(photos, batch_size=2, **GREEDY12) == one_by_one
    assert qwen25.describe_batch(iter(photos), batch_size=1, **GREEDY12) == one_by_one
    assert (
        qwen25.describe_batch((FIXTURES / "qwen2_5_vl" / "images").glob("*.png"), **GREEDY12) != []
    )
    assert qwen25.describe_batch([], **GREEDY12) == []
    zh = qwen25.describe_batch(photos, language="zh", **GREEDY12)
    assert zh == [qwen25.describe(p, language="zh", **GREEDY12) for p in photos]


def test_describe_batch_progress_bar(qwen25, photo, capsys):
    pytest.importorskip("tqdm")
    out = qwen25.describe_batch([photo] * 3, batch_size=2, progress=True, max_new_tokens=2)
    assert len(out) == 3
    err = capsys.readouterr().err
    assert "3/3" in err


def test_describe_batch_progress_without_tqdm_warns(qwen25, photo, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.warns(UserWarning, match="pip install tqdm"):
        assert len(qwen25.describe_batch([photo], progress=True, max_new_tokens=2)) == 1


def test_describe_batch_argument_errors(qwen25, photo):
    with pytest.raises(TypeError, match="iterable of"):
        qwen25.describe_batch(str(photo))
    with pytest.raises(TypeError, match="iterable of"):
        qwen25.describe_batch(photo)
    with pytest.raises(vlm.InputError, match="batch_size"):
        qwen25.describe_batch([photo], batch_size=0)
    with pytest.raises(vlm.ImageNotFoundError):
        qwen25.describe_batch([photo, photo.with_name("missing.png")])
    # Found while the batch before it runs (each batch is read ahead), raised all the same.
    with pytest.raises(vlm.ImageNotFoundError):
        qwen25.describe_batch([photo, photo, photo.with_name("missing.png")], batch_size=1, max_new_tokens=2)


def test_describe_takes_one_image(qwen25, photo):
    with pytest.raises(vlm.InputError, match="one image"):
        qwen25.describe([photo, photo])


def test_model_cannot_be_constructed_directly():
    with pytest.raises(TypeError):
        vlm.Model()


def test_package_exports():
    assert vlm.__version__
    for name in vlm.__all__:
        assert hasattr(vlm, name), name
    assert vlm.Model.__module__ == "vlm"
    assert vlm.VlmError.__module__ == "vlm"
