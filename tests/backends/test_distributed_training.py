"""``backend=spark_ddp`` and ``backend=orca`` end to end: real Spark, real MLflow, real MNIST rows.

Each backend trains ``gap_v8`` for two epochs on a 4,000/1,000/1,000 real subset with the same
seed as a ``local`` run and must land within ``ACC_TOLERANCE`` of it, logging an MLflow run of
the same shape. With two workers every optimizer step sees the same rows as the local step
(the global batch is split across the ranks), so the remaining differences are BatchNorm
statistics over half-batches, dropout masks and float summation order.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from backend_runs import REPO_ROOT, TrainRun, train_cli
from failing_net import FAILURE_MESSAGE
from mlflow import MlflowClient

from mnist_mlops.data.splits import load_split

pytestmark = pytest.mark.slow

BACKENDS = ["spark_ddp", "orca"]
EPOCHS = 2
# test_backend_plumbing.py shows the worker loop reproduces a local run exactly (one rank, no
# dropout). Here two ranks normalise BatchNorm over half-batches and draw other dropout masks;
# after only two epochs on 4,000 images eval accuracy still moves by points between such runs
# (measured: spark_ddp/orca 2.9-3.6 points below local at seed 7, one DDP process 2.3-2.9).
ACC_TOLERANCE = 0.05
# two epochs on 4,000 real digits are far from converged but well above chance (measured 0.85-0.89)
MIN_TEST_ACC = 0.80
TRAIN_OVERRIDES = [
    "model=gap_v8",
    f"trainer.epochs={EPOCHS}",
    "data.batch_size=64",
    "seed=7",
]


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    paths: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        paths |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


def _backend_free_params(params: dict[str, str]) -> set[str]:
    """Param names without the backend's own settings (which differ between backends)."""
    return {k for k in params if not k.startswith(("backend.", "spark."))}


