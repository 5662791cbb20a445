"""Logged models as a distillation teacher (``model/loss=distill``).

A teacher is one model this project logged to MLflow (``runs:/<id>/model`` or
``models:/<name>@<alias>``) or an ensemble of several (a list of URIs; their probabilities are
averaged). Logged models are ``InferenceModel``s taking [0, 1] pixels; the student trains on
normalised batches, so the teacher is the network inside, and only when it was trained under
the same normalisation as the student's data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.tracking.registry import load_logged_model
from mnist_mlops.tracking.setup import configure_mlflow


class ProbabilityEnsemble(nn.Module):
    """Log of the mean class probability of several log-softmax networks."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([net(x).float() for net in self.nets])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.nets))


def _load_net(model_uri: str, tracking_uri: str, mean: float, std: float) -> nn.Module:
    try:
        model = load_logged_model(model_uri)
    except Exception as err:
        raise ValueError(
            f"model.loss.teacher.model_uri={model_uri!r} could not be loaded from "
            f"{tracking_uri}: {err}"
        ) from err
    if not isinstance(model, InferenceModel):
        raise ValueError(
            f"model.loss.teacher.model_uri={model_uri!r} is a {type(model).__name__}, "
            "not a model logged by mnist_mlops.train"
        )
    trained = (float(model.mean), float(model.std))
    if not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(trained, (mean, std), strict=True)):
        raise ValueError(
            f"teacher {model_uri} was trained with mean/std {trained}, the data uses "
            f"{(mean, std)}; its scores on these batches would be meaningless"
        )
    return model.net


def load_teacher_net(
    model_uri: str | Sequence[str], registry: Any, mean: float, std: float
) -> nn.Module:
    """The frozen network(s) of the logged model(s) at ``model_uri``, in eval mode, on the CPU.

    ``registry`` is the ``registry`` config group: the store the URIs are resolved against.
    """
    configure_mlflow(registry)
    tracking_uri = str(registry.tracking_uri)
    uris = [model_uri] if isinstance(model_uri, str) else list(model_uri)
    if not uris:
        raise ValueError("model.loss.teacher.model_uri is an empty list; give one or more URIs")
    nets = [_load_net(str(uri), tracking_uri, mean, std) for uri in uris]
    teacher = nets[0] if len(nets) == 1 else ProbabilityEnsemble(nets)
    return teacher.eval().requires_grad_(False)
