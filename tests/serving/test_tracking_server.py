"""End to end against a real ``mlflow server`` process: log, register + gate, serve over HTTP.

The served app is started as its real entrypoint (``python -m mnist_mlops.serve
registry=server``), so the Hydra config, settings hand-over and uvicorn launch are covered.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from model_standins import log_standin, train_standin
from omegaconf import OmegaConf
from support.processes import free_port, stop_process_group, wait_for_http

from mnist_mlops.register import register
from mnist_mlops.tracking.registry import alias_version

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def _server(args: list[str], ready_url: str, log: Path, **popen) -> Iterator[None]:
    """Run ``args`` in its own process group until the block ends; fail the test with the
    server's log if it does not answer ``ready_url`` within two minutes."""
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115
        start_new_session=True,
        **popen,
    )
    try:
        try:
            wait_for_http(ready_url, process, timeout=120)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}:\n{log.read_text()}")
        yield
    finally:
        stop_process_group(process)


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _server(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        f"{url}/health",
        tmp_path / "server.log",
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    ):
        yield url


@pytest.mark.slow  # two server processes plus model transfers over HTTP: ~1 min on 2 cores
def test_register_and_serve_through_a_tracking_server(
    tracking_server, synthetic_processed_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    registry_cfg = OmegaConf.create(
        {
            "tracking_uri": tracking_server,
            "artifact_location": None,
            "experiment_name": "mnist",
            "model_name": "mnist-classifier",
            "champion_alias": "production",
            "challenger_alias": "staging",
            # a stand-in, not a real model: no accuracy floor (tested in tests/registry)
            "gate": {"alpha": 0.05, "min_effect": 0.001, "min_accuracy": 0.0},
        }
    )
    logged = log_standin(
        registry_cfg, train_standin(synthetic_processed_dir, steps=40), synthetic_processed_dir, "s"
    )
    cfg = OmegaConf.create(
        {
            "registry": registry_cfg,
            "run_id": None,
            "run_file": None,
            "selection": {"metric": "val/acc", "mode": "max", "selected": "val/acc_selected"},
            "eval_split": "test",
            "eval_split_dir": str(synthetic_processed_dir / "test"),
            "report_path": str(tmp_path / "promotion.json"),
        }
    )
    decision = register(cfg)
    assert decision.promoted and decision.challenger_run_id == logged.run_id
    client = mlflow.MlflowClient(tracking_server)
    assert alias_version(client, "mnist-classifier", "production") == decision.challenger_version

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _server(
        [
            sys.executable,
            "-m",
            "mnist_mlops.serve",
            "registry=server",
            f"server.port={port}",
            f"serving.prediction_log_dir={tmp_path}/predictions",
            "serving.poll_interval_s=0",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        f"{url}/ready",
        tmp_path / "app.log",
        cwd=ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_server},
    ):
        model = httpx.get(f"{url}/model").json()
        assert model["source"] == "registry"
        assert model["version"] == decision.challenger_version
        assert model["run_id"] == logged.run_id
        answer = httpx.post(f"{url}/predict", json={"pixels": [0] * 784, "scale": "0-255"})
        assert answer.status_code == 200 and len(answer.json()["probabilities"]) == 10
