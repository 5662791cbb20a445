"""Tiny served-contract models logged to MLflow like training logs them, for registry/serving tests.

A stand-in is an ``InferenceModel`` around a small MLP trained for a moment on the synthetic
digits, so "better" and "worse" are real accuracies, not hard-coded numbers. Runs carry the
metrics and tags the training stage logs (``val/acc``, ``val/acc_selected``, ``test/acc``, ...).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from torch import nn

from mnist_mlops.data.splits import load_split
from mnist_mlops.models.inference import MODEL_ARTIFACT, InferenceModel
from mnist_mlops.tracking.registry import score_model
from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment


def registry_config(store: Path, model_name: str = "mnist-classifier") -> object:
    """A ``registry`` config group pointing at an embedded store under ``store``."""
    return OmegaConf.create(
        {
            "tracking_uri": f"sqlite:///{store}/mlflow.db",
            "artifact_location": str(store / "artifacts"),
            "experiment_name": "mnist",
            "model_name": model_name,
            "champion_alias": "production",
            "challenger_alias": "staging",
            # stand-ins are not real models: the accuracy floor for a first champion is
            # exercised in tests/registry with the shipped value, not here
            "gate": {"alpha": 0.05, "min_effect": 0.001, "min_accuracy": 0.0},
        }
    )


def train_standin(processed_dir: Path, steps: int, seed: int = 0) -> InferenceModel:
    """An MLP trained for ``steps`` full-batch Adam steps; steps=0 gives an untrained model."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10), nn.LogSoftmax(dim=1)
    )
    model = InferenceModel(net)
    train = load_split(processed_dir / "train")
    x = torch.from_numpy(train.images).float().unsqueeze(1) / 255.0
    y = torch.from_numpy(train.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.nll_loss(model(x), y).backward()
        optimizer.step()
    return model.eval()


@dataclass(frozen=True)
class LoggedStandin:
    run_id: str
    val_acc: float
    test_acc: float


def log_standin(
    registry_cfg: object, model: InferenceModel, processed_dir: Path, run_name: str
) -> LoggedStandin:
    """Log ``model`` as a FINISHED training run with real validation/test metrics."""
    configure_mlflow(registry_cfg)
    experiment_id = ensure_experiment(registry_cfg)
    val = score_model(model, load_split(processed_dir / "val"))
    test = score_model(model, load_split(processed_dir / "test"))
    example = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_metrics({"val/acc": val["acc"], "val/acc_best": val["acc"]})
        # the re-validated score of the logged model, as the trainer logs it (conf/selection)
        mlflow.log_metrics({"val/acc_selected": val["acc"], "val/loss_selected": val["loss"]})
        mlflow.log_metrics({"test/acc": test["acc"], "test/loss": test["loss"]})
        mlflow.set_tags({"backend": "standin", "data_manifest_hash": "synthetic"})
        mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT,
            input_example=example,
            serialization_format="pickle",
            pip_requirements=[],
        )
    return LoggedStandin(run.info.run_id, val["acc"], test["acc"])


@dataclass(frozen=True)
class StandinStore:
    """A template store holding a good run and a clearly worse one (copied per test)."""

    root: Path
    good: LoggedStandin
    bad: LoggedStandin

    def copy_to(self, target: Path) -> Path:
        """A private copy of the database (artifacts are shared read-only)."""
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / "mlflow.db", target / "mlflow.db")
        (target / "artifacts").symlink_to(self.root / "artifacts")
        return target


def build_standin_store(root: Path, processed_dir: Path) -> StandinStore:
    cfg = registry_config(root)
    good = log_standin(cfg, train_standin(processed_dir, steps=60), processed_dir, "good")
    bad = log_standin(cfg, train_standin(processed_dir, steps=3, seed=1), processed_dir, "bad")
    assert good.test_acc > bad.test_acc + 0.1, (good, bad)  # the stand-ins really differ
    return StandinStore(root=root, good=good, bad=bad)


def client_for(store: Path) -> MlflowClient:
    return configure_mlflow(registry_config(store))
