"""Pointing MLflow at the configured store; the one place that knows tracking URIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def configure_mlflow(registry_cfg: Any) -> MlflowClient:
    """Set tracking and registry URIs from the ``registry`` config group; return a client.

    For the embedded SQLite store the database's directory is created first, so a fresh
    clone works from any working directory.
    """
    uri = str(registry_cfg.tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(registry_cfg: Any, name: str | None = None) -> str:
    """Experiment id for ``name`` (default: the configured one), created with the artifact root."""
    name = name or str(registry_cfg.experiment_name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = registry_cfg.get("artifact_location")
    if location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        # two runs starting at once on a fresh tracking server: the other one created it first
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
