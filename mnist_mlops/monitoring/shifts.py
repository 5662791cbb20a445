"""Synthetic dataset shifts for validating the detectors (tests and ``benchmarks/drift_power.py``).

Each shift maps uint8 images (N, 28, 28) to shifted uint8 images of the same shape; they
model what goes wrong in production: rotated scans, sensor noise, focus blur, a thicker pen,
off-centre crops, inverted polarity (black ink on white).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rotate(degrees: float) -> Shift:
    """Rotate every image by ``degrees`` (sign chosen at random per image) about its centre."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        signs = rng.choice([-1.0, 1.0], size=len(images))
        return (
            np.stack(
                [
                    _to_uint8(
                        ndimage.rotate(img.astype(np.float32), s * degrees, reshape=False, order=1)
                    )
                    for img, s in zip(images, signs, strict=True)
                ]
            )
            if len(images)
            else images
        )

    return apply


def gaussian_noise(sigma: float) -> Shift:
    """Additive Gaussian noise with standard deviation ``sigma`` grey levels."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_uint8(images.astype(np.float32) + rng.normal(0.0, sigma, images.shape))

    return apply


def blur(sigma: float) -> Shift:
    """Gaussian blur (out-of-focus capture)."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_uint8(
            ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma))
        )

    return apply


def thicker_strokes(size: int = 2) -> Shift:
    """Grey dilation: a broader pen."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ndimage.grey_dilation(images, size=(1, size, size))

    return apply


def translate(pixels: int) -> Shift:
    """Move each digit ``pixels`` in a random diagonal direction (off-centre crops)."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(images)
        for i, img in enumerate(images):
            dy, dx = rng.choice([-pixels, pixels], size=2)
            out[i] = ndimage.shift(img, (dy, dx), order=0, mode="constant", cval=0)
        return out

    return apply


def invert() -> Shift:
    """Black ink on white paper: the polarity MNIST does not use."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return 255 - images

    return apply


def identity() -> Shift:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return images

    return apply


# The shifts the power benchmark and the tests exercise, by name.
IMAGE_SHIFTS: dict[str, Shift] = {
    "rotation_15": rotate(15),
    "rotation_30": rotate(30),
    "rotation_45": rotate(45),
    "gaussian_noise": gaussian_noise(40.0),
    "blur": blur(1.0),
    "thicker_strokes": thicker_strokes(2),
    "translation": translate(3),
    "inversion": invert(),
}


def label_subset_indices(labels: np.ndarray, keep: tuple[int, ...] = (0, 1, 2, 3, 4)) -> np.ndarray:
    """Indices of images whose label is in ``keep`` (label shift: only some digits arrive)."""
    return np.flatnonzero(np.isin(labels, keep))
