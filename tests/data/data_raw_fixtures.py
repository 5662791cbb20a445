"""Synthetic raw MNIST for the data tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_mlops.data.idx import write_synthetic_raw
from mnist_mlops.data.synthetic import synthetic_digits

# Deliberately unbalanced classes so the stratified quotas need largest-remainder rounding.
SYNTHETIC_TRAIN_COUNTS = np.array([70, 64, 58, 66, 52, 49, 61, 75, 47, 58])
SYNTHETIC_TEST_SIZE = 120
SYNTHETIC_VAL_SIZE = 97
SYNTHETIC_GATE_SIZE = 83


def synthetic_raw(raw_dir: Path, seed: int = 7) -> Path:
    """Four gzipped IDX files with MNIST's names holding rendered synthetic digits."""
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.repeat(np.arange(10), SYNTHETIC_TRAIN_COUNTS))
    train = synthetic_digits(len(train_labels), seed=seed, labels=train_labels)
    test = synthetic_digits(SYNTHETIC_TEST_SIZE, seed=seed + 1)
    return write_synthetic_raw(raw_dir, [train, test])
