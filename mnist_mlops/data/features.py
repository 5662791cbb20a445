"""Per-image statistics shared by the drift baseline, drift detection and the prediction log.

All functions take images as uint8 (N, 28, 28) in MNIST polarity (0 background, 255 ink) or as
float in [0, 1]; they are vectorised so a 2,000-image window costs milliseconds.
"""

from __future__ import annotations

import numpy as np

from mnist_mlops.data.constants import IMAGE_SIDE

# Pixel-intensity histogram: exact background as its own bin, then ten equal bins of ink.
PIXEL_BIN_EDGES = np.concatenate([[0.0, 0.5 / 255.0], np.linspace(0.1, 1.0, 10)[:-1], [1.0 + 1e-9]])
INK_THRESHOLD = 0.5
FEATURE_NAMES = (
    "mean_intensity",
    "ink_fraction",
    "com_row",
    "com_col",
    "bbox_height",
    "bbox_width",
)


def as_unit_float(images: np.ndarray) -> np.ndarray:
    """Images as float32 (N, 28, 28) in [0, 1], whatever the input dtype and shape."""
    arr = np.asarray(images)
    if arr.ndim == 2 and arr.shape[1] == IMAGE_SIDE * IMAGE_SIDE:
        arr = arr.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"expected images of shape (N, 28, 28), got {np.asarray(images).shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32, copy=False)


def image_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean intensity, ink fraction, centre of mass and bounding-box size per image."""
    x = as_unit_float(images)
    n = x.shape[0]
    mass = x.sum(axis=(1, 2))
    coords = np.arange(IMAGE_SIDE, dtype=np.float32)
    safe_mass = np.where(mass > 0, mass, 1.0)
    centre = (IMAGE_SIDE - 1) / 2.0
    com_row = np.where(mass > 0, (x.sum(axis=2) * coords).sum(axis=1) / safe_mass, centre)
    com_col = np.where(mass > 0, (x.sum(axis=1) * coords).sum(axis=1) / safe_mass, centre)
    ink = x > INK_THRESHOLD
    rows_any = ink.any(axis=2)
    cols_any = ink.any(axis=1)
    bbox_height = np.where(
        rows_any.any(axis=1),
        IMAGE_SIDE - np.argmax(rows_any[:, ::-1], axis=1) - np.argmax(rows_any, axis=1),
        0,
    )
    bbox_width = np.where(
        cols_any.any(axis=1),
        IMAGE_SIDE - np.argmax(cols_any[:, ::-1], axis=1) - np.argmax(cols_any, axis=1),
        0,
    )
    return {
        "mean_intensity": x.reshape(n, -1).mean(axis=1),
        "ink_fraction": ink.reshape(n, -1).mean(axis=1),
        "com_row": com_row.astype(np.float32),
        "com_col": com_col.astype(np.float32),
        "bbox_height": bbox_height.astype(np.float32),
        "bbox_width": bbox_width.astype(np.float32),
    }


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """Fraction of all pixels in each ``PIXEL_BIN_EDGES`` bin (sums to 1)."""
    x = as_unit_float(images)
    counts, _ = np.histogram(x, bins=PIXEL_BIN_EDGES)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)
