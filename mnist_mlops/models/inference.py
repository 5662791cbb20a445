"""The served form of every network: one contract for MLflow, serving, drift and retraining.

A logged model takes float32 images shaped (N, 1, 28, 28) with values in [0, 1] (MNIST
polarity: white ink on black) and returns (N, 10) log-probabilities. Normalisation lives
inside the model, so no caller can forget it or apply it twice.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD


class InferenceModel(nn.Module):
    """Wraps a trained network with the MNIST normalisation it was trained under."""

    def __init__(self, net: nn.Module, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)
