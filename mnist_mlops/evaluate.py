"""DVC evaluate stage: score the model the train stage logged, as it will be served.

    python -m mnist_mlops.evaluate [run_file=reports/train/run.json] [split=test]

Loads ``runs:/<run_id>/model`` from MLflow (the run id comes from the train stage's
``run.json``), feeds it float32 [0, 1] images like the serving API does, and writes
``<output_dir>/metrics.json`` (accuracy, NLL loss, per-class accuracy), ``confusion.csv``
(one ``actual,predicted`` row per image, for DVC's confusion template) and
``confusion_matrix.png``. The numbers are also logged to the run as ``eval/*`` metrics, so a
model that changed between logging and serving shows up as ``eval/acc != test/acc``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.exit_codes import bad_input_exits

if TYPE_CHECKING:  # torch and MLflow load inside the functions: --help answers without them
    import numpy as np
    import torch

log = logging.getLogger(__name__)


def read_run_id(run_file: Path) -> str:
    try:
        run_id = json.loads(run_file.read_text())["run_id"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{run_file} not found: run the train stage first (python -m mnist_mlops.train "
            f"report_dir={run_file.parent})"
        ) from None
    if not run_id:
        raise ValueError(f"{run_file} names no MLflow run (was training run with logger=null?)")
    return str(run_id)


def evaluate_model(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> dict[str, Any]:
    """Accuracy, mean NLL and the confusion matrix of a served-contract model."""
    import numpy as np

    from mnist_mlops.models.scoring import score_images

    scores = score_images(model, images, batch_size, labels=labels)
    predicted = scores.predicted
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "acc": float((predicted == labels).mean()),
        "loss": float(scores.nll_sum / len(labels)),
        "confusion": confusion,
        "predicted": predicted,
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score the run named in ``cfg.run_file`` on ``cfg.split``; write and log the metrics."""
    import mlflow

    from mnist_mlops.data.splits import load_split, split_dir
    from mnist_mlops.models.inference import MODEL_ARTIFACT
    from mnist_mlops.tracking.plots import per_class_accuracy, plot_confusion_matrix
    from mnist_mlops.tracking.setup import configure_mlflow
    from mnist_mlops.utils.atomic import atomic_open, atomic_write_json

    configure_mlflow(cfg.registry)
    run_id = read_run_id(Path(cfg.run_file))
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/{MODEL_ARTIFACT}", map_location="cpu")
    data = load_split(split_dir(cfg.data.processed_dir, cfg.split))
    result = evaluate_model(model, data.images, data.labels, int(cfg.batch_size))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "run_id": run_id,
        "split": str(cfg.split),
        "images": len(data),
        "acc": result["acc"],
        "loss": result["loss"],
        "per_class_acc": per_class_accuracy(result["confusion"]),
    }
    atomic_write_json(out / "metrics.json", metrics)
    with atomic_open(out / "confusion.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(data.labels.tolist(), result["predicted"].tolist(), strict=True))
    plot_confusion_matrix(result["confusion"], out / "confusion_matrix.png", title=str(cfg.split))
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "eval/acc", result["acc"])
    client.log_metric(run_id, "eval/loss", result["loss"])
    log.info("run %s on %s: acc=%.4f loss=%.4f", run_id, cfg.split, result["acc"], result["loss"])
    return metrics


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with bad_input_exits("evaluate"):
        run(cfg)


if __name__ == "__main__":
    main()
