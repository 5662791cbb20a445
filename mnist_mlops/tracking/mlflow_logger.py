"""Everything a training run records in MLflow, as one trainer callback.

The run lifecycle lives here too (``run_context``), so a crash marks the run FAILED, a pruned
sweep trial marks it KILLED, and nothing is left RUNNING or empty. This is the only training
code that imports MLflow; the trainer reaches it through the callback hooks.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from mnist_mlops.config import PROJECT_ROOT, resolved_once
from mnist_mlops.data.manifest import recorded_dataset_hash
from mnist_mlops.models.convnet import count_parameters
from mnist_mlops.models.inference import MODEL_ARTIFACT, InferenceModel
from mnist_mlops.tracking.plots import (
    per_class_accuracy,
    plot_confusion_matrix,
    plot_learning_curves,
)
from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment
from mnist_mlops.training.callbacks import Callback, TrainingInterrupted
from mnist_mlops.utils.hardware import hardware_description

if TYPE_CHECKING:
    from mnist_mlops.training.module import ClassifierModule
    from mnist_mlops.training.trainer import Trainer

_MAX_PARAM_LENGTH = 6000  # MLflow's limit for one param value


def flatten_config(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """``{"model.optimizer.lr": "0.01", ...}`` from a resolved config (lists kept as text).

    Each group is logged once: a reference to a whole group (``logger.registry: ${registry}``)
    is logged as that reference, not as a second copy of the group's keys.
    """
    if isinstance(cfg, DictConfig):
        cfg = resolved_once(cfg)
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_LENGTH]
    return flat


def _git(*args: str) -> str:
    """Stdout of one git command in the project checkout; raises when git fails."""
    return subprocess.run(
        ["git", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def git_commit() -> str:
    """HEAD of the project checkout (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


class MlflowLogger(Callback):
    """Logs params, per-epoch metrics, test metrics, artifacts and the served model of one run."""

    def __init__(
        self,
        registry: DictConfig,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        log_model: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.log_model = log_model
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self.model_uri: str | None = None
        self._config: DictConfig | None = None

    @contextmanager
    def run_context(self, cfg: DictConfig) -> Iterator[str]:
        """Start the run; end it FINISHED, KILLED (stopped on purpose) or FAILED (crashed)."""
        configure_mlflow(self.registry)
        experiment_id = ensure_experiment(self.registry)
        self._config = cfg
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=self.run_name,
            parent_run_id=self.parent_run_id or None,
            tags=self.tags or None,
        )
        self.run_id = run.info.run_id
        try:
            yield self.run_id
        except TrainingInterrupted:
            mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status="FINISHED")

    # --- callback hooks ---------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, module: ClassifierModule) -> None:
        if self._config is not None:
            # the job's own config; Hydra's runtime node is present only under the compose API
            cfg = OmegaConf.masked_copy(self._config, [k for k in self._config if k != "hydra"])
            params = flatten_config(cfg)
            items = sorted(params.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 per batch
                mlflow.log_params(dict(items[start : start + 100]))
            mlflow.set_tag("data_manifest_hash", recorded_dataset_hash(cfg.data.processed_dir))
            # resolved, with each group once (a reference stays ``${registry}``), as in params
            mlflow.log_text(OmegaConf.to_yaml(resolved_once(cfg)), "config/config.yaml")
        counts = count_parameters(module.net)
        mlflow.log_params(
            {
                "model/params_total": counts["total"],
                "model/params_trainable": counts["trainable"],
                "model/params_non_trainable": counts["total"] - counts["trainable"],
            }
        )
        mlflow.set_tags(
            {
                "git_commit": git_commit(),
                "backend": getattr(trainer.backend, "name", type(trainer.backend).__name__),
                "device": str(trainer.device),
                "precision": trainer.precision,  # resolved: trainer.precision=auto is in the params
                "hardware": hardware_description(trainer.device),
                "model": module.name,
            }
        )
        mlflow.log_text(f"{module.net}\n\nparameters: {counts}\n", "model_summary.txt")

    def on_validation_epoch_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        mlflow.log_metrics(metrics, step=trainer.current_epoch)

    def on_test_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        mlflow.log_metrics(metrics)
        if trainer.best_epoch is not None:
            mlflow.log_metric("best_epoch", trainer.best_epoch)
        confusion = module.confusion_matrix.numpy()
        with tempfile.TemporaryDirectory() as tmp:
            tmp_dir = Path(tmp)
            mlflow.log_artifact(
                str(plot_learning_curves(trainer.history, tmp_dir / "learning_curves.png")), "plots"
            )
            mlflow.log_artifact(
                str(plot_confusion_matrix(confusion, tmp_dir / "confusion_matrix.png")), "plots"
            )
        mlflow.log_dict(per_class_accuracy(confusion), "metrics/per_class_accuracy.json")
        mlflow.log_dict({"confusion_matrix": confusion.tolist()}, "metrics/confusion_matrix.json")
        if self.log_model:
            assert trainer.datamodule is not None
            example = trainer.datamodule.splits["test"].images[:4].cpu()
            # the normalisation the batches were built with (the data manifest's): served as trained
            normalization = (trainer.datamodule.mean, trainer.datamodule.std)
            self.model_uri = log_inference_model(module.net, example, normalization)


def log_inference_model(
    net: torch.nn.Module,
    example_images: torch.Tensor,
    normalization: tuple[float, float] | None = None,
) -> str:
    """Log ``InferenceModel(net)`` as the run's ``model`` and prove it loads and predicts a batch.

    ``normalization``: the (mean, std) ``net`` was trained under (its data module's, read from
    the data manifest); ``None`` means MNIST's constants.

    ``example_images``: uint8 (N, 28, 28); the logged input example is their float32 [0, 1]
    form (N, 1, 28, 28), the served contract. Returns the ``runs:/<run_id>/model`` URI.
    """
    plain = copy.deepcopy(net).cpu().to(memory_format=torch.contiguous_format)
    served = (
        InferenceModel(plain, *normalization) if normalization else InferenceModel(plain)
    ).eval()
    example = (example_images.unsqueeze(1).float() / 255.0).numpy().astype(np.float32)
    with torch.no_grad():
        expected = served(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, expected)
    info = mlflow.pytorch.log_model(
        served,
        name=MODEL_ARTIFACT,
        signature=signature,
        input_example=example[:1],
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        # MLflow 3.17's default "pt2" format traces a torch.export graph whose batch size is
        # fixed to the input example's (1), and loads back a GraphModule, not an InferenceModel
        serialization_format="pickle",
    )
    run_id = mlflow.active_run().info.run_id
    uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    loaded = mlflow.pytorch.load_model(uri, map_location="cpu")
    with torch.no_grad():
        got = loaded(torch.from_numpy(example)).numpy()
    if not isinstance(loaded, InferenceModel) or not np.allclose(got, expected, atol=1e-5):
        raise RuntimeError(f"model logged at {uri} predicts differently after loading it back")
    mlflow.set_tag("model_uri", uri)
    mlflow.set_tag("logged_model_id", info.model_id)
    return uri
