"""A training run's record as one JSON file, for machines without MLflow (``logger=json``).

Why: a lent GPU box has torch and Hydra but no MLflow, no Spark and no network; the results page
still needs each run's parameter count, per-epoch metrics, the selected epoch, the kept model's
re-validated val scores, its test scores, epoch times and hardware. This logger writes them to
one file (rewritten atomically after every epoch, so a stopped run leaves what it had), and
``scripts/reproduce_results.py --records`` turns such files into the results table. It imports
nothing beyond the training core, so ``python -m mnist_mlops.train logger=json`` runs anywhere
torch and Hydra do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from mnist_mlops.config import LOCATION_MARKERS, resolved_once
from mnist_mlops.data.manifest import recorded_dataset_hash
from mnist_mlops.models.convnet import count_parameters
from mnist_mlops.training.callbacks import Callback, TrainingInterrupted
from mnist_mlops.utils.atomic import atomic_write_json
from mnist_mlops.utils.hardware import hardware_description

if TYPE_CHECKING:
    from mnist_mlops.training.module import ClassifierModule
    from mnist_mlops.training.trainer import Trainer


class JsonFileLogger(Callback):
    """Writes one run's record (config, params, per-epoch and final metrics, status) to ``path``."""

    def __init__(
        self, path: str | Path, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.run_name = run_name
        self.run_id = uuid.uuid4().hex
        self.model_uri: str | None = None  # nothing is logged as a servable model here
        self.record: dict[str, Any] = {
            "run_id": self.run_id,
            "run_name": run_name,
            "status": "RUNNING",
            "tags": dict(tags or {}),
            "history": [],
            "metrics": {},
        }

    def _write(self) -> None:
        """Replace the file in one rename: a reader never sees half a record."""
        atomic_write_json(self.path, self.record, indent=1, default=str)

    @contextmanager
    def run_context(self, cfg: DictConfig) -> Iterator[str]:
        """Record FINISHED, KILLED (stopped on purpose) or FAILED (crashed), as MLflow would."""
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        # locations stay symbolic: a record committed under docs/ names no machine's paths
        self.record["config"] = resolved_once(job, keep_symbolic=LOCATION_MARKERS)
        self.record["seed"] = cfg.get("seed")
        self.record["config_tags"] = list(cfg.get("tags") or [])
        self.record["data_manifest_hash"] = recorded_dataset_hash(cfg.data.processed_dir)
        self.record["started"] = time.time()
        self._write()
        status = "FAILED"
        try:
            yield self.run_id
            status = "FINISHED"
        except TrainingInterrupted:
            status = "KILLED"
            raise
        finally:
            self.record["status"] = status
            self.record["ended"] = time.time()
            self._write()

    def on_fit_start(self, trainer: Trainer, module: ClassifierModule) -> None:
        counts = count_parameters(module.net)
        self.record.update(
            {
                "model": module.name,
                "params_total": counts["total"],
                "params_trainable": counts["trainable"],
                "device": str(trainer.device),
                "precision": trainer.precision,
                "hardware": hardware_description(trainer.device),
                "backend": getattr(trainer.backend, "name", type(trainer.backend).__name__),
            }
        )
        self._write()

    def on_validation_epoch_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        self.record["history"].append({k: float(v) for k, v in metrics.items()})
        self._write()

    def on_test_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        self.record["metrics"] = {k: float(v) for k, v in metrics.items()}
        self.record["best_epoch"] = trainer.best_epoch  # 0-based, like MLflow's best_epoch
        self._write()
