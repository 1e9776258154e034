"""vlm: vision-language models on candle, from Python.

Describe a photo, ask about it, relate several photos::

    import vlm

    model = vlm.load("Qwen/Qwen2.5-VL-3B-Instruct")
    print(model.describe("dinner.jpg", language="zh"))
    print(model.ask("dinner.jpg", "What is the main dish?"))
    print(model.relate(["day1.jpg", "day2.jpg"]))

Images are file paths, encoded bytes, PIL images or numpy uint8 arrays (H x W x 3).
Every call releases the GIL while the model runs. Errors derive from vlm.VlmError.
Loading logs what runs where (and device="auto" warns when it falls back to the CPU)
through the standard ``logging`` module, on loggers named "vlm.*".
See docs/python.md for a walk-through.
"""

from ._vlm import (
    BatchResults,
    CancelledError,
    DeviceError,
    Generation,
    GenerationError,
    ImageError,
    ImageNotFoundError,
    InputError,
    Model,
    ModelFileNotFoundError,
    ModelFilesError,
    TextStream,
    Timings,
    VlmError,
    __version__,
    compare,
    cuda_available,
    devices,
    load,
    save_quantized,
    supported_model_types,
)

__all__ = [
    "BatchResults",
    "CancelledError",
    "DeviceError",
    "Generation",
    "GenerationError",
    "ImageError",
    "ImageNotFoundError",
    "InputError",
    "Model",
    "ModelFileNotFoundError",
    "ModelFilesError",
    "TextStream",
    "Timings",
    "VlmError",
    "__version__",
    "compare",
    "cuda_available",
    "devices",
    "load",
    "save_quantized",
    "supported_model_types",
]
