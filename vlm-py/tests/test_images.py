"""Every accepted image type gives the same pixels, hence the same tokens; anything else
is a TypeError that names what is accepted."""

import os

import pytest
import vlm
from conftest import GREEDY12

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

QUESTION = "What is in this picture?"


@pytest.fixture
def reference(qwen25, photo):
    return qwen25.generate(photo, QUESTION, **GREEDY12).token_ids


def tokens(model, image):
    return model.generate(image, QUESTION, **GREEDY12).token_ids


class PathLike:
    """An os.PathLike that is not a pathlib.Path."""

    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return str(self.path)


def test_paths(qwen25, photo, reference):
    assert tokens(qwen25, str(photo)) == reference
    assert tokens(qwen25, photo) == reference
    assert tokens(qwen25, PathLike(photo)) == reference


def test_encoded_bytes(qwen25, photo, reference):
    data = photo.read_bytes()
    assert tokens(qwen25, data) == reference
    assert tokens(qwen25, bytearray(data)) == reference
    assert tokens(qwen25, memoryview(data)) == reference


def test_pil_images_any_mode(qwen25, photo, reference):
    with Image.open(photo) as im:
        assert tokens(qwen25, im) == reference  # lazily loaded file image
        rgb = im.convert("RGB")
    assert tokens(qwen25, rgb) == reference
    # Alpha is dropped (not composited), as PIL's convert("RGB") and vlm's decoder do.
    rgba = rgb.convert("RGBA")
    rgba.putalpha(7)
    assert tokens(qwen25, rgba) == reference
    # Other modes are converted to RGB first; same pixels as converting by hand.
    for mode in ("L", "P", "CMYK", "I;16"):
        converted = rgb.convert(mode)
        assert tokens(qwen25, converted) == tokens(qwen25, converted.convert("RGB")), mode


def test_exif_orientation_is_applied_to_files_and_pil_images(qwen25, tmp_path):
    # Stored 60 wide and 40 high, with EXIF orientation 6: "rotate 90° clockwise to
    # display". PNG keeps the pixels exact, so every path sees the same values.
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    upright = np.ascontiguousarray(np.rot90(stored, k=-1))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    want = tokens(qwen25, upright)
    assert tokens(qwen25, stored) != want
    assert tokens(qwen25, path) == want
    with Image.open(path) as im:
        assert tokens(qwen25, im) == want


def test_numpy_arrays(qwen25, photo, reference):
    with Image.open(photo) as im:
        array = np.asarray(im.convert("RGB"))
    assert array.dtype == np.uint8 and array.shape[2] == 3
    assert tokens(qwen25, array) == reference
    # Non-contiguous views are fine (copied to C order).
    wider = np.zeros((array.shape[0], array.shape[1] + 5, 3), np.uint8)
    wider[:, : array.shape[1]] = array
    view = wider[:, : array.shape[1]]
    assert not view.flags["C_CONTIGUOUS"]
    assert tokens(qwen25, view) == reference
    fortran = np.asfortranarray(array)
    assert tokens(qwen25, fortran) == reference


def test_images_in_lists_and_tuples(qwen25, photo):
    with Image.open(photo) as im:
        array = np.asarray(im.convert("RGB"))
    mixed = qwen25.generate([photo, array], "Compare.", **GREEDY12).token_ids
    assert (
        qwen25.generate((str(photo), photo.read_bytes()), "Compare.", **GREEDY12).token_ids == mixed
    )


@pytest.mark.parametrize(
    "bad",
    [
        42,
        3.5,
        None,
        {"path": "x.png"},
        [[1, 2, 3]],
        object(),
    ],
    ids=["int", "float", "None", "dict", "nested-list", "object"],
)
def test_unsupported_types_raise_type_error(qwen25, bad):
    with pytest.raises(TypeError) as err:
        qwen25.describe(bad)
    msg = str(err.value)
    for accepted in ("path", "bytes", "PIL.Image.Image", "numpy uint8 array"):
        assert accepted in msg, msg


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((3, 8, 8), np.uint8),
    ],
    ids=["float32", "grey-2d", "rgba", "channels-first"],
)
def test_wrong_numpy_arrays_raise_type_error(qwen25, array):
    with pytest.raises(TypeError, match=r"uint8 array of shape \(height, width, 3\)"):
        qwen25.describe(array)


def test_empty_numpy_array_is_an_image_error(qwen25):
    with pytest.raises(vlm.ImageError, match="0x0"):
        qwen25.describe(np.zeros((0, 0, 3), np.uint8))


def test_pil_and_numpy_stay_optional():
    # vlm imports neither; it only recognises their objects when the user has them.
    import subprocess
    import sys

    code = "import sys, vlm; print('PIL' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert out.stdout.split() == ["False", "False"]
