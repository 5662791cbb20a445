"""Request and response models: the exact OpenAPI contract of the serving API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES, NUM_PIXELS
from mnist_mlops.serving.problems import Problem

Scale = Literal["0-1", "0-255"]
FlatImage = Annotated[
    list[float],
    Field(min_length=NUM_PIXELS, max_length=NUM_PIXELS, description="784 values, row-major"),
]
Row = Annotated[list[float], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]
SquareImage = Annotated[
    list[Row], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE, description="28 rows of 28")
]
Image = FlatImage | SquareImage
# The schema above is what clients see; at runtime the values are checked by numpy in one
# pass (faster than validating 784 floats as Python objects, and with clearer messages).
IMAGE_SCHEMA = TypeAdapter(Image).json_schema()


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_OUT_OF_RANGE = f"must be numbers within float32 range (|x| <= {_FLOAT32_MAX:.4g})"


_NUMBERS = frozenset({int, float})
_NOT_NUMBERS = (
    "must be numbers: a flat list of 784 or 28 lists of 28 (no strings, booleans, nulls or "
    "ragged rows)"
)


def _check_numbers(value: Any) -> None:
    """JSON numbers only: numpy would silently read ``"7"`` and ``true`` as 7.0 and 1.0.

    ``set(map(type, row))`` runs in C (about 10 us per 784 values), far cheaper than
    validating each value as a pydantic float; ``bool`` is its own type, so it is caught.
    """
    if not isinstance(value, list):
        raise ValueError(_NOT_NUMBERS)
    kinds = set(map(type, value))
    if kinds <= _NUMBERS:
        return
    if kinds == {list}:
        for row in value:
            if not set(map(type, row)) <= _NUMBERS:
                raise ValueError(_found(_NOT_NUMBERS, row))
        return
    raise ValueError(_found(_NOT_NUMBERS, value))


def _found(message: str, values: list) -> str:
    odd = next((v for v in values if type(v) not in _NUMBERS), None)
    shown = "null" if odd is None else orjson.dumps(odd).decode()[:20]
    return f"{message}; found {shown}"


def _as_float32(value: Any) -> np.ndarray:
    """``value`` as float32, refusing what float32 cannot hold: a plain cast would turn such
    numbers into infinities (with a numpy overflow warning), and a JSON integer too large
    even for float64 raises ``OverflowError``, which pydantic would not turn into a 422."""
    _check_numbers(value)
    return _as_float32_unchecked(value)


def _as_float32_unchecked(value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ValueError(_OUT_OF_RANGE) from None
    except (ValueError, TypeError):
        raise ValueError(
            "must be numbers: a flat list of 784 or 28 lists of 28 (no strings, nulls or "
            "ragged rows)"
        ) from None
    too_large = np.isfinite(array) & (np.abs(array) > _FLOAT32_MAX)
    if too_large.any():
        raise ValueError(f"{_OUT_OF_RANGE}; got {array[too_large].flat[0]:g}")
    return array.astype(np.float32)


def _image_array(value: Any) -> np.ndarray:
    array = _as_float32(value)
    if array.shape not in ((NUM_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)):
        raise ValueError(f"must be 784 values or 28 rows of 28; got shape {array.shape}")
    return array.reshape(NUM_PIXELS)


def _batch_array(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of images")
    try:
        for image in value:
            _check_numbers(image)
        array = _as_float32_unchecked(value)
        if array.shape[1:] in ((NUM_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)):
            return array.reshape(len(value), NUM_PIXELS)
    except ValueError:
        pass
    # Mixed layouts or a bad image: check one by one to name the culprit.
    rows = []
    for index, image in enumerate(value):
        try:
            rows.append(_image_array(image))
        except ValueError as exc:
            raise ValueError(f"image {index} {exc}") from None
    return np.stack(rows)


PixelsField = Annotated[Any, WithJsonSchema(IMAGE_SCHEMA), AfterValidator(_image_array)]
ImagesField = Annotated[
    Any,
    WithJsonSchema({"type": "array", "minItems": 1, "items": IMAGE_SCHEMA}),
    AfterValidator(_batch_array),
]
SCALE_FIELD = Field(
    description="Value range the pixels are given in: '0-1' (floats) or '0-255' (bytes). "
    "MNIST polarity: 0 is background, the maximum is ink."
)
PREDICTION_ID = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="from /predict")]


class _Strict(BaseModel):
    # strict: "7" and true are not 7 and 1 (labels, scales); pixels are checked in _check_numbers
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class PredictRequest(_Strict):
    pixels: PixelsField = Field(description="one image: 784 values or 28 rows of 28")
    scale: Scale = SCALE_FIELD


class BatchRequest(_Strict):
    images: ImagesField = Field(description="one or more images, each 784 values or 28x28")
    scale: Scale = SCALE_FIELD


class ModelRef(BaseModel):
    name: str
    version: str | None = Field(description="registry version; null when serving the fallback")
    source: Literal["registry", "fallback"]


class PredictResponse(BaseModel):
    id: str = Field(description="prediction id, for /feedback")
    feedback_token: str = Field(description="send with /feedback to have the label trusted")
    predicted: int = Field(ge=0, lt=NUM_CLASSES)
    probabilities: list[float] = Field(min_length=NUM_CLASSES, max_length=NUM_CLASSES)
    model: ModelRef
    image: list[list[int]] | None = Field(
        default=None, description="the 28x28 image the model saw (with explain=true)"
    )
    saliency: list[list[float]] | None = Field(
        default=None, description="|gradient| of the predicted class per pixel, 0-1 (explain=true)"
    )


class BatchResponse(BaseModel):
    ids: list[str]
    feedback_tokens: list[str] = Field(description="one per id, for trusted /feedback")
    predicted: list[int]
    probabilities: list[list[float]]
    model: ModelRef


class FeedbackRequest(_Strict):
    id: PREDICTION_ID
    label: int = Field(ge=0, lt=NUM_CLASSES, description="the true digit")
    feedback_token: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="the prediction's feedback_token: without it the label is untrusted",
    )


class FeedbackResponse(BaseModel):
    id: str
    label: int
    recorded: bool
    trusted: bool = Field(description="the label came with the prediction's feedback_token")


class ModelInfo(BaseModel):
    name: str
    version: str | None
    run_id: str | None
    source: Literal["registry", "fallback"]
    uri: str
    metrics: dict[str, float]
    precision: Literal["float32", "bfloat16"]
    device: str
    graph: Literal["frozen", "eager"]
    loaded_at: str


class Readiness(BaseModel):
    ready: bool
    model: ModelInfo | None = None
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class NotReady(Problem):
    """/ready's 503: a problem document that also says ``ready: false`` and why."""

    ready: Literal[False] = False
    model: None = None


# Every error body is an RFC 9457 problem document (see problems.py).
ErrorResponse = Problem
