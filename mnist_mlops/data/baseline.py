"""The drift baseline: training-set statistics that production windows are compared against.

All feature math lives in :mod:`mnist_mlops.data.features`; this module only summarises it
into the ``baseline.json`` structure (``schema_version`` 2) the drift monitor reads.

Schema 2 stores each feature's reference sample at full precision (the float32/float64
values exactly as :func:`~mnist_mlops.data.features.image_features` computes them, which
JSON's shortest round-trip repr preserves), so a window's features and the reference are
the same numbers for the same image. Schema 1 rounded the sample to 4 decimals while windows
were not rounded, which biased KS on discrete features (``ink_fraction``, steps of 1/784):
p < 0.01 on 5.5% of drift-free windows instead of ~1%. The monitor still reads schema 1 by
rounding window features the same way (:mod:`mnist_mlops.monitoring.reference`).
"""

from __future__ import annotations

import numpy as np

from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.data.features import (
    FEATURE_NAMES,
    PIXEL_BIN_EDGES,
    image_features,
    pixel_histogram,
)

BASELINE_SCHEMA_VERSION = 2
REFERENCE_SAMPLE_SIZE = 5000
QUANTILES = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.50,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}


def summarise_feature(values: np.ndarray, sample_index: np.ndarray) -> dict:
    """Moments, quantiles and a fixed subsample (for two-sample tests) of one feature."""
    values = np.asarray(values, dtype=np.float64)
    quantiles = np.quantile(values, list(QUANTILES.values()))
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": {name: float(q) for name, q in zip(QUANTILES, quantiles, strict=True)},
        # full precision: the detectors compare it with unrounded window features
        "reference_sample": values[sample_index].tolist(),
    }


def compute_baseline(
    images: np.ndarray,
    labels: np.ndarray,
    content_hash: str,
    seed: int,
    split: str = "train",
    sample_size: int = REFERENCE_SAMPLE_SIZE,
) -> dict:
    """The baseline dict for uint8 images (N, 28, 28) and their labels; deterministic per seed."""
    n_images = int(len(labels))
    if n_images == 0:
        raise ValueError(f"cannot build a drift baseline from an empty {split!r} split")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES)
    features = image_features(images)
    # one sample of images shared by every feature, so joint checks see the same images
    rng = np.random.default_rng(seed)
    sample_index = np.sort(rng.choice(n_images, size=min(sample_size, n_images), replace=False))
    return {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "source": {"split": split, "n_images": n_images, "content_hash": content_hash},
        "labels": {"counts": counts.tolist(), "fractions": (counts / n_images).tolist()},
        "pixel_histogram": {
            "bin_edges": PIXEL_BIN_EDGES.tolist(),
            "fractions": pixel_histogram(images).tolist(),
        },
        "features": {
            name: summarise_feature(features[name], sample_index) for name in FEATURE_NAMES
        },
    }
