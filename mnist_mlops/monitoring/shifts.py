"""Synthetic dataset shifts for validating the detectors (tests and ``benchmarks/drift_power.py``).

Each shift maps uint8 images (N, 28, 28) to shifted uint8 images of the same shape; they
model what goes wrong in production: rotated scans, sensor noise, focus blur, a thicker pen,
off-centre crops, inverted polarity (black ink on white). Names say exactly what is done
(``dilation_2x2`` is a 2x2 grey dilation; rotations turn each digit about its own centre of
mass, so they do not also translate it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of one image's intensity, in index coordinates."""
    x = image.astype(np.float64)
    total = x.sum()
    if total <= 0:
        return (image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0
    return (
        float((x.sum(axis=1) * np.arange(x.shape[0])).sum() / total),
        float((x.sum(axis=0) * np.arange(x.shape[1])).sum() / total),
    )


def rotate_about_centre_of_mass(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate one image by ``degrees`` (counter-clockwise as displayed) about its own centre of
    mass, bilinear, so the rotation does not also move the digit (MNIST centres by mass, at
    ~(14, 14), not at the array centre (13.5, 13.5))."""
    theta = np.deg2rad(degrees)
    # output pixel o samples input R (o - c) + c, with R the inverse rotation in (row, col)
    matrix = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    centre = np.asarray(centre_of_mass(image))
    offset = centre - matrix @ centre
    out = ndimage.affine_transform(
        image.astype(np.float32), matrix, offset=offset, order=1, mode="constant", cval=0.0
    )
    return _to_uint8(out)


def rotate(degrees: float) -> Shift:
    """Rotate every image by ``degrees`` (sign chosen at random per image) about its centre
    of mass (see :func:`rotate_about_centre_of_mass`)."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        signs = rng.choice([-1.0, 1.0], size=len(images))
        if not len(images):
            return images
        return np.stack(
            [
                rotate_about_centre_of_mass(img, s * degrees)
                for img, s in zip(images, signs, strict=True)
            ]
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
    """Grey dilation with a ``size`` x ``size`` square: a broader pen. For the default 2x2 each
    output pixel is the max of itself and its lower-right neighbours, so strokes grow one pixel
    up and left and the centre of mass moves by about -0.5 px on both axes."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ndimage.grey_dilation(images, size=(1, size, size))

    return apply


def translate(pixels: int) -> Shift:
    """Move each digit by (+-pixels, +-pixels), signs at random: a diagonal move of
    ``pixels * sqrt(2)`` (off-centre crops)."""

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
    "dilation_2x2": thicker_strokes(2),
    "translation": translate(3),
    "inversion": invert(),
}


def label_subset_indices(labels: np.ndarray, keep: tuple[int, ...] = (0, 1, 2, 3, 4)) -> np.ndarray:
    """Indices of images whose label is in ``keep`` (label shift: only some digits arrive)."""
    return np.flatnonzero(np.isin(labels, keep))
