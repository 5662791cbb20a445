"""MNIST's own normalisation of a handwritten digit, for images that did not come from MNIST.

LeCun et al. size-normalised each digit to fit a 20x20 box (keeping its aspect ratio, with
anti-aliasing) and then centred it in a 28x28 field by its centre of mass. A digit drawn in a
browser or photographed is nothing like that until the same steps are applied, so the API
applies them here, once, to every uploaded or drawn image (the web UI sends its raw canvas).

"Centred" means at (14.0, 14.0) in index coordinates, not at the array centre (13.5, 13.5):
MNIST's digits have their centre of mass at row 13.99 / column 14.01 on average, each within
[13.5, 14.5) of it (an integer shift of the 20x20 box). The shift here is chosen the same way
(rounding half down), so a real MNIST digit sent as a picture comes back byte-identical
(tests/serving/test_mnist_style.py measures it on the 10,000 test digits).
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_mlops.data.constants import IMAGE_SIDE

DIGIT_BOX = 20  # the digit's longer side after scaling, as in MNIST
# where MNIST puts a digit's centre of mass, in index coordinates (train mean 13.996 / 14.007)
MNIST_CENTRE = 14.0
# Ink fainter than this share of the brightest pixel is noise (JPEG ringing, paper grain) and
# does not count towards the bounding box; MNIST's own anti-aliased fringe is brighter.
INK_FRACTION_OF_MAX = 0.02
# A peak at least this bright is already full scale (MNIST's peaks are 254 or 255) and is
# left alone; fainter ink is stretched so its brightest pixel becomes 1.
FULL_SCALE = 0.99
# Refuse absurd images from their header, before decoding anything: 16.7 megapixels (4096^2)
# covers any phone photo; a 389 KB PNG can declare 20000x20000 (400 MP, 1.6 GB decoded).
MAX_IMAGE_PIXELS = 4096 * 4096
# Pictures are reduced (box average, in uint8) to at most this side before any float math:
# the digit ends up 20x20 anyway, and a 4096^2 float32 RGBA copy alone would be 268 MB.
WORK_SIDE = 1024
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # what the API accepts; no exotic decoders
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class ImageInputError(ValueError):
    """The image cannot be turned into a digit (undecodable, blank, absurd size)."""


class ImageTooLargeError(ImageInputError):
    """The image declares more pixels than allowed (refused before decoding)."""


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A PNG/JPEG/WebP/BMP/GIF as float32 grey (H, W) in [0, 1] with ink bright (MNIST polarity).

    The size is checked from the header before decoding; JPEGs are decoded at a reduced scale
    (libjpeg's DCT scaling) and everything is converted to 8-bit grey (+ alpha) before it is
    reduced to at most ``WORK_SIDE`` a side, so memory stays bounded by the pixel limit. 16-bit
    greyscale keeps its tones (scaled to 8 bits, not clipped). Transparency is composited onto
    the opposite of the ink colour, and an image whose border is mostly bright (dark ink on
    paper) is inverted, so both canvas conventions work.
    """
    if not data:
        raise ImageInputError("image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image declares {width}x{height} = {width * height} pixels; the limit is "
                    f"{max_pixels} pixels"
                )
            grey, alpha = _uint8_planes(image)
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above our limit
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageTooLargeError(
            f"image declares {declared.group(1) if declared else 'too many'} pixels; the "
            f"limit is {max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(
            "could not decode image: not a PNG, JPEG, WebP, BMP or GIF file"
        ) from None
    except ImageInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageInputError(f"could not decode image: {exc}") from None
    grey = grey.astype(np.float32) / 255.0
    if alpha is not None and alpha.min() < 255:
        # Transparent background: the strokes are wherever there is opacity.
        opacity = alpha.astype(np.float32) / 255.0
        return opacity * np.abs(grey - _background_level(grey, opacity))
    return 1.0 - grey if _border(grey).mean() > 0.5 else grey


def _uint8_planes(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """8-bit grey and alpha (None when opaque) of ``image``, reduced to <= WORK_SIDE a side."""
    if image.format == "JPEG":
        image.draft("L", (WORK_SIDE, WORK_SIDE))  # decode at 1/2..1/8 scale when large
    if image.mode in _SIXTEEN_BIT:
        # convert("L") would clip every value above 255 (a binarised digit): scale instead.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8))
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode in ("P", "1"):  # palette entries -> colours (and tRNS -> alpha) first
        image = image.convert("RGBA" if has_alpha else "RGB")
    factor = -(-max(image.size) // WORK_SIDE)
    if factor > 1:  # reduce before converting: the conversion then touches 1/factor^2 of it
        image = image.reduce(factor)
    target = "LA" if has_alpha else "L"
    if image.mode != target:
        image = image.convert(target)
    if image.mode == "LA":
        planes = np.asarray(image)
        return planes[..., 0], planes[..., 1]
    return np.asarray(image), None


def _background_level(grey: np.ndarray, alpha: np.ndarray) -> float:
    """The ink's contrasting level: white ink on a transparent canvas reads as bright."""
    opaque = grey[alpha > 0.5]
    return 0.0 if opaque.size == 0 or opaque.mean() > 0.5 else 1.0


def _border(grey: np.ndarray) -> np.ndarray:
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])


def mnist_style(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box, fit into 20x20 keeping the aspect ratio, and place it in
    28x28 with its centre of mass at (14, 14) by an integer shift. Input: float (H, W) with
    ink bright; output: uint8 (28, 28). A real MNIST digit comes back unchanged."""
    ink = np.asarray(ink, dtype=np.float32)
    if ink.ndim != 2 or ink.size == 0:
        raise ImageInputError(f"expected a 2-D greyscale image, got shape {ink.shape}")
    if not np.isfinite(ink).all():
        raise ImageInputError("image contains NaN or infinite values")
    peak = float(ink.max())
    if peak <= 0.0:
        raise ImageInputError("image is blank: no ink found")
    visible = ink >= INK_FRACTION_OF_MAX * peak
    rows = np.flatnonzero(visible.any(axis=1))
    cols = np.flatnonzero(visible.any(axis=0))
    digit = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = np.clip(digit / peak if peak < FULL_SCALE else digit, 0.0, 1.0)

    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Box filtering when shrinking is the anti-aliasing; bilinear when enlarging a tiny stroke.
    # At scale 1 (an MNIST digit: its box is already 20 px) Pillow returns the pixels as is.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    scaled = np.asarray(Image.fromarray(digit, mode="F").resize(size, resample), dtype=np.float32)
    # quantise first, so the centre of mass is placed for the bytes actually returned
    scaled = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)

    frame = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    top = _integer_shift(scaled.sum(axis=1), IMAGE_SIDE - scaled.shape[0])
    left = _integer_shift(scaled.sum(axis=0), IMAGE_SIDE - scaled.shape[1])
    frame[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return frame


def _integer_shift(profile: np.ndarray, max_offset: int) -> int:
    """Offset putting this mass profile's centre at ``MNIST_CENTRE``, rounding half down (a
    centre of mass in [13.5, 14.5) stays put), never pushing ink off the frame."""
    mass = profile.astype(np.float64)
    centre = float((mass * np.arange(len(mass))).sum() / mass.sum())
    return int(np.clip(math.ceil(MNIST_CENTRE - centre - 0.5), 0, max_offset))


def image_bytes_to_mnist(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, any size) to an MNIST-style uint8 (28, 28) digit."""
    return mnist_style(decode_image(data))
