"""Running the production model for the label-free detectors: probabilities and embeddings.

Both come from the logged model's declared interface, ``embed_and_predict`` (see
:mod:`mnist_mlops.models.inference`): the network itself says which representation is its
penultimate one, so a GAP network ending in a 1x1 conv works like one with a Linear head.
A model that does not declare the interface (e.g. one logged in MLflow's ``pt2`` format,
which loads as a bare graph) is rejected with a message naming what it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from mlflow.tracking import MlflowClient
from torch import nn

from mnist_mlops.models.scoring import score_images

log = logging.getLogger(__name__)


class ModelContractError(ValueError):
    """The loaded model does not declare the embedding/probability interface."""


@dataclass
class ModelProbe:
    """A loaded model plus where it came from (for cache keys and the report)."""

    model: nn.Module
    uri: str
    version: str
    batch_size: int = 1024

    def __post_init__(self) -> None:
        """Fail at load time, not mid-check, when the model lacks the declared interface."""
        if not callable(getattr(self.model, "embed_and_predict", None)):
            raise ModelContractError(
                f"{self.uri} loaded as a {type(self.model).__name__}, which does not declare "
                "embed_and_predict(); drift monitoring needs a model logged by mnist_mlops.train "
                "(an InferenceModel, serialization_format='pickle')"
            )
        try:
            self.predict(np.zeros((2, 28, 28), np.uint8))
        except TypeError as err:  # e.g. an InferenceModel around a net without features()
            raise ModelContractError(f"{self.uri}: {err}") from err

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float32 (N, 10), penultimate embeddings float32 (N, D))."""
        scores = score_images(self.model, images, self.batch_size, embeddings=True)
        assert scores.embeddings is not None
        return scores.probabilities, scores.embeddings


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
