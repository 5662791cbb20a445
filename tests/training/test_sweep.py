"""Optuna sweeps through the project's own Hydra sweeper plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_mlops.config import PROJECT_ROOT
from mnist_mlops.train import train
from mnist_mlops.training.callbacks import TrainingInterrupted
from mnist_mlops.training.callbacks.pruning import OptunaPruning


def run_sweep(
    tmp_path: Path, processed_dir: Path, n_trials: int, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "mnist_mlops.train",
        "-m",
        "hparams_search=optuna",
        f"data.processed_dir={processed_dir}",
        f"paths.log_dir={tmp_path}",
        f"paths.mlflow_dir={tmp_path}/mlruns",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.study_name=test-study",
        "callbacks.progress_bar=null",
        "trainer.epochs=2",
        "trainer.device=cpu",
        "trainer.limit_train_batches=3",
        "logger.log_model=false",
        "backend.num_threads=1",
        *extra,
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db"}
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_trial_sweep_resumes_from_its_storage_prunes_and_nests_runs(
    tmp_path: Path, synthetic_processed_dir: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/sweeps/optuna.db"
    run_sweep(tmp_path, synthetic_processed_dir, n_trials=2)
    study = optuna.load_study(study_name="test-study", storage=storage)
    first = [(t.number, t.state, t.params) for t in study.trials]
    assert [n for n, _, _ in first] == [0, 1]
    assert all(state == optuna.trial.TrialState.COMPLETE for _, state, _ in first)

    # resume for one more trial, with a pruner that prunes everything after its first epoch
    always_prune = (  # replace the configured pruner: null first, then the new node
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
    )
    run_sweep(tmp_path, synthetic_processed_dir, n_trials=3, extra=always_prune)
    study = optuna.load_study(study_name="test-study", storage=storage)
    assert len(study.trials) == 3
    assert [(t.number, t.state, t.params) for t in study.trials[:2]] == first  # kept, not rerun
    assert study.trials[2].state == optuna.trial.TrialState.PRUNED
    assert list(study.trials[2].intermediate_values) == [0]
    assert (tmp_path / "sweeps" / "test-study" / "optimization_results.yaml").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "optuna"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(trials) == 3
    assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED", "KILLED"]
    assert "best_value" in parents[0].data.metrics


def test_pruned_trial_stops_training_and_is_marked_killed(
    cfg_train: DictConfig, mlflow_db: str, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    always_prune = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never >= 2
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    trial = study.ask()
    with open_dict(cfg_train):
        cfg_train.trainer.epochs = 3
        cfg_train.callbacks = OmegaConf.create(
            {
                "pruning": {
                    "_target_": "mnist_mlops.training.callbacks.pruning.OptunaPruning",
                    "storage": storage,
                    "study_name": "prune",
                    "trial_number": trial.number,
                    "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0},
                }
            }
        )
    # Hydra's plugin scan re-executes plugin modules, so check the classes the sweeper
    # and the entrypoint rely on rather than this module's PrunedTrial object
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1") as err:
        train(cfg_train)
    assert isinstance(err.value, TrainingInterrupted)
    client = MlflowClient(tracking_uri=mlflow_db)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1  # stopped after epoch 1
    assert study.trials[0].intermediate_values.keys() == {0}
    assert OptunaPruning(None, "x", None, always_prune).trial is None  # outside a sweep: no-op


def test_sweep_without_a_search_space_fails_clearly(
    tmp_path: Path, synthetic_processed_dir: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_mlops.train",
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.params=null",
            f"data.processed_dir={synthetic_processed_dir}",
            f"paths.log_dir={tmp_path}",
            f"paths.mlflow_dir={tmp_path}/m",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "empty search space" in result.stderr
