"""Running the production model for the label-free detectors: probabilities and embeddings.

The embedding is the input of the network's last ``nn.Linear`` (its penultimate layer),
captured with a forward hook, so any architecture that ends in a linear classifier works
without the model exposing anything beyond the ``InferenceModel`` contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from mnist_mlops.data.features import as_unit_float

log = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` in registration order: the classifier head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take embeddings from")
    return linears[-1]


@dataclass
class ModelProbe:
    """A loaded model plus where it came from (for cache keys and the report)."""

    model: nn.Module
    uri: str
    version: str
    batch_size: int = 1024

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float32 (N, 10), penultimate embeddings float32 (N, D))."""
        self.model.eval()
        captured: list[torch.Tensor] = []
        hook = last_linear(self.model).register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1))
        )
        probs: list[np.ndarray] = []
        try:
            x = as_unit_float(images)
            for start in range(0, len(x), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(x[start : start + self.batch_size]))
                log_probs = self.model(batch.unsqueeze(1))
                probs.append(torch.exp(log_probs).float().numpy())
        finally:
            hook.remove()
        if not probs:
            return np.empty((0, 10), np.float32), np.empty((0, 0), np.float32)
        return np.concatenate(probs), torch.cat(captured).float().numpy()


def load_registered_model(model_uri: str, client: MlflowClient) -> ModelProbe:
    """Load ``models:/name@alias`` (or any MLflow model URI) and resolve its version."""
    import mlflow.pytorch

    version = "unknown"
    if model_uri.startswith("models:/") and "@" in model_uri:
        name, alias = model_uri.removeprefix("models:/").split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif model_uri.startswith("models:/"):
        version = model_uri.rsplit("/", 1)[-1]
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return ModelProbe(model=model, uri=model_uri, version=version)
