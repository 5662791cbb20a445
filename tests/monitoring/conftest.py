"""Fixtures for the drift tests: a synthetic training baseline, fresh windows, a tiny model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mnist_mlops.data.baseline import compute_baseline
from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.data.synthetic import synthetic_digits
from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.monitoring.model_probe import ModelProbe
from mnist_mlops.monitoring.reference import Baseline, build_model_reference


def baseline_dict(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """A ``baseline.json`` payload built by preprocessing's own builder, in memory."""
    return compute_baseline(images, labels, content_hash="synthetic", seed=0)


@pytest.fixture(scope="session")
def train_digits() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_digits(3000, seed=11)


@pytest.fixture(scope="session")
def baseline_payload(train_digits: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    return baseline_dict(*train_digits)


@pytest.fixture(scope="session")
def baseline(baseline_payload: dict[str, Any]) -> Baseline:
    return Baseline.from_dict(baseline_payload)


@pytest.fixture(scope="session")
def fresh_digits() -> tuple[np.ndarray, np.ndarray]:
    """Unseen draws from the same generator: the no-drift window."""
    return synthetic_digits(1500, seed=12)


class TinyNet(nn.Module):
    """A small MLP declaring its 64-wide penultimate layer (the ``FeatureNetwork`` contract),
    enough to classify the synthetic digits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(features), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def train_tiny_model(
    images: np.ndarray, labels: np.ndarray, steps: int = 150, seed: int = 0
) -> InferenceModel:
    """Full-batch Adam on the synthetic digits: a real (if small) trained classifier in ~1 s."""
    torch.manual_seed(seed)
    model = InferenceModel(TinyNet())
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model(train_digits: tuple[np.ndarray, np.ndarray]) -> InferenceModel:
    images, labels = train_digits
    return train_tiny_model(images[:1000], labels[:1000], steps=80)


@pytest.fixture(scope="session")
def probe_and_reference(tiny_model: InferenceModel):
    val_images, _ = synthetic_digits(1000, seed=13)
    probe = ModelProbe(model=tiny_model, uri="test:tiny", version="1")
    return probe, build_model_reference(probe, val_images, cache_dir=None)
