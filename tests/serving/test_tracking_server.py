"""End to end against a real ``mlflow server`` process: log, register + gate, serve over HTTP.

The served app is started as its real entrypoint (``python -m mnist_mlops.serve
registry=server``), so the Hydra config, settings hand-over and uvicorn launch are covered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import pytest
from model_standins import log_standin, train_standin
from omegaconf import OmegaConf
from serving_helpers import free_port, wait_until

from mnist_mlops.register import register
from mnist_mlops.tracking.registry import alias_version

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
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
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: _up(f"{url}/health"), timeout=120, interval=0.5):
            pytest.fail("mlflow server did not start:\n" + (tmp_path / "server.log").read_text())
        yield url
    finally:
        _stop(process)


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
            "promotion_margin": 0.0005,
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
            "selection_metric": "val/acc_best",
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
    app = subprocess.Popen(
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
        cwd=ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_server},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "app.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: _up(f"{url}/ready"), timeout=120, interval=0.5):
            pytest.fail("serve did not become ready:\n" + (tmp_path / "app.log").read_text())
        model = httpx.get(f"{url}/model").json()
        assert model["source"] == "registry"
        assert model["version"] == decision.challenger_version
        assert model["run_id"] == logged.run_id
        answer = httpx.post(f"{url}/predict", json={"pixels": [0] * 784, "scale": "0-255"})
        assert answer.status_code == 200 and len(answer.json()["probabilities"]) == 10
    finally:
        _stop(app)
