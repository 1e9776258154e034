"""Each exception class from a real bad input; the Rust message is kept; no panic
crashes Python."""

import errno
import json
import shutil
import struct

import pytest
import vlm
from conftest import FIXTURES

MODEL = FIXTURES / "qwen2_5_vl" / "model"


def test_hierarchy():
    assert issubclass(vlm.InputError, (vlm.VlmError, ValueError))
    assert issubclass(vlm.ImageError, vlm.InputError)
    assert issubclass(vlm.ImageNotFoundError, (vlm.ImageError, FileNotFoundError))
    assert issubclass(vlm.ModelFileNotFoundError, (vlm.ModelFilesError, FileNotFoundError))
    for cls in (vlm.ModelFilesError, vlm.DeviceError, vlm.GenerationError):
        assert issubclass(cls, vlm.VlmError)
        assert not issubclass(cls, (ValueError, OSError))


def test_corrupt_jpeg_bytes(qwen25, photo):
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x13" * 64
    with pytest.raises(vlm.ImageError) as err:
        qwen25.describe(jpeg)
    assert isinstance(err.value, ValueError)
    assert not isinstance(err.value, FileNotFoundError)
    assert "corrupt or truncated" in str(err.value) and "JPEG" in str(err.value)


def test_not_an_image(qwen25, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("just text")
    with pytest.raises(vlm.ImageError, match="not in a supported image format"):
        qwen25.describe(path)


def test_missing_image_file(qwen25, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError) as err:
        qwen25.describe(missing)
    assert isinstance(err.value, vlm.ImageNotFoundError)
    assert isinstance(err.value, vlm.ImageError)
    assert err.value.filename == str(missing)
    assert err.value.errno == errno.ENOENT
    assert str(err.value).startswith(f"image file {missing} was not found")


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(vlm.ModelFilesError) as err:
        vlm.load(missing)
    assert isinstance(err.value, FileNotFoundError)
    assert isinstance(err.value, vlm.ModelFileNotFoundError)
    assert err.value.filename == str(missing)
    # The Rust message as it is (not OSError's "[Errno 2] ..." form).
    assert str(err.value).startswith(f"{missing} is missing: no such folder")


def test_missing_model_file(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(MODEL, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(vlm.ModelFileNotFoundError, match="tokenizer.json"):
        vlm.load(folder)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(vlm.ModelFilesError) as err:
        vlm.load(tmp_path)
    assert not isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert '"llava"' in msg and "qwen2_5_vl" in msg


def test_empty_question(qwen25, photo):
    with pytest.raises(vlm.InputError) as err:
        qwen25.ask(photo, "  ")
    assert isinstance(err.value, ValueError)
    assert "question is empty" in str(err.value)


def test_relate_without_images(qwen25):
    with pytest.raises(vlm.InputError, match="no image"):
        qwen25.relate([])


def test_bad_option_strings():
    with pytest.raises(vlm.InputError, match="not a device"):
        vlm.load(MODEL, device="tpu")
    with pytest.raises(vlm.InputError, match="not a dtype"):
        vlm.load(MODEL, dtype="int3")


def test_cuda_without_cuda_is_a_device_error():
    try:
        model = vlm.load(MODEL, device="cuda")
    except vlm.DeviceError as e:
        assert "cuda" in str(e).lower()
    else:  # a CUDA build on a machine with a GPU
        assert model.info["device"].startswith("cuda")


def _config_variant(tmp_path, **changes):
    folder = tmp_path / "model"
    shutil.copytree(MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        target = config
        *path, last = key.split("__")
        for part in path:
            target = target[part]
        target[last] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_runtime_failure_is_a_generation_error(tmp_path, photo):
    # The weights fit a vision tower of 2 heads; with 3 the attention reshape fails while
    # running, not while loading.
    model = vlm.load(_config_variant(tmp_path, vision_config__num_heads=3))
    with pytest.raises(vlm.GenerationError, match="tensor operation failed"):
        model.describe(photo, max_new_tokens=2)


def test_a_rust_panic_is_an_exception_not_a_crash(tmp_path):
    # Zero attention heads make the loader divide by zero: a Rust panic, raised as
    # GenerationError (or, once the config is validated, ModelFilesError).
    folder = _config_variant(tmp_path, num_attention_heads=0)
    with pytest.raises(vlm.VlmError) as err:
        vlm.load(folder)
    if isinstance(err.value, vlm.GenerationError):
        assert "panic" in str(err.value) and "report" in str(err.value)
    else:
        assert isinstance(err.value, vlm.ModelFilesError)
    # The interpreter and the module still work.
    assert vlm.load(MODEL).info["model_type"] == "qwen2_5_vl"


def _poison_final_norm(folder):
    """Writes NaN over the language model's final norm weight (f32) in place, as a broken
    download or conversion would leave it."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    (name,) = [
        k
        for k in header
        if k.endswith("norm.weight") and not any(p in k for p in ("layers", "visual", "blocks"))
    ]
    assert header[name]["dtype"] == "F32", header[name]
    start, end = header[name]["data_offsets"]
    base = 8 + header_len
    data[base + start : base + end] = struct.pack("<f", float("nan")) * ((end - start) // 4)
    path.write_bytes(bytes(data))


def test_nan_logits_are_a_generation_error_that_names_the_cause(tmp_path, photo):
    folder = tmp_path / "model"
    shutil.copytree(MODEL, folder)
    _poison_final_norm(folder)
    model = vlm.load(folder, device="cpu", dtype="f32")
    with pytest.raises(vlm.GenerationError) as err:
        model.describe(photo, max_new_tokens=2)
    message = str(err.value)
    assert "NaN or infinite" in message and "model files" in message, message
