"""Type stubs of the native module vlm._vlm (re-exported by vlm). Checked against the
built module by tests/test_stubs.py (mypy's stubtest)."""

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict, Union, final

from typing_extensions import TypeAlias, Unpack

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

__version__: str

class _PILImage(Protocol):
    """A PIL.Image.Image (any mode; converted to RGB)."""

    @property
    def mode(self) -> str: ...
    def convert(self, mode: str) -> Any: ...

class _Array(Protocol):
    """A numpy uint8 array of shape (height, width, 3)."""

    @property
    def __array_interface__(self) -> Any: ...

_ImageInput: TypeAlias = Union[
    str, os.PathLike[str], bytes, bytearray, memoryview, _PILImage, _Array
]
"""One image: a file path, encoded bytes, a PIL image or a numpy array."""

_Images: TypeAlias = Union[_ImageInput, list[_ImageInput], tuple[_ImageInput, ...]]
"""One image, or a list or tuple of them."""

_Message: TypeAlias = Mapping[str, Any]
"""{"role": "system" | "user" | "assistant", "content": str | list of str,
{"type": "text", "text": str} or {"type": "image"} (the next image of ``images``)}."""

class _GenerationOptions(TypedDict, total=False):
    """The generation keyword arguments (``**gen``) every method takes."""

    max_new_tokens: int | None
    min_new_tokens: int | None
    greedy: bool | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    max_pixels: int | None
    min_pixels: int | None
    json_schema: Mapping[str, Any] | str | _HasJsonSchema | None
    regex: str | None
    choices: Sequence[str] | None

class _HasJsonSchema(Protocol):
    """A pydantic model class (anything with ``model_json_schema()``)."""

    def model_json_schema(self) -> dict[str, Any]: ...

class _DeviceInfo(TypedDict):
    """One entry of devices()."""

    index: int
    name: str
    kind: Literal["cpu", "cuda"]
    total_memory: int | None
    free_memory: int | None
    compute_capability: str | None

class _ModelInfo(TypedDict):
    """Model.info."""

    family: str
    model_type: str
    parameters: int
    dtype: str
    quantization: Literal["none", "int8", "int4"]
    device: str
    weight_bytes: int
    max_images: int | None
    native_multi_image: bool
    max_context: int
    fixed_image_size: tuple[int, int] | None
    grounding: bool

class _Detection(TypedDict):
    """One entry of Model.locate(): the box in the photo's pixels."""

    label: str
    bbox: list[float]

class _CacheStats(TypedDict):
    """Model.cache_stats()."""

    hits: int
    misses: int
    bytes: int
    entries: int
    capacity_bytes: int

def load(
    model: str | os.PathLike[str],
    device: str | None = "auto",
    dtype: str | None = "auto",
    quant: str | None = None,
    *,
    vision_quant: str | None = None,
    revision: str | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    image_cache_mb: int = 0,
) -> Model: ...
def save_quantized(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    quant: str = "int4",
    *,
    vision_quant: str | None = None,
    dtype: str | None = "f16",
    revision: str | None = None,
) -> int: ...
def supported_model_types() -> list[str]: ...
def cuda_available() -> bool: ...
def devices() -> list[_DeviceInfo]: ...
def compare(
    models: Sequence[str | os.PathLike[str]],
    photos: str | os.PathLike[str],
    *,
    trips: str | os.PathLike[str] | None = None,
    questions: str | os.PathLike[str] | None = None,
    references: str | os.PathLike[str] | None = None,
    price_per_hour: float | None = None,
    currency: str = "CNY",
    card: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 128,
    languages: Sequence[str] | None = ("zh", "en"),
    cascade: tuple[str, str] | None = None,
    threshold: float | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    quant: str | None = None,
    vision_quant: str | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    report: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The ``vlm compare`` evaluation: results.json's records (see docs/compare.md)."""

@final
class Model:
    @property
    def info(self) -> _ModelInfo: ...
    def describe(
        self, image: _Images, *, language: str | None = None, **gen: Unpack[_GenerationOptions]
    ) -> str: ...
    def locate(
        self, image: _Images, what: str, **gen: Unpack[_GenerationOptions]
    ) -> list[_Detection]: ...
    def ask(self, image: _Images, question: str, **gen: Unpack[_GenerationOptions]) -> str: ...
    def relate(
        self,
        images: _Images,
        instruction: str | None = None,
        *,
        language: str | None = None,
        **gen: Unpack[_GenerationOptions],
    ) -> str: ...
    def generate(
        self,
        images: _Images | None,
        prompt: str | Sequence[_Message],
        *,
        raw: bool = False,
        return_logits: bool = False,
        **gen: Unpack[_GenerationOptions],
    ) -> Generation: ...
    def stream(
        self,
        images: _Images | None,
        prompt: str | Sequence[_Message] | None = None,
        *,
        question: str | None = None,
        raw: bool = False,
        language: str | None = None,
        **gen: Unpack[_GenerationOptions],
    ) -> TextStream: ...
    def describe_batch(
        self,
        images: Iterable[_ImageInput],
        batch_size: int = 8,
        progress: bool = False,
        *,
        language: str | None = None,
        on_error: Literal["raise", "return"] = "raise",
        full: bool = False,
        **gen: Unpack[_GenerationOptions],
    ) -> list[Any]: ...
    def ask_batch(
        self,
        items: Iterable[tuple[_ImageInput, str]],
        batch_size: int = 8,
        progress: bool = False,
        *,
        on_error: Literal["raise", "return"] = "raise",
        full: bool = False,
        **gen: Unpack[_GenerationOptions],
    ) -> list[Any]: ...
    def map(
        self,
        items: Iterable[Any],
        task: Literal["describe", "ask"] = "describe",
        *,
        batch_size: int = 8,
        language: str | None = None,
        on_error: Literal["raise", "return"] = "raise",
        full: bool = False,
        **gen: Unpack[_GenerationOptions],
    ) -> BatchResults: ...
    def cache_stats(self) -> _CacheStats: ...

@final
class BatchResults:
    """Results of Model.map in input order: str (Generation with full=True), or with
    on_error="return" the exception of a failed item."""

    def __iter__(self) -> BatchResults: ...
    def __next__(self) -> Any: ...
    def close(self) -> None: ...

@final
class TextStream:
    def __iter__(self) -> TextStream: ...
    def __next__(self) -> str: ...
    @property
    def result(self) -> Generation | None: ...
    def close(self) -> None: ...

@final
class Generation:
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> list[int]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> Literal["eos", "length", "stop"]: ...
    @property
    def stop_string(self) -> str | None: ...
    @property
    def timings(self) -> Timings: ...
    @property
    def logits(self) -> list[list[float]] | None: ...

@final
class Timings:
    @property
    def preprocess(self) -> float: ...
    @property
    def image_encode(self) -> float: ...
    @property
    def prefill(self) -> float: ...
    @property
    def decode(self) -> float: ...
    @property
    def decode_steps(self) -> int: ...
    @property
    def image_cache_hits(self) -> int: ...
    @property
    def time_to_first_token(self) -> float: ...
    @property
    def decode_tokens_per_second(self) -> float: ...

class VlmError(Exception): ...
class InputError(VlmError, ValueError): ...
class ImageError(InputError): ...
class ImageNotFoundError(ImageError, FileNotFoundError): ...
class ModelFilesError(VlmError): ...
class ModelFileNotFoundError(ModelFilesError, FileNotFoundError): ...
class DeviceError(VlmError): ...
class CancelledError(VlmError): ...
class GenerationError(VlmError): ...
