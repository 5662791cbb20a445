"""Batched scoring of stored images by a served-contract model: the one place it is written.

Evaluation (``mnist_mlops.evaluate``), the promotion gate (``tracking.registry``) and drift
monitoring (``monitoring.model_probe``) all score uint8 images (N, 28, 28) with a logged
:class:`~mnist_mlops.models.inference.InferenceModel`. Here the images become the served
input (float32 [0, 1], (n, 1, 28, 28)) a batch at a time, so a 60k-image split never exists
as floats at once, and each batch runs in eval mode under ``torch.inference_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES


@dataclass(frozen=True)
class Scores:
    """A model's outputs for every image, in input order."""

    log_probs: np.ndarray  # float32 (N, 10)
    probabilities: np.ndarray  # float32 (N, 10), exp of the above
    embeddings: np.ndarray | None  # float32 (N, D) when asked for
    nll_sum: float | None  # summed NLL over the images when labels were given

    @property
    def predicted(self) -> np.ndarray:
        """The argmax class of each image (int64)."""
        return self.log_probs.argmax(axis=1)


def served_input(images: np.ndarray) -> torch.Tensor:
    """float32 (n, 1, 28, 28) in [0, 1] from uint8 (n, 28, 28) pixels, float [0, 1] images, or
    either flattened to (n, 784). The shape is not checked here: a wrong one fails in the
    model's first layer, as it would in serving."""
    arr = np.ascontiguousarray(images)
    if arr.dtype == np.uint8:
        x = torch.from_numpy(arr).float().div_(255)
    else:
        x = torch.from_numpy(arr.astype(np.float32, copy=False))
    if x.ndim == 2 and x.shape[1] == IMAGE_SIDE * IMAGE_SIDE:
        x = x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return x.unsqueeze(1) if x.ndim == 3 else x


def score_images(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 1024,
    labels: np.ndarray | None = None,
    embeddings: bool = False,
) -> Scores:
    """Score ``images`` (uint8 (N, 28, 28), or float in [0, 1]) with ``model``.

    ``embeddings=True`` uses the model's ``embed_and_predict`` (one pass for both); with
    ``labels`` the summed NLL is accumulated batch by batch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    model.eval()
    targets = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_probs: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    features: list[np.ndarray] = []
    nll_sum = 0.0
    for start in range(0, len(images), batch_size):
        x = served_input(images[start : start + batch_size])
        with torch.inference_mode():
            if embeddings:
                embedding, out = model.embed_and_predict(x)
                features.append(embedding.float().numpy())
            else:
                out = model(x)
            out = out.float()
            log_probs.append(out.numpy())
            probabilities.append(torch.exp(out).numpy())
            if targets is not None:
                target = targets[start : start + x.shape[0]]
                nll_sum += F.nll_loss(out, target, reduction="sum").item()
    if not log_probs:
        empty = np.empty((0, NUM_CLASSES), np.float32)
        return Scores(
            empty,
            empty.copy(),
            np.empty((0, 0), np.float32) if embeddings else None,
            0.0 if targets is not None else None,
        )
    return Scores(
        log_probs=np.concatenate(log_probs),
        probabilities=np.concatenate(probabilities),
        embeddings=np.concatenate(features) if embeddings else None,
        nll_sum=nll_sum if targets is not None else None,
    )
