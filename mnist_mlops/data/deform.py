"""MNIST8M-style deformed digits: image ``i`` is a pure function of ``(seed, i)``.

Loosli, Canu and Bottou (2007) grew MNIST to 8.1M images by deforming the 60k training
digits. This generator does the same kind of thing: a Simard-style elastic field (uniform
noise in [-1, 1] per pixel and axis, Gaussian-smoothed with ``sigma``, scaled by ``alpha``,
Simard et al. 2003) plus a small affine map (rotation, scale, shear, translation) about the
image centre, applied with bilinear sampling and zeros outside the frame.

Why a pure function of ``(seed, i)``: any executor can produce any index range on its own, no
state is shared, and a range regenerated after a failure (or by a test) is byte-identical. So
every per-image random draw comes from its own generator seeded with ``SeedSequence([seed, i])``,
the source digit is ``i mod N``, and every step after the draws works on each image alone
(smoothing only along the image axes, sampling from each image's own padded frame), so the bytes
of image ``i`` never depend on which chunk it was generated in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from mnist_mlops.data.constants import IMAGE_SIDE

_CENTRE = (IMAGE_SIDE - 1) / 2.0
_SUB_BATCH = 1024


@dataclass(frozen=True)
class DeformSettings:
    """How strongly digits are deformed (defaults: Simard's alpha/sigma, mild affine)."""

    alpha: float = 34.0
    sigma: float = 4.0
    max_rotation_deg: float = 10.0
    scale_low: float = 0.9
    scale_high: float = 1.1
    max_shear: float = 0.15
    max_translate: float = 2.0

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.sigma <= 0:
            raise ValueError(
                f"deform needs alpha >= 0 and sigma > 0, got {self.alpha}, {self.sigma}"
            )
        if not 0 < self.scale_low <= self.scale_high:
            raise ValueError(
                f"deform needs 0 < scale_low <= scale_high, got {self.scale_low}, {self.scale_high}"
            )
        for name in ("max_rotation_deg", "max_shear", "max_translate"):
            if getattr(self, name) < 0:
                raise ValueError(f"deform.{name}={getattr(self, name)} must be >= 0")

    def max_displacement(self) -> float:
        """An upper bound (pixels) on how far any output pixel samples from where it sits.

        The smoothed field is a convex combination of values in [-1, 1] (normalised kernel), so
        the elastic part is at most ``alpha`` per axis; the affine part is bounded by the
        operator norm of ``A - I`` times the largest distance from the centre, plus translation.
        """
        elastic = self.alpha * math.sqrt(2.0)
        angle = math.radians(self.max_rotation_deg)
        worst = 0.0
        for scale in (self.scale_low, self.scale_high):
            for theta in (-angle, angle):
                for shear in (-self.max_shear, self.max_shear):
                    matrix = _affine_matrix(np.array([theta]), np.array([scale]), np.array([shear]))
                    worst = max(worst, float(np.linalg.norm(matrix[0] - np.eye(2), 2)))
        radius = _CENTRE * math.sqrt(2.0)
        return elastic + worst * radius + self.max_translate * math.sqrt(2.0)


def _affine_matrix(theta: np.ndarray, scale: np.ndarray, shear: np.ndarray) -> np.ndarray:
    """(n, 2, 2) maps output offsets (row, col) from the centre to input offsets."""
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.zeros((len(theta), 2, 2))
    shear_m[:, 0, 0] = shear_m[:, 1, 1] = 1.0
    shear_m[:, 1, 0] = shear  # column offset grows with row: horizontal shear
    return rotation @ shear_m / scale[:, None, None]


def _draws(seed: int, indices: np.ndarray, settings: DeformSettings) -> tuple[np.ndarray, ...]:
    """Per-image random numbers, each image from its own ``SeedSequence([seed, i])``."""
    n = len(indices)
    noise = np.empty((n, 2, IMAGE_SIDE, IMAGE_SIDE))
    params = np.empty((n, 5))
    for row, index in enumerate(indices):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
        params[row] = rng.random(5)
        noise[row] = rng.uniform(-1.0, 1.0, size=(2, IMAGE_SIDE, IMAGE_SIDE))
    angle = math.radians(settings.max_rotation_deg)
    theta = (2 * params[:, 0] - 1) * angle
    scale = settings.scale_low + params[:, 1] * (settings.scale_high - settings.scale_low)
    shear = (2 * params[:, 2] - 1) * settings.max_shear
    shift = (2 * params[:, 3:5] - 1) * settings.max_translate
    return noise, theta, scale, shear, shift


def sampling_coordinates(seed: int, indices: np.ndarray, settings: DeformSettings) -> np.ndarray:
    """(n, 2, 28, 28) input (row, col) each output pixel of images ``indices`` samples from."""
    indices = np.asarray(indices, dtype=np.int64)
    noise, theta, scale, shear, shift = _draws(seed, indices, settings)
    # smoothing along the two image axes only: image i's field never sees its neighbours'
    field = gaussian_filter(noise, sigma=(0, 0, settings.sigma, settings.sigma), mode="reflect")
    field *= settings.alpha
    grid = np.stack(
        np.meshgrid(np.arange(IMAGE_SIDE), np.arange(IMAGE_SIDE), indexing="ij"), 0
    ).astype(np.float64)
    offsets = grid - _CENTRE  # (2, 28, 28)
    matrix = _affine_matrix(theta, scale, shear)  # (n, 2, 2)
    affine = np.einsum("nij,jhw->nihw", matrix, offsets) + _CENTRE + shift[:, :, None, None]
    return affine + field


def bilinear_sample(images: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample uint8 images (n, 28, 28) at float coords (n, 2, 28, 28); 0 outside the frame.

    Each image is sampled from its own zero-padded frame with coordinates clamped into the
    padding, so no value ever comes from a neighbouring image (what a batched
    ``scipy.ndimage.map_coordinates`` over a stacked array could not promise at the edges).
    """
    n = images.shape[0]
    padded = np.zeros((n, IMAGE_SIDE + 2, IMAGE_SIDE + 2), dtype=np.float64)
    padded[:, 1:-1, 1:-1] = images
    # padded index = coordinate + 1; clamp into [0, 29] so both neighbours exist
    pos = np.clip(coords + 1.0, 0.0, IMAGE_SIDE + 1.0)
    low = np.minimum(np.floor(pos).astype(np.int64), IMAGE_SIDE)
    frac = pos - low
    r0, c0 = low[:, 0], low[:, 1]
    fr, fc = frac[:, 0], frac[:, 1]
    batch = np.arange(n)[:, None, None]
    top = padded[batch, r0, c0] * (1 - fc) + padded[batch, r0, c0 + 1] * fc
    bottom = padded[batch, r0 + 1, c0] * (1 - fc) + padded[batch, r0 + 1, c0 + 1] * fc
    values = top * (1 - fr) + bottom * fr
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def generate_range(
    source_images: np.ndarray,
    source_labels: np.ndarray,
    seed: int,
    start: int,
    stop: int,
    settings: DeformSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deformed images ``start..stop-1`` (uint8 (n, 28, 28)) and their int64 labels.

    Image ``i`` deforms source digit ``i mod N`` and keeps its label.
    """
    settings = settings or DeformSettings()
    if len(source_images) == 0 or len(source_images) != len(source_labels):
        raise ValueError(
            f"deform needs a non-empty source with one label per image, got "
            f"{len(source_images)} images and {len(source_labels)} labels"
        )
    if not 0 <= start <= stop:
        raise ValueError(f"deform range must satisfy 0 <= start <= stop, got {start}..{stop}")
    indices = np.arange(start, stop, dtype=np.int64)
    source = indices % len(source_images)
    if len(indices) == 0:
        return np.empty((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8), np.empty(0, np.int64)
    images = np.empty((len(indices), IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    # float64 fields cost ~100 KB per image: work in sub-batches so a 10k-image chunk on an
    # executor needs ~0.1 GB, not ~1 GB (each image is computed alone, so bytes do not change)
    for at in range(0, len(indices), _SUB_BATCH):
        part = slice(at, at + _SUB_BATCH)
        coords = sampling_coordinates(seed, indices[part], settings)
        images[part] = bilinear_sample(np.asarray(source_images)[source[part]], coords)
    return images, np.asarray(source_labels, dtype=np.int64)[source]


def generated_ids(start: int, stop: int) -> list[str]:
    """Ids ``mnist8m-<index>``, zero-padded so id order is index order (load_split sorts)."""
    return [f"mnist8m-{i:010d}" for i in range(start, stop)]
