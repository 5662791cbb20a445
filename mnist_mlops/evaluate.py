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
from typing import Any

import hydra
import mlflow
import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.splits import load_split, split_dir
from mnist_mlops.tracking.mlflow_logger import MODEL_ARTIFACT
from mnist_mlops.tracking.plots import per_class_accuracy, plot_confusion_matrix
from mnist_mlops.tracking.setup import configure_mlflow

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
    predictions, losses = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).float().div_(255).unsqueeze(1)
            y = torch.from_numpy(labels[start : start + batch_size])
            log_probs = model(x)
            losses.append(F.nll_loss(log_probs, y, reduction="sum").item())
            predictions.append(log_probs.argmax(dim=1).numpy())
    predicted = np.concatenate(predictions)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "acc": float((predicted == labels).mean()),
        "loss": float(sum(losses) / len(labels)),
        "confusion": confusion,
        "predicted": predicted,
    }


def run(cfg: DictConfig) -> dict[str, Any]:
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / "confusion.csv").open("w", newline="") as handle:
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
    run(cfg)


if __name__ == "__main__":
    main()
