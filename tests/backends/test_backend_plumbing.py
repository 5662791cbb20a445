"""Fast checks of the distributed backends' plumbing (no JVM): data sharding, the driver channel,
failure reporting and the Hydra configs. The real Spark runs are in test_distributed_training.py.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.training.backends.local import LocalBackend
from mnist_mlops.training.backends.orca import OrcaBackend
from mnist_mlops.training.backends.spark_ddp import SparkDDPBackend
from mnist_mlops.training.datamodule import MnistDataModule
from mnist_mlops.training.distributed.channel import DriverLink, EpochChannel, report_failure
from mnist_mlops.training.distributed.driver import DistributedBackend
from mnist_mlops.training.distributed.protocol import (
    DistributedTrainingError,
    EpochReport,
    TrainJob,
)
from mnist_mlops.training.distributed.sampler import RankBatches
from mnist_mlops.training.distributed.worker import ddp_worker
from mnist_mlops.training.trainer import Trainer


def _compose(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# --- data sharding --------------------------------------------------------------------------
@pytest.fixture
def datamodule(synthetic_processed_dir: Path) -> MnistDataModule:
    data = MnistDataModule(synthetic_processed_dir, batch_size=64, eval_batch_size=50)
    data.setup("cpu")
    return data


def _shards(data: MnistDataModule, split: str, batch: int, world: int, train: bool):
    return [
        list(
            RankBatches(
                data, data.splits[split], batch, rank, world, seed=3, max_batches=None, train=train
            )
        )
        for rank in range(world)
    ]


def test_ranks_split_each_global_batch(datamodule: MnistDataModule) -> None:
    """Two ranks together see exactly the rows one process sees, batch by batch."""
    (single,) = _shards(datamodule, "train", 64, 1, train=True)
    rank0, rank1 = _shards(datamodule, "train", 64, 2, train=True)
    assert len(rank0) == len(rank1) == len(single) == 10  # 600 rows: 9 full batches + 24 rows
    for (x0, y0), (x1, y1), (x, y) in zip(rank0, rank1, single, strict=True):
        assert len(y0) + len(y1) == len(y)
        joined = torch.empty_like(x)
        joined[0::2], joined[1::2] = x0, x1
        assert torch.equal(joined, x)
        assert torch.equal(torch.cat([y0, y1]).sort().values, y.sort().values)


def test_training_drops_a_last_batch_too_small_for_every_rank(
    datamodule: MnistDataModule,
) -> None:
    # 600 rows in batches of 599: the second global batch has 1 row, less than 2 ranks
    rank0, rank1 = _shards(datamodule, "train", 599, 2, train=True)
    assert len(rank0) == len(rank1) == 1
    # validation keeps every row (no collective per batch there)
    val0, val1 = _shards(datamodule, "val", 150, 2, train=False)
    assert sum(len(y) for _, y in val0 + val1) == 200


# --- the driver channel ---------------------------------------------------------------------
def _report(epoch: int) -> EpochReport:
    return EpochReport(epoch, {"val/acc": 0.5 + epoch / 10}, 0.01, 1.0, {"w": torch.ones(2)})


def test_channel_delivers_epochs_and_the_stop_decision() -> None:
    channel = EpochChannel("127.0.0.1")
    answers: list[bool] = []

    def worker() -> None:
        link = DriverLink(channel.address)
        answers.append(link.report_epoch(_report(0)))
        answers.append(link.report_epoch(_report(1)))
        link.done(2)

    seen: list[EpochReport] = []
    try:
        channel.serve(worker, lambda r: seen.append(r) or r.epoch == 1, lambda: None)
    finally:
        channel.close()
    assert [r.epoch for r in seen] == [0, 1]
    assert seen[1].metrics == {"val/acc": 0.6, "lr": 0.01, "epoch_time_s": 1.0}
    assert torch.equal(seen[0].state["w"], torch.ones(2))
    assert answers == [False, True]


def test_a_worker_failure_is_raised_on_the_driver_with_its_traceback() -> None:
    channel = EpochChannel("127.0.0.1")
    cancelled = threading.Event()

    def launch() -> None:
        try:
            raise ValueError("bad pixel in shard 3")
        except ValueError as err:
            report_failure(channel.address, rank=1, err=err)
        raise RuntimeError("Spark job aborted")

    try:
        with pytest.raises(DistributedTrainingError) as info:
            channel.serve(launch, lambda r: False, cancelled.set)
    finally:
        channel.close()
    message = str(info.value)
    assert "worker rank 1" in message and "ValueError: bad pixel in shard 3" in message
    assert "--- worker traceback ---" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert cancelled.is_set()


def test_workers_ending_without_a_result_is_an_error() -> None:
    channel = EpochChannel("127.0.0.1")
    try:
        with pytest.raises(DistributedTrainingError, match="without reporting"):
            channel.serve(lambda: None, lambda r: False, lambda: None)
    finally:
        channel.close()


def test_a_driver_callback_error_stops_the_workers_and_propagates() -> None:
    channel = EpochChannel("127.0.0.1")
    answers: list[bool] = []

    def worker() -> None:
        link = DriverLink(channel.address)
        answers.append(link.report_epoch(_report(0)))
        link.done(1)

    def on_epoch(report: EpochReport) -> bool:
        raise KeyError("pruned")

    try:
        with pytest.raises(KeyError, match="pruned"):
            channel.serve(worker, on_epoch, lambda: None)
    finally:
        channel.close()
    assert answers == [True]


# --- configs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "cls"), [("spark_ddp", SparkDDPBackend), ("orca", OrcaBackend)]
)
def test_backend_configs_build_without_starting_spark(backend: str, cls: type) -> None:
    cfg = _compose(f"backend={backend}")
    assert cfg.spark.master == "local[*]"
    built = instantiate(cfg.backend)
    assert isinstance(built, cls) and built.name == backend
    assert built.spark_config.master == "local[*]"


def test_spark_cluster_override_reaches_the_backend() -> None:
    cfg = _compose("backend=spark_ddp", "spark=cluster", "spark.master=spark://head:7077")
    assert instantiate(cfg.backend).spark_config.master == "spark://head:7077"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["backend=orca", "backend.workers_per_node=0"], "backend.workers_per_node"),
        (["backend=spark_ddp", "backend.num_processes=0"], "backend.num_processes"),
    ],
)
def test_bad_worker_counts_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(Exception, match=key):
        instantiate(_compose(*overrides).backend)


def test_orca_cluster_submit_args_fix_python_home_and_jars(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BIGDL_JARS", "/venv/a.jar:/venv/b.jar")
    cfg = _compose("backend=orca", "spark=cluster", "spark.master=spark://head:7077")
    backend = instantiate(cfg.backend)
    env = backend._submit_env(backend._spark_conf(tmp_path / "log4j2.properties"))
    args = env["PYSPARK_SUBMIT_ARGS"]
    assert args.startswith("--master spark://head:7077 ") and args.endswith(" pyspark-shell")
    assert f"spark.executorEnv.PYTHONHOME={sys.base_prefix}" in args
    assert "spark.executor.extraClassPath=/venv/a.jar:/venv/b.jar" in args
    assert "log4j2.configurationFile=file:" in args
    assert env["BIGDL_JARS"].endswith(".jar ")  # BigDL appends pyspark-shell without a space
    assert backend._context_args({})["cluster_mode"] == "spark-submit"


# --- the worker loop reproduces local training ----------------------------------------------
class _InProcessDDP(DistributedBackend):
    """The spark_ddp worker loop as a world of one, in this process (no Spark, no torchrun)."""

    name = "inprocess_ddp"

    @contextlib.contextmanager
    def _cluster(self) -> Iterator[str]:
        yield "127.0.0.1"

    def _launch(self, job: TrainJob) -> None:
        ddp_worker(job, threads=1, timeout_s=60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_worker_loop_matches_local_training_exactly(
    synthetic_processed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dropout and with one rank, a distributed run IS a local run: same batches, same
    steps, same metrics, same weights. (With more ranks only BatchNorm's per-rank batch
    statistics and dropout masks differ; see test_distributed_training.py.)"""
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(key, value)
    cfg = _compose("model=gap_v8", "model.net.dropout=0.0")
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    results = {}
    for backend in (LocalBackend(num_threads=1), _InProcessDDP()):
        trainer = Trainer(backend=backend, epochs=2, device="cpu", limit_train_batches=6)
        data = MnistDataModule(synthetic_processed_dir, batch_size=32, eval_batch_size=100, seed=5)
        trained = copy.deepcopy(module)
        trainer.fit(trained, data)
        results[backend.name] = (trainer.history, trained.net.state_dict())
    (local_history, local_state), (ddp_history, ddp_state) = results.values()
    for local_epoch, ddp_epoch in zip(local_history, ddp_history, strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "lr"):
            assert ddp_epoch[key] == pytest.approx(local_epoch[key], abs=1e-5), key
    for name, tensor in local_state.items():
        assert torch.allclose(ddp_state[name].float(), tensor.float(), atol=1e-5), name
