"""The DVC evaluate stage scores the logged model exactly as training measured it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.evaluate import run as evaluate
from mnist_mlops.train import train


def test_evaluate_reproduces_the_runs_test_accuracy_through_the_served_model(
    cfg_train: DictConfig, mlflow_db: str, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    with open_dict(cfg_train):
        cfg_train.report_dir = str(reports / "train")
    trained = train(cfg_train)

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg_eval = compose(
            config_name="eval",
            overrides=[
                f"data.processed_dir={cfg_train.data.processed_dir}",
                f"paths.reports_dir={reports}",
                f"registry.tracking_uri={mlflow_db}",
            ],
        )
    metrics = evaluate(cfg_eval)

    assert metrics["run_id"] == trained["run_id"]
    assert metrics["acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(trained["test/loss"], rel=1e-4)
    saved = json.loads((reports / "eval" / "metrics.json").read_text())
    assert set(saved["per_class_acc"]) == {str(d) for d in range(10)}
    rows = (reports / "eval" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + metrics["images"]


def test_evaluate_without_a_train_stage_says_what_to_run(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg_eval = compose(config_name="eval", overrides=[f"paths.reports_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="run the train stage first"):
        evaluate(cfg_eval)
