"""A logged model as a distillation teacher (``model/loss=distill``).

The teacher is any model this project logged to MLflow (``runs:/<id>/model`` or
``models:/<name>@<alias>``). Logged models are ``InferenceModel``s taking [0, 1] pixels; the
student trains on normalised batches, so the teacher is the network inside, and only when it
was trained under the same normalisation as the student's data.
"""

from __future__ import annotations

import math

import mlflow
from torch import nn

from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.tracking.registry import load_logged_model


def load_teacher_net(model_uri: str, tracking_uri: str, mean: float, std: float) -> nn.Module:
    """The frozen network of the logged model at ``model_uri``, in eval mode, on the CPU."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
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
    if not (
        math.isclose(trained[0], mean, rel_tol=1e-6) and math.isclose(trained[1], std, rel_tol=1e-6)
    ):
        raise ValueError(
            f"teacher {model_uri} was trained with mean/std {trained}, the data uses "
            f"{(mean, std)}; its scores on these batches would be meaningless"
        )
    return model.net.eval().requires_grad_(False)
