"""Running the train entrypoint as a user does, for the distributed-backend tests.

Every training run here is a real ``python -m mnist_mlops.train`` subprocess: ``backend=orca``
must own its JVM (BigDL puts its jars on the driver class path at start), and the test session
may already hold a shared SparkSession.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 420


@dataclass
class TrainRun:
    """One finished ``python -m mnist_mlops.train`` subprocess and where it logged."""

    returncode: int
    output: str
    tracking_uri: str

    def runs(self) -> list[Run]:
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.search_runs(search_all_experiments=True, output_format="list")

    def only_run(self) -> Run:
        runs = self.runs()
        assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
        return runs[0]


def train_cli(
    workdir: Path, processed_dir: Path, overrides: Sequence[str], env: dict[str, str] | None = None
) -> TrainRun:
    """Run the train entrypoint on ``processed_dir`` with its own MLflow store under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir}/mlruns/mlflow.db"
    command = [
        sys.executable,
        "-m",
        "mnist_mlops.train",
        f"data.processed_dir={processed_dir}",
        f"paths.mlflow_dir={workdir}/mlruns",
        f"paths.log_dir={workdir}/outputs",
        f"hydra.run.dir={workdir}/outputs/run",
        "callbacks=none",
        "trainer.device=cpu",
        *overrides,
    ]
    full_env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PYTHONPATH": str(REPO_ROOT),
        **(env or {}),
    }
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return TrainRun(done.returncode, done.stdout + done.stderr, tracking_uri)
