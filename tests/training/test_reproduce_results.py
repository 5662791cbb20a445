"""scripts/reproduce_results.py end to end on tiny data: teachers, distilled students, table."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mnist_mlops.config import PROJECT_ROOT


@pytest.mark.slow
def test_best_then_distilled_from_their_ensemble_then_the_table(
    synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        f"data.processed_dir={synthetic_processed_dir}",
        f"paths.mlflow_dir={tmp_path / 'mlruns'}",
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "data.eval_batch_size=100",
        "backend.num_threads=1",
    ]
    output = tmp_path / "results.md"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "reproduce_results.py"),
        "--only=best",
        "--results-id=tiny",
        f"--output={output}",
        f"--sweep-root={tmp_path / 'sweeps'}",
        *(f"--override={o}" for o in overrides),
    ]
    # mlflow.set_tracking_uri() in earlier in-process tests exports MLFLOW_TRACKING_URI, which
    # would win over paths.mlflow_dir in the child; this run must use its own store
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns'}/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.results_id = 'tiny'"
    )
    teachers = sorted(r.info.run_id for r in runs if "distilled" not in r.data.params["tags"])
    students = [r for r in runs if "distilled" in r.data.params["tags"]]
    assert len(teachers) == 3 and len(students) == 3
    assert {r.data.params["seed"] for r in students} == {"1", "2", "3"}
    for student in students:  # every student learned from the ensemble of all three teachers
        assert student.data.params["model.loss._target_"].endswith("DistillationLoss")
        uris = ast.literal_eval(student.data.params["model.loss.teacher.model_uri"])
        assert sorted(uri.split("/")[1] for uri in uris) == teachers
        assert student.data.params["trainer.recalibrate_bn"] == "True"

    table = output.read_text()
    assert "`experiment=best`, per seed" in table and "`experiment=best_distilled`" in table
    assert table.count("Mean test accuracy over 3 seed(s)") == 2
    for run in runs:
        assert f"`{run.info.run_id[:8]}`" in table
