"""MNIST's own normalisation of a handwritten digit, for images that did not come from MNIST.

LeCun et al. size-normalised each digit to fit a 20x20 box (keeping its aspect ratio, with
anti-aliasing) and then centred it in a 28x28 field by its centre of mass. A digit drawn in a
browser or photographed is nothing like that until the same steps are applied, so the API
applies them here, once, to every uploaded or drawn image (the web UI sends its raw canvas).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_mlops.data.constants import IMAGE_SIDE

DIGIT_BOX = 20  # the digit's longer side after scaling, as in MNIST
INK_FRACTION_OF_MAX = 0.1  # pixels below this share of the brightest count as background
MAX_UPLOAD_SIDE = 4096  # refuse absurd images before decoding them into memory


class ImageInputError(ValueError):
    """The image cannot be turned into a digit (undecodable, blank, absurd size)."""


def decode_image(data: bytes) -> np.ndarray:
    """A PNG/JPEG/... as float32 grey (H, W) in [0, 1] with ink bright (MNIST polarity).

    Transparency is composited onto the opposite of the ink colour, and an image whose border
    is mostly bright (dark ink on paper) is inverted, so both canvas conventions work.
    """
    if not data:
        raise ImageInputError("image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > MAX_UPLOAD_SIDE:
                raise ImageInputError(
                    f"image is {image.size[0]}x{image.size[1]}; the limit is {MAX_UPLOAD_SIDE}"
                )
            image.load()
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageInputError):
            raise
        raise ImageInputError(f"could not decode image: {exc}") from exc
    pixels = np.asarray(rgba, dtype=np.float32) / 255.0
    grey = pixels[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    alpha = pixels[..., 3]
    if alpha.min() < 1.0:
        # Transparent background: the strokes are wherever there is opacity.
        return alpha * np.abs(grey - _background_level(grey, alpha))
    return 1.0 - grey if _border(grey).mean() > 0.5 else grey


def _background_level(grey: np.ndarray, alpha: np.ndarray) -> float:
    """The ink's contrasting level: white ink on a transparent canvas reads as bright."""
    opaque = grey[alpha > 0.5]
    return 0.0 if opaque.size == 0 or opaque.mean() > 0.5 else 1.0


def _border(grey: np.ndarray) -> np.ndarray:
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])


def mnist_style(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box, fit into 20x20 keeping the aspect ratio, and centre
    by centre of mass in 28x28. Input: float (H, W) with ink bright; output: uint8 (28, 28)."""
    ink = np.asarray(ink, dtype=np.float32)
    if ink.ndim != 2 or ink.size == 0:
        raise ImageInputError(f"expected a 2-D greyscale image, got shape {ink.shape}")
    if not np.isfinite(ink).all():
        raise ImageInputError("image contains NaN or infinite values")
    peak = float(ink.max())
    if peak <= 0.0:
        raise ImageInputError("image is blank: no ink found")
    rows = np.flatnonzero((ink >= INK_FRACTION_OF_MAX * peak).any(axis=1))
    cols = np.flatnonzero((ink >= INK_FRACTION_OF_MAX * peak).any(axis=0))
    digit = np.clip(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] / peak, 0.0, 1.0)

    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Box filtering when shrinking is the anti-aliasing; bilinear when enlarging a tiny stroke.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    scaled = np.asarray(Image.fromarray(digit, mode="F").resize(size, resample), dtype=np.float32)
    scaled = np.clip(scaled, 0.0, 1.0)

    frame = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    mass = scaled.sum()
    com_row = float((scaled.sum(axis=1) * np.arange(scaled.shape[0])).sum() / mass)
    com_col = float((scaled.sum(axis=0) * np.arange(scaled.shape[1])).sum() / mass)
    centre = (IMAGE_SIDE - 1) / 2.0
    # Place the centre of mass on the frame's centre, but never push ink off the frame.
    top = int(np.clip(round(centre - com_row), 0, IMAGE_SIDE - scaled.shape[0]))
    left = int(np.clip(round(centre - com_col), 0, IMAGE_SIDE - scaled.shape[1]))
    frame[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return np.round(frame * 255.0).astype(np.uint8)


def image_bytes_to_mnist(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, any size) to an MNIST-style uint8 (28, 28) digit."""
    return mnist_style(decode_image(data))
