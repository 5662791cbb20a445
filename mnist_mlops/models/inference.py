"""The served form of every network: one contract for MLflow, serving, drift and retraining.

A logged model takes float32 images shaped (N, 1, 28, 28) with values in [0, 1] (MNIST
polarity: white ink on black). Normalisation lives inside the model, so no caller can forget
it or apply it twice. The declared interface, used by every consumer alike:

- ``forward(images)``: (N, 10) log-probabilities (what serving traces and evaluation scores);
- ``predict_proba(images)``: (N, 10) probabilities, ``exp`` of the above;
- ``embed(images)``: (N, D) penultimate representation (the network's ``features``);
- ``embed_and_predict(images)``: both from ONE pass (drift monitoring needs both).

The wrapped network declares its split through :class:`FeatureNetwork` (``features`` and
``classify``), as :class:`~mnist_mlops.models.convnet.ConvNet` does for every
``conf/model/*.yaml``; nothing here looks for layers of a particular type. Models pickled
before this contract load with the current class code, so they gain the methods too.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD

# The artifact path a training run logs its InferenceModel under: ``runs:/<run_id>/model``.
MODEL_ARTIFACT = "model"


@runtime_checkable
class FeatureNetwork(Protocol):
    """A network split into body and head: ``classify(features(x))`` equals ``forward(x)``."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def classify(self, features: torch.Tensor) -> torch.Tensor: ...


class InferenceModel(nn.Module):
    """Wraps a trained network with the MNIST normalisation it was trained under."""

    def __init__(self, net: nn.Module, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._normalise(images))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 10); rows sum to 1."""
        return self.forward(images).exp()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (N, D) the network declares as its features."""
        return self._feature_net().features(self._normalise(images))

    def embed_and_predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (N, D), log-probabilities (N, 10)) from a single forward pass."""
        net = self._feature_net()
        features = net.features(self._normalise(images))
        return features, net.classify(features)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def _feature_net(self) -> FeatureNetwork:
        if not isinstance(self.net, FeatureNetwork):
            raise TypeError(
                f"the wrapped {type(self.net).__name__} does not declare features()/classify(), "
                "so this model has no embedding; build networks with "
                "mnist_mlops.models.convnet.ConvNet (any conf/model/*.yaml) or implement "
                "mnist_mlops.models.inference.FeatureNetwork"
            )
        return self.net
