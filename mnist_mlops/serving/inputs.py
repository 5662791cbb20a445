"""Turning request bodies into model input, with a 4xx naming the problem for anything bad.

Everything here raises :class:`InputError` (status + message); nothing lets a malformed
request reach the model or crash a worker.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_PIXELS
from mnist_mlops.data.mnist_style import (
    ImageInputError,
    ImageTooLargeError,
    decode_image,
    mnist_style,
)
from mnist_mlops.serving.limits import HeavySlots
from mnist_mlops.serving.problems import HTTPProblem, clean
from mnist_mlops.serving.schemas import BatchRequest, PredictRequest

JSON_TYPES = ("application/json",)
PNG_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
MULTIPART = "multipart/form-data"
OCTET_STREAM = "application/octet-stream"
SCALE_MAX = {"0-1": 1.0, "0-255": 255.0}


class InputError(HTTPProblem):
    """A client error: HTTP ``status`` with a message naming what is wrong."""


# JSON bodies up to this size are parsed on the event loop (a single image is ~3-20 kB and
# parses in microseconds); bigger ones go to the threadpool under a heavy-work slot.
INLINE_JSON_BYTES = 64 * 1024


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request) -> bytes:
    """The whole body. Its size and read time are enforced while it streams in, for every
    framing, by ``limits.BodyLimitMiddleware``; here only emptiness is a problem."""
    body = await request.body()
    if not body:
        raise InputError(422, "request body is empty")
    return body


def _validate(model: type[BaseModel], body: bytes) -> BaseModel:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InputError(422, describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """A short, readable summary: where each problem is and what it is (first few only)."""
    seen, parts = set(), []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith(("list[", "function")))
        text = f"{loc or 'body'}: {error['msg']}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    more = f" (+{len(parts) - 4} more)" if len(parts) > 4 else ""
    return "; ".join(parts[:4]) + more


def to_unit_images(values: np.ndarray, scale: str, what: str) -> np.ndarray:
    """float32 (n, 28, 28) in [0, 1] from values in the declared scale; range-checked."""
    if not np.isfinite(values).all():
        raise InputError(422, f"{what} contain NaN or infinite values")
    top = SCALE_MAX[scale]
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > top:
        raise InputError(
            422,
            f"{what} must lie in [0, {top:g}] for scale '{scale}'; got values from "
            f"{low:g} to {high:g}",
        )
    values = values.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return values if top == 1.0 else values * np.float32(1.0 / 255.0)


def parse_json_single(body: bytes) -> np.ndarray:
    request = _validate(PredictRequest, body)
    return to_unit_images(request.pixels, request.scale, "pixels")


def parse_json_batch(body: bytes, max_images: int) -> np.ndarray:
    request = _validate(BatchRequest, body)
    if len(request.images) > max_images:
        raise InputError(413, f"batch of {len(request.images)} images exceeds {max_images}")
    return to_unit_images(request.images, request.scale, "images")


def parse_raw_batch(body: bytes, max_images: int) -> np.ndarray:
    """``application/octet-stream``: n*784 uint8 pixels (0-255), row-major, no header."""
    if len(body) % NUM_PIXELS:
        raise InputError(
            422, f"octet-stream body of {len(body)} bytes is not a whole number of 784-byte images"
        )
    count = len(body) // NUM_PIXELS
    if count > max_images:
        raise InputError(413, f"batch of {count} images exceeds {max_images}")
    images = np.frombuffer(body, dtype=np.uint8).reshape(count, IMAGE_SIDE, IMAGE_SIDE)
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def parse_image_upload(data: bytes, preprocess: bool, max_pixels: int) -> np.ndarray:
    """An uploaded picture of a digit as float32 (1, 28, 28) in [0, 1].

    ``preprocess`` applies MNIST's own normalisation (any size, any polarity); without it
    the picture must already be a 28x28 MNIST-style digit. The pixel count is checked from
    the header before decoding (413 above ``max_pixels``).
    """
    try:
        ink = decode_image(data, max_pixels)
        if preprocess:
            return (mnist_style(ink).astype(np.float32) / 255.0)[None]
    except ImageTooLargeError as exc:
        raise InputError(413, clean(str(exc))) from None
    except ImageInputError as exc:
        raise InputError(422, clean(str(exc))) from None
    if ink.shape != (IMAGE_SIDE, IMAGE_SIDE):
        raise InputError(
            422, f"image is {ink.shape[1]}x{ink.shape[0]}; with preprocess=false it must be 28x28"
        )
    return ink[None].astype(np.float32)


async def parse_single(
    request: Request, preprocess: bool, slots: HeavySlots, max_pixels: int
) -> np.ndarray:
    """One image from a JSON body, a raw image body, or a multipart ``file`` upload.

    Decoding a picture and parsing a big JSON body run in the threadpool, at most
    ``slots.capacity`` at a time per worker, so they can neither block the event loop (the
    health check keeps answering) nor pile up. The slot is taken after the body is read, so
    a slow sender cannot hold one (bodies in memory are bounded by the middleware).
    """
    kind = media_type(request)
    if kind in JSON_TYPES:
        body = await read_body(request)
        if len(body) <= INLINE_JSON_BYTES:
            return parse_json_single(body)
        async with slots.slot("large JSON parses"):
            return await run_in_threadpool(parse_json_single, body)
    if kind in PNG_TYPES:
        body = await read_body(request)
        async with slots.slot("image decodes"):
            return await run_in_threadpool(parse_image_upload, body, preprocess, max_pixels)
    if kind == MULTIPART:
        data = await _multipart_file(request)
        async with slots.slot("image decodes"):
            return await run_in_threadpool(parse_image_upload, data, preprocess, max_pixels)
    raise InputError(
        415,
        f"unsupported Content-Type {kind or '(none)'!r}: send application/json, image/png "
        "or multipart/form-data with a 'file' part",
    )


async def _multipart_file(request: Request) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPProblem:
        raise
    except Exception as exc:  # malformed multipart of any kind is the client's problem
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise InputError(400, f"malformed multipart body: {clean(str(detail))}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError(422, "multipart body needs a 'file' part holding the image")
        return await upload.read()
    finally:
        await form.close()
