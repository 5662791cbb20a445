"""MLflow on PostgreSQL as a team would run it (``registry=server``), all real processes.

A throwaway PostgreSQL cluster backs an ``mlflow server`` that proxies artifacts to a directory.
At the same time: two training runs log to it, a serving process polls the production alias,
and the best run is registered through the promotion gate. Then the MLflow server is restarted
and everything must still be there: runs and metrics, versions, aliases, artifacts, and the
serving process keeps answering with the same model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from deploy_helpers import mlflow_server
from mlflow import MlflowClient
from support.processes import free_port, stop_process_group, wait_for_http

from mnist_mlops.data.splits import load_split
from mnist_mlops.tracking.registry import alias_version

ROOT = Path(__file__).resolve().parents[2]
MODEL = "mnist-classifier"


def _train_command(processed: Path, out: Path, seed: int) -> list[str]:
    """A short, non-debug training run (debug runs are never registered) against the server."""
    return [
        sys.executable,
        "-m",
        "mnist_mlops.train",
        "registry=server",
        "callbacks=none",
        f"seed={seed}",
        "trainer.epochs=1",
        "trainer.device=cpu",
        "trainer.limit_train_batches=8",
        "backend.num_threads=1",
        f"data.processed_dir={processed}",
        f"paths.log_dir={out}",
        f"report_dir={out}/reports",
        f"hydra.run.dir={out}/hydra",
    ]


@pytest.mark.slow  # PostgreSQL + MLflow server + 2 trainings + serving at once: ~2 min, 2 cores
def test_concurrent_runs_register_serve_and_survive_a_server_restart(
    postgres, synthetic_processed_dir, tmp_path
):
    port, artifacts, log = free_port(), tmp_path / "artifacts", tmp_path / "mlflow.log"
    test_digit = load_split(synthetic_processed_dir / "test", limit=1).images[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    with mlflow_server(postgres.uri, artifacts, port, log) as url:
        # the API first: no model yet, so alive but not ready
        serve_port = free_port()
        serve_url = f"http://127.0.0.1:{serve_port}"
        serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
        serving = subprocess.Popen(
            [sys.executable, "-m", "mnist_mlops.serve", "registry=server"]
            + [f"server.port={serve_port}", "server.workers=1", "serving.poll_interval_s=1"]
            + [f"serving.prediction_log_dir={tmp_path}/predictions"]
            + [f"hydra.run.dir={tmp_path}/serve-hydra"],
            cwd=ROOT,
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_http(f"{serve_url}/health", serving, timeout=180)
            assert httpx.get(f"{serve_url}/ready").status_code == 503

            # two training runs logging to a fresh server at once (the experiment is created)
            trainings = [
                subprocess.Popen(
                    _train_command(synthetic_processed_dir, tmp_path / f"train{seed}", seed),
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"train{seed}.log", "w"),  # noqa: SIM115
                )
                for seed in (1, 2)
            ]
            for seed, process in zip((1, 2), trainings, strict=True):
                assert process.wait(timeout=600) == 0, (tmp_path / f"train{seed}.log").read_text()

            client = MlflowClient(url, registry_uri=url)
            experiment = client.get_experiment_by_name("mnist")
            runs = client.search_runs([experiment.experiment_id])
            assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
            for run in runs:
                assert {"train/loss", "val/acc", "test/acc"} <= set(run.data.metrics)
                # artifacts went through the server's proxy into its artifacts destination
                assert run.info.artifact_uri.startswith("mlflow-artifacts:")
            assert any(artifacts.rglob("MLmodel")), "model files are in the proxied store"

            # register the best run through the gate (the floor lowered: tiny synthetic runs)
            register = subprocess.run(
                [sys.executable, "-m", "mnist_mlops.register", "registry=server"]
                + [
                    "registry.gate.min_accuracy=0.0",
                    f"data.processed_dir={synthetic_processed_dir}",
                ]
                + [f"report_path={tmp_path}/promotion.json", f"hydra.run.dir={tmp_path}/reg"]
                + [f"paths.log_dir={tmp_path}/reg-out"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert register.returncode == 0, register.stderr[-5000:]
            version = alias_version(client, MODEL, "production")
            assert version is not None
            served_run = client.get_model_version(MODEL, version).run_id
            assert served_run in {r.info.run_id for r in runs}

            # the polling API picks the new champion up by itself
            deadline = time.monotonic() + 120
            while httpx.get(f"{serve_url}/ready").status_code != 200:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-5000:]
                time.sleep(1)
            assert httpx.get(f"{serve_url}/model").json()["version"] == version
            digit = {"pixels": test_digit.tolist(), "scale": "0-255"}
            first = httpx.post(f"{serve_url}/predict", json=digit)
            assert first.status_code == 200, first.text

            before = {
                "runs": {r.info.run_id: r.data.metrics for r in runs},
                "versions": {v.version for v in client.search_model_versions(f"name='{MODEL}'")},
                "aliases": client.get_registered_model(MODEL).aliases,
            }
        except BaseException:
            stop_process_group(serving)
            raise

    # the MLflow server is down: serving keeps its loaded model
    try:
        assert httpx.get(f"{serve_url}/ready").status_code == 200
        with mlflow_server(postgres.uri, artifacts, port, log) as url:
            client = MlflowClient(url, registry_uri=url)
            experiment = client.get_experiment_by_name("mnist")
            after_runs = client.search_runs([experiment.experiment_id])
            assert {r.info.run_id: r.data.metrics for r in after_runs} == before["runs"]
            versions = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
            assert versions == before["versions"]
            assert client.get_registered_model(MODEL).aliases == before["aliases"]
            # the artifacts still download through the restarted server, and load as a model
            # resolved through this server's registry (a models:/ URI alone would go through
            # MLflow's process-wide registry URI, which earlier in-process tests may have set)
            local = mlflow.artifacts.download_artifacts(
                client.get_model_version_download_uri(MODEL, version),
                dst_path=str(tmp_path / "download"),
                tracking_uri=url,
            )
            assert (Path(local) / "MLmodel").is_file()
            assert httpx.get(f"{serve_url}/model").json()["version"] == version
            answer = httpx.post(f"{serve_url}/predict", json=digit)
            assert answer.status_code == 200
            assert answer.json()["probabilities"] == first.json()["probabilities"]
    finally:
        stop_process_group(serving)
