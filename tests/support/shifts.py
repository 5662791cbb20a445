"""Synthetic dataset shifts for validating the detectors (tests and ``benchmarks/drift_power.py``).

Test support, not part of the package: tests import ``support.shifts``, the benchmark
``tests.support.shifts``.

Each shift maps uint8 images (N, 28, 28) to shifted uint8 images of the same shape; they
model what goes wrong in production: rotated scans, sensor noise, focus blur, a thicker pen,
off-centre crops, inverted polarity (black ink on white). Names say exactly what is done
(``dilation_2x2`` is a 2x2 grey dilation; rotations turn each digit about its own centre of
mass, so they do not also translate it). Out-of-distribution traffic is real, not synthetic:
:func:`fashion_mnist_images` reads Fashion-MNIST from Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Where Debian's package ``dataset-fashion-mnist`` installs the four IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


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


def fashion_mnist_images(directory: Path = FASHION_MNIST_DIR) -> np.ndarray:
    """The 10,000 Fashion-MNIST test images, uint8 (10000, 28, 28): clothes in MNIST's format,
    so out-of-distribution inputs that no shift of a digit imitates. Missing files raise
    :class:`FileNotFoundError` naming the apt package, so a test fails (not skips) and says
    how to fix it."""
    from mnist_mlops.data.idx import IMAGES_MAGIC, read_idx

    path = Path(directory) / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} missing: Fashion-MNIST comes from Debian's {FASHION_MNIST_PACKAGE} "
            f"(apt-get install -y {FASHION_MNIST_PACKAGE})"
        )
    images = np.asarray(read_idx(path, IMAGES_MAGIC))
    if images.shape != (10_000, 28, 28):
        raise ValueError(f"{path}: expected 10000 images of 28x28, got shape {images.shape}")
    return images
