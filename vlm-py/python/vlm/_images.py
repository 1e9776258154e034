"""PIL images and numpy arrays to RGB pixels, for the native module.

PIL and numpy stay optional: they are looked up in ``sys.modules``, never imported here.
An object of one of their types can only exist once its library has been imported.
"""

import sys
from typing import Union

ACCEPTED = (
    "a file path (str or os.PathLike), encoded image bytes (JPEG, PNG, WebP, GIF, BMP, "
    "TIFF), a PIL.Image.Image or a numpy uint8 array of shape (height, width, 3)"
)


def to_rgb(obj: object) -> Union[bytes, tuple[int, int, bytes]]:
    """Returns ``(width, height, rgb_bytes)`` for a PIL image or a numpy array, or the
    encoded bytes of a memoryview; raises TypeError for anything else."""
    pil_image = sys.modules.get("PIL.Image")
    if pil_image is not None and isinstance(obj, pil_image.Image):
        from PIL import ImageOps

        # What vlm does to files (and transformers' load_image to every image): apply the
        # EXIF orientation, then drop alpha / expand palettes and grey to RGB.
        image = ImageOps.exif_transpose(obj)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image.width, image.height, image.tobytes()

    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        if obj.dtype != numpy.uint8 or obj.ndim != 3 or obj.shape[2] != 3:
            raise TypeError(
                f"a numpy image must be a uint8 array of shape (height, width, 3) in RGB "
                f"order; got dtype {obj.dtype} and shape {obj.shape} (convert with "
                f"PIL.Image.fromarray(...).convert('RGB') or arr.astype(numpy.uint8))"
            )
        height, width = obj.shape[0], obj.shape[1]
        return width, height, numpy.ascontiguousarray(obj).tobytes()

    if isinstance(obj, memoryview):
        return obj.tobytes()

    raise TypeError(
        f"cannot use an object of type {type(obj).__name__} as an image: pass {ACCEPTED}"
    )
