"""The built images, run for real (``.ci/run`` builds them; Docker must be running).

The serving container gets a model trained on real MNIST digits and registered (through the
gate) on an MLflow server backed by PostgreSQL, and answers real test digits exactly as the same
model does in this process. It runs as non-root, carries no Spark and no compiler, reports
healthy only once ready, and stops cleanly on ``docker stop``. The pipeline image has Java,
Spark, DVC and the MLflow server with its PostgreSQL driver. Compose files validate for CPU
and GPU. Without Docker (or the images) these tests fail in CI and skip elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from deploy_helpers import mlflow_server, require
from mlflow import MlflowClient
from model_standins import log_standin, train_standin
from omegaconf import OmegaConf
from support.processes import free_port

from mnist_mlops.data.idx import load_raw_mnist
from mnist_mlops.data.splits import arrays_to_table
from mnist_mlops.tracking.registry import alias_version

ROOT = Path(__file__).resolve().parents[2]
SERVING_IMAGE = os.environ.get("MNIST_SERVING_IMAGE", "mnist-mlops-serving:ci")
PIPELINE_IMAGE = os.environ.get("MNIST_PIPELINE_IMAGE", "mnist-mlops-pipeline:ci")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


def require_image(image: str) -> None:
    if shutil.which("docker") is None:
        require("Docker", "the docker CLI is not installed (.ci/run installs docker.io)")
    if docker("info", check=False, timeout=30).returncode != 0:
        require("Docker", "the Docker daemon does not answer (.ci/run starts dockerd)")
    if docker("image", "inspect", image, check=False).returncode != 0:
        require(image, "build it first: scripts/ci/build-images.sh (run by .ci/run)")


def _real_processed_dir(raw_dir: Path, root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Real MNIST in the preprocessing layout (small slices: this tests deployment, not
    accuracy), plus real test digits no split uses, to send to the container."""
    raw = load_raw_mnist(raw_dir)
    train, test = raw["train"], raw["test"]
    slices = {
        "train": (train, slice(0, 4000)),
        "val": (train, slice(4000, 5000)),
        "test": (test, slice(0, 1000)),
        "gate": (test, slice(1000, 2000)),
    }
    for split, (source, part) in slices.items():
        images, labels = source.images[part], source.labels[part]
        ids = [f"{split}-{i:05d}" for i in range(len(labels))]
        (root / split).mkdir(parents=True)
        pq.write_table(arrays_to_table(images, labels, ids), root / split / "part-00000.parquet")
    return root, test.images[2000:2200], test.labels[2000:2200]