@pytest.fixture(scope="module")
def local_run(real_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    run = train_cli(
        tmp_path_factory.mktemp("local"), real_subset_dir, [*TRAIN_OVERRIDES, "backend=local"]
    )
    assert run.returncode == 0, run.output[-4000:]
    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_trains_like_local(
    backend: str, local_run: TrainRun, real_subset_dir: Path, tmp_path: Path
) -> None:
    run = train_cli(tmp_path, real_subset_dir, [*TRAIN_OVERRIDES, f"backend={backend}"])
    assert run.returncode == 0, run.output[-4000:]
    ours, reference = run.only_run(), local_run.only_run()
    assert ours.info.status == "FINISHED"
    assert ours.data.tags["backend"] == backend
    assert reference.data.tags["backend"] == "local"

    # the same run shape as a local run: params, metrics, artifacts
    assert _backend_free_params(ours.data.params) == _backend_free_params(reference.data.params)
    assert ours.data.params["model/params_total"] == "13808"
    assert set(ours.data.metrics) == set(reference.data.metrics)
    client = MlflowClient(run.tracking_uri)
    reference_client = MlflowClient(local_run.tracking_uri)
    assert _artifact_paths(client, ours.info.run_id) == _artifact_paths(
        reference_client, reference.info.run_id
    )
    # one point per epoch, logged live from the driver
    history = client.get_metric_history(ours.info.run_id, "val/acc")
    assert [m.step for m in history] == list(range(EPOCHS))

    # accuracy: learned for real, and as well as local with the same seed
    for key in ("val/acc", "test/acc"):
        assert abs(ours.data.metrics[key] - reference.data.metrics[key]) <= ACC_TOLERANCE, (
            key,
            ours.data.metrics[key],
            reference.data.metrics[key],
        )
    assert ours.data.metrics["test/acc"] >= MIN_TEST_ACC

    # the logged model is the served InferenceModel and reproduces the logged test accuracy
    mlflow.set_tracking_uri(run.tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{ours.info.run_id}/model", map_location="cpu")
    test = load_split(real_subset_dir / "test")
    with torch.no_grad():
        images = torch.from_numpy(test.images).unsqueeze(1).float() / 255.0
        predicted = model(images).argmax(dim=1).numpy()
    accuracy = float((predicted == test.labels).mean())
    assert accuracy == pytest.approx(ours.data.metrics["test/acc"], abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_exception_fails_the_run(
    backend: str, synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    run = train_cli(
        tmp_path,
        synthetic_processed_dir,
        [
            f"backend={backend}",
            "trainer.epochs=1",
            "model.net._target_=tests.backends.failing_net.FailingNet",
        ],
    )
    assert run.returncode != 0
    # a clear error on the driver: which worker, what it raised
    assert "DistributedTrainingError: training failed in worker rank" in run.output
    assert FAILURE_MESSAGE in run.output
    failed = run.only_run()
    assert failed.info.status == "FAILED"
    assert "test/acc" not in failed.data.metrics
    client = MlflowClient(run.tracking_uri)
    assert "model" not in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert client.search_model_versions(f"run_id='{failed.info.run_id}'") == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_spark_ddp_on_a_standalone_cluster(real_subset_dir: Path, tmp_path: Path) -> None:
    """Master + 2 workers on localhost (scripts/spark_standalone.sh), one process per executor."""
    env = {
        **os.environ,
        "SPARK_MASTER_PORT": str(_free_port()),
        "SPARK_MASTER_WEBUI_PORT": str(_free_port()),
        "SPARK_STANDALONE_DIR": str(tmp_path / "cluster"),
        "SPARK_STANDALONE_WORKERS": "2",
        "SPARK_WORKER_CORES": "1",
        "SPARK_WORKER_MEMORY": "1g",
    }
    script = ["bash", str(REPO_ROOT / "scripts" / "spark_standalone.sh")]
    started = subprocess.run(
        [*script, "start"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        master = started.stdout.strip().splitlines()[-1]
        assert master.startswith("spark://127.0.0.1:")
        run = train_cli(
            tmp_path / "run",
            real_subset_dir,
            [
                "backend=spark_ddp",
                "spark=cluster",
                f"spark.master={master}",
                "spark.num_executors=2",
                "spark.executor_cores=1",
                "spark.executor_memory=1g",
                "spark.driver_memory=1g",
                *TRAIN_OVERRIDES,
                "trainer.epochs=1",
            ],
        )
        assert run.returncode == 0, run.output[-4000:]
        assert "Started distributed training with 2 executor processes" in run.output
        finished = run.only_run()
        assert finished.info.status == "FINISHED"
        assert finished.data.params["spark.master"] == master
        # one epoch (62 steps) on 4,000 digits: measured 0.67-0.70 in the local/2-worker runs
        assert finished.data.metrics["test/acc"] >= 0.5
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120, check=False)


STREAMING_OVERRIDES = [
    "data.streaming=true",
    "data.stream_buffer_rows=256",
    "data.batch_size=64",
    "trainer.epochs=3",
    "model.net.dropout=0.0",
    "seed=3",
]


@pytest.fixture(scope="module")
def local_streaming_run(
    synthetic_processed_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainRun:
    run = train_cli(
        tmp_path_factory.mktemp("local-streaming"),
        synthetic_processed_dir,
        [*STREAMING_OVERRIDES, "backend=local"],
    )
    assert run.returncode == 0, run.output[-4000:]
    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_stream_their_shard(
    backend: str, local_streaming_run: TrainRun, synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    """``data.streaming=true`` under spark_ddp and orca: each of 2 workers streams its half of
    the row groups (tests/training/test_streaming.py checks the rows) and the run learns as a
    local streaming run with the same seed does."""
    streamed = train_cli(
        tmp_path, synthetic_processed_dir, [*STREAMING_OVERRIDES, f"backend={backend}"]
    )
    assert streamed.returncode == 0, streamed.output[-4000:]
    ours, reference = streamed.only_run(), local_streaming_run.only_run()
    assert ours.info.status == "FINISHED" and ours.data.tags["backend"] == backend
    assert ours.data.params["data.streaming"] == "True"
    history = MlflowClient(streamed.tracking_uri).get_metric_history(ours.info.run_id, "val/acc")
    assert [m.step for m in history] == [0, 1, 2]
    # 600 synthetic digits, 3 epochs: measured train/acc 0.64 (local), 0.70 (orca); chance 0.1
    assert ours.data.metrics["train/acc"] > 0.4
    for key in ("train/acc", "test/acc"):
        assert abs(ours.data.metrics[key] - reference.data.metrics[key]) <= 0.1, key
