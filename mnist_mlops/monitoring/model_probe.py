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


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The final ``nn.Linear`` in registration order (the classifier head), if modules exist."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


# aten ops a linear layer becomes in an exported (pt2) graph, and which argument is its input
_LINEAR_OPS = {torch.ops.aten.linear.default: 0, torch.ops.aten.addmm.default: 1}


class _LastLinearInput(torch.fx.Interpreter):
    """Runs an exported graph node by node, remembering the input of the last linear op.

    MLflow's default ``pt2`` format loads as a ``GraphModule`` without ``nn.Linear``
    submodules, so a forward hook has nothing to attach to; interpreting the graph does.
    """

    last_input: torch.Tensor | None = None

    def call_function(self, target, args, kwargs):  # noqa: ANN001, ANN201 - fx signature
        if target in _LINEAR_OPS:
            self.last_input = args[_LINEAR_OPS[target]]
        return super().call_function(target, args, kwargs)


def _forward_with_embedding(
    model: nn.Module, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, penultimate activations) for one batch, for either model form."""
    head = last_linear(model)
    if head is not None:
        captured: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            out = model(batch)
        finally:
            hook.remove()
        return out, captured[-1].flatten(1)
    if isinstance(model, torch.fx.GraphModule):
        interpreter = _LastLinearInput(model)
        out = interpreter.run(batch)
        out = out[0] if isinstance(out, list | tuple) else out
        if interpreter.last_input is None:
            raise ValueError("the exported model graph has no linear op to take embeddings from")
        return out, interpreter.last_input.flatten(1)
    raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take embeddings from")


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
        if not isinstance(self.model, torch.fx.GraphModule):
            self.model.eval()  # an exported graph is already in inference form
        x = as_unit_float(images)
        probs: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        for start in range(0, len(x), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + self.batch_size]))
            log_probs, embedding = _forward_with_embedding(self.model, batch.unsqueeze(1))
            probs.append(torch.exp(log_probs).float().numpy())
            embeddings.append(embedding.float().numpy())
        if not probs:
            return np.empty((0, 10), np.float32), np.empty((0, 0), np.float32)
        return np.concatenate(probs), np.concatenate(embeddings)


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