def _wait_ready(url: str, container: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = docker("inspect", "--format", "{{.State.Running}}", container).stdout.strip()
        if state != "true":
            logs = docker("logs", container, check=False)
            pytest.fail(f"container exited before /ready:\n{logs.stdout}{logs.stderr}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    logs = docker("logs", container, check=False)
    pytest.fail(
        f"{url}/ready not 200 within {timeout}s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
    )


@pytest.mark.slow  # PostgreSQL + MLflow server + the serving container: ~2 min on 2 cores
def test_serving_container_against_postgres_backed_mlflow(
    postgres, real_raw_dir, tmp_path, monkeypatch, request
):
    require_image(SERVING_IMAGE)
    # log_standin points this process's MLflow at the server: put it back afterwards
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    request.addfinalizer(lambda: mlflow.set_tracking_uri(tracking))
    request.addfinalizer(lambda: mlflow.set_registry_uri(registry))
    processed, digits, labels = _real_processed_dir(real_raw_dir, tmp_path / "processed")
    port = free_port()
    with mlflow_server(postgres.uri, tmp_path / "artifacts", port, tmp_path / "mlflow.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # restored after the test
        registry_cfg = OmegaConf.create(
            {
                "tracking_uri": url,
                "artifact_location": None,
                "experiment_name": "mnist",
                "model_name": "mnist-classifier",
                "champion_alias": "production",
                "challenger_alias": "staging",
            }
        )
        model = train_standin(processed, steps=150)
        logged = log_standin(registry_cfg, model, processed, "real-digits")
        register = subprocess.run(
            [sys.executable, "-m", "mnist_mlops.register", "registry=server"]
            + ["registry.gate.min_accuracy=0.8", f"data.processed_dir={processed}"]
            + [f"report_path={tmp_path}/promotion.json", f"hydra.run.dir={tmp_path}/register"],
            cwd=ROOT,
            env={**os.environ, "MLFLOW_TRACKING_URI": url},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert register.returncode == 0, register.stderr[-5000:]
        client = MlflowClient(url, registry_uri=url)
        version = alias_version(client, "mnist-classifier", "production")

        serve_port = free_port()
        serve_url = f"http://127.0.0.1:{serve_port}"
        name = f"mnist-serving-test-{serve_port}"
        docker(
            "run", "--detach", "--name", name, "--network", "host",
            "--env", f"MLFLOW_TRACKING_URI={url}",
            "--env", "MNIST_SERVE_HOST=127.0.0.1",
            "--env", f"MNIST_SERVE_PORT={serve_port}",
            SERVING_IMAGE,
        )  # fmt: skip
        try:
            _wait_ready(serve_url, name)
            assert httpx.get(f"{serve_url}/health").status_code == 200
            ready = httpx.get(f"{serve_url}/ready").json()
            assert ready["ready"] is True
            served = httpx.get(f"{serve_url}/model").json()
            assert served["version"] == version and served["run_id"] == logged.run_id

            # real test digits: the container answers what the same model answers here
            answer = httpx.post(
                f"{serve_url}/predict/batch",
                json={"images": digits.reshape(len(digits), -1).tolist(), "scale": "0-255"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            predicted = np.array(answer.json()["predicted"])
            with torch.no_grad():
                x = torch.from_numpy(np.array(digits)).float().unsqueeze(1) / 255.0
                expected = model(x).argmax(dim=1).numpy()
            assert (predicted == expected).mean() >= 0.99  # bf16 may flip a near-tie
            assert (predicted == labels).mean() >= 0.8
            one = httpx.post(
                f"{serve_url}/predict", json={"pixels": digits[0].tolist(), "scale": "0-255"}
            )
            assert one.status_code == 200 and one.json()["predicted"] == predicted[0]

            # lean and unprivileged
            assert docker("exec", name, "id", "-u").stdout.strip() != "0"
            probe = "import importlib.util as u; print([m for m in ('pyspark', 'dvc', 'pytest', "
            probe += "'bigdl', 'optuna') if u.find_spec(m)])"
            assert docker("exec", name, "python", "-c", probe).stdout.strip() == "[]"
            compilers = docker("exec", name, "sh", "-c", "command -v gcc cc g++ java", check=False)
            assert compilers.stdout.strip() == "", compilers.stdout

            # the readiness-aware HEALTHCHECK turns healthy (its first probe runs after 15 s)
            deadline = time.monotonic() + 90
            status = ""
            while time.monotonic() < deadline and status != "healthy":
                time.sleep(3)
                status = docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout
                status = status.strip()
            assert status == "healthy"

            # graceful stop: SIGTERM ends uvicorn cleanly, well before docker's SIGKILL
            started = time.monotonic()
            docker("stop", "--time", "30", name, timeout=60)
            assert time.monotonic() - started < 15
            code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            assert code == "0", docker("logs", name, check=False).stderr[-3000:]
        finally:
            docker("rm", "--force", name, check=False)


@pytest.mark.slow  # the MLflow server and a training run, both in pipeline containers: ~2 min
def test_pipeline_image_runs_the_compose_mlflow_server_and_trains_against_it(
    postgres, synthetic_processed_dir, tmp_path
):
    """The pipeline image as compose uses it: the MLflow server (PostgreSQL backend store via
    psycopg2, artifacts proxied into the image's /app/mlruns as the non-root user, the compose
    --allowed-hosts), and a training job in a second container logging to it by URL."""
    require_image(PIPELINE_IMAGE)
    # a world-readable copy: pytest's temp dirs are private to us, the container user is 10001
    processed = Path(shutil.copytree(synthetic_processed_dir, tmp_path / "processed"))
    processed.chmod(0o755)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    server_args = [
        arg
        for arg in compose["services"]["mlflow"]["command"]
        if not arg.startswith(("--backend-store-uri", "--host", "--port"))
    ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = f"mnist-serving-test-mlflow-{port}"
    docker(
        "run", "--detach", "--name", server, "--network", "host", PIPELINE_IMAGE,
        *server_args, f"--backend-store-uri={postgres.uri}", "--host=127.0.0.1", f"--port={port}",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _http_ok(f"{url}/health"):
            running = docker("inspect", "--format", "{{.State.Running}}", server).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                pytest.fail(docker("logs", server, check=False).stderr[-5000:])
            time.sleep(1)
        assert docker("exec", server, "id", "-u").stdout.strip() != "0"
        java = docker("exec", server, "java", "-version")
        assert 'version "17' in java.stderr

        training = docker(
            "run", "--rm", "--network", "host",
            "--env", f"MLFLOW_TRACKING_URI={url}",
            "--volume", f"{processed}:/data/processed:ro",
            PIPELINE_IMAGE,
            "python", "-m", "mnist_mlops.train", "registry=server", "callbacks=none",
            "trainer.epochs=1", "trainer.device=cpu", "trainer.limit_train_batches=4",
            "data.processed_dir=/data/processed",
            timeout=900,
            check=False,
        )  # fmt: skip
        assert training.returncode == 0, training.stderr[-5000:]
        client = MlflowClient(url, registry_uri=url)
        experiment = client.get_experiment_by_name("mnist")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
        # the model went through the proxy into the server container's artifact store
        files = docker("exec", server, "find", "/app/mlruns/artifacts", "-name", "MLmodel").stdout
        assert files.strip(), "no MLmodel under the proxied artifact destination"
    finally:
        docker("rm", "--force", server, check=False)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _compose_config(*files: str) -> dict:
    tool = shutil.which("docker-compose")
    command = [tool] if tool else ["docker", "compose"]
    if tool is None and docker("compose", "version", check=False).returncode != 0:
        require("docker-compose", "neither docker-compose nor the compose plugin is installed")
    args = [arg for name in files for arg in ("-f", str(ROOT / name))]
    result = subprocess.run(
        [*command, *args, "config"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_validates_cpu_by_default_and_gpu_as_an_override():
    cpu = _compose_config("docker-compose.yml")
    assert {"postgres", "mlflow", "api", "monitor"} <= set(cpu["services"])
    assert all("deploy" not in service for service in cpu["services"].values()), "CPU default"
    mlflow_cmd = " ".join(cpu["services"]["mlflow"]["command"])
    assert "postgresql+psycopg2://" in mlflow_cmd and "--serve-artifacts" in mlflow_cmd
    assert "--artifacts-destination" in mlflow_cmd
    assert cpu["services"]["api"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    monitor_cmd = " ".join(cpu["services"]["monitor"]["command"])
    assert "mnist_mlops.retrain" in monitor_cmd and "watch.enabled=true" in monitor_cmd

    gpu = _compose_config("docker-compose.yml", "docker-compose.gpu.yml")
    devices = gpu["services"]["api"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
