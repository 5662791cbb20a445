"""The entrypoint end to end on tiny synthetic data: what one run must record in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import DictConfig, open_dict

from mnist_mlops.config import PROJECT_ROOT
from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.train import train
from mnist_mlops.training.precision import resolve_precision

EPOCH_METRICS = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "lr",
    "epoch_time_s",
}


def test_one_epoch_run_logs_params_metrics_artifacts_and_a_loadable_model(
    cfg_train: DictConfig, mlflow_db: str, tmp_path: Path
) -> None:
    with open_dict(cfg_train):
        cfg_train.report_dir = str(tmp_path / "reports")
    metrics = train(cfg_train)

    client = MlflowClient(tracking_uri=mlflow_db)
    run = client.get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model/params_total"] == "13808"
    assert run.data.params["model/params_trainable"] == "13808"
    assert run.data.params["model.optimizer.lr"] == "0.01"
    assert run.data.params["data.batch_size"] == "64"
    assert EPOCH_METRICS | {"test/acc", "test/loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    for tag in ("git_commit", "data_manifest_hash", "backend", "device", "precision"):
        assert run.data.tags[tag]
    assert run.data.tags["backend"] == "local" and run.data.tags["device"] == "cpu"
    assert run.data.tags["precision"] == resolve_precision("auto", torch.device("cpu"))

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path
        for d in ("config", "plots", "metrics")
        for a in client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "config/config.yaml",
        "model_summary.txt",
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "metrics/per_class_accuracy.json",
    } <= artifacts

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model", map_location="cpu")
    assert isinstance(model, InferenceModel)
    with torch.no_grad():
        out = model(torch.rand(7, 1, 28, 28))
    assert out.shape == (7, 10)
    np.testing.assert_allclose(out.exp().sum(dim=1).numpy(), 1.0, rtol=1e-5)

    saved = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    assert json.loads((tmp_path / "reports" / "run.json").read_text())["run_id"] == run.info.run_id
    assert (tmp_path / "reports" / "learning_curve.csv").read_text().startswith("epoch,")


def test_same_seed_gives_the_same_metrics(cfg_train: DictConfig) -> None:
    with open_dict(cfg_train):
        cfg_train.logger = None
        cfg_train.trainer.epochs = 2
        cfg_train.trainer.deterministic = True
    first, second = train(cfg_train), train(cfg_train)
    for key in ("train/loss", "val/loss", "val/acc", "test/acc", "test/loss"):
        assert first[key] == second[key], key
    with open_dict(cfg_train):
        cfg_train.seed = cfg_train.seed + 1
    assert train(cfg_train)["train/loss"] != first["train/loss"]


def test_a_crash_marks_the_run_failed(cfg_train: DictConfig, mlflow_db: str) -> None:
    with open_dict(cfg_train):
        cfg_train.data.extra_train_dirs = ["/nonexistent/feedback"]
    with pytest.raises(FileNotFoundError, match="/nonexistent/feedback"):
        train(cfg_train)
    client = MlflowClient(tracking_uri=mlflow_db)
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=0", "trainer.epochs must be a positive integer, got 0"),
        ("data.batch_size=-3", "data.batch_size must be a positive integer, got -3"),
        ("trainer.device=tpu", "trainer.device must be one of"),
        ("trainer.monitor_mode=median", "trainer.monitor_mode must be 'max' or 'min'"),
    ],
)
def test_bad_value_fails_with_a_message_naming_it(
    cfg_train: DictConfig, override: str, message: str
) -> None:
    key, value = override.split("=")
    with open_dict(cfg_train):
        cfg_train.logger = None
        node, leaf = key.rsplit(".", 1)
        cfg_train[node][leaf] = int(value) if value.lstrip("-").isdigit() else value
    with pytest.raises(Exception) as err:  # noqa: PT011 - the message is what matters
        train(cfg_train)
    assert message in str(err.value)


def test_unknown_model_name_fails_on_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mnist_mlops.train", "model=resnet_v9", f"paths.log_dir={tmp_path}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "resnet_v9" in result.stderr and "gap_v8" in result.stderr  # lists the valid ones


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=1,2,3"]], ids=["run", "multirun"])
def test_sigterm_closes_the_run_as_killed_and_starts_no_other(
    tmp_path: Path, synthetic_processed_dir: Path, sweep: list[str]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # migrate the store now, not concurrently with the child
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_mlops.train",
            *sweep,
            "callbacks=none",
            "trainer.epochs=500",
            "trainer.device=cpu",
            f"data.processed_dir={synthetic_processed_dir}",
            f"paths.log_dir={tmp_path}",
            f"paths.mlflow_dir={tmp_path}/mlruns",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        runs: list = []
        while not runs and time.monotonic() < deadline and process.poll() is None:
            time.sleep(1)
            experiment = client.get_experiment_by_name("mnist")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            runs = [r for r in runs if r.data.metrics.get("val/acc") is not None]
        assert runs, "the run never logged an epoch: " + (
            process.stderr.read()[-3000:] if process.poll() is not None else "still running"
        )
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
    # a multirun stops too: no later job of the sweep starts a run
    experiment = client.get_experiment_by_name("mnist")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [
        runs[0].info.run_id
    ]
