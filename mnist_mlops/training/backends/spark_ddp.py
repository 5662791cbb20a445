"""``backend=spark_ddp``: DDP workers started by PySpark's ``TorchDistributor``.

``TorchDistributor(num_processes, local_mode, use_gpu)`` runs :func:`ddp_worker` in
``num_processes`` processes: with ``local_mode`` as ``torchrun`` children of the driver, else as
Spark barrier tasks on the executors, one process each, so any Spark master works (local,
standalone, YARN, Kubernetes). Each process joins a gloo (CPU) or nccl (GPU) process group and
runs the module's steps through ``DistributedDataParallel``; the epoch protocol, the data sharding
and the reporting to the driver are shared with ``backend=orca`` in
:mod:`mnist_mlops.training.backends.distributed`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from mnist_mlops.training.backends.distributed import (
    DistributedBackend,
    TrainJob,
    WorkerSession,
    failures_reported,
    positive_int,
    worker_device,
)
from mnist_mlops.training.backends.local import train_epoch
from mnist_mlops.utils.runtime import set_spark_env_defaults

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkDDPBackend(DistributedBackend):
    """Trains with ``num_processes`` DDP workers launched through ``TorchDistributor``."""

    name = "spark_ddp"

    def __init__(
        self,
        spark: Mapping[str, Any],
        num_processes: int = 2,
        local_mode: bool | None = None,
        use_gpu: bool = False,
        channels_last: bool = True,
        threads_per_process: int | None = None,
        timeout_s: float = 600,
    ) -> None:
        super().__init__(use_gpu=use_gpu, channels_last=channels_last)
        if timeout_s <= 0:
            raise ValueError(f"backend.timeout_s must be positive, got {timeout_s!r}")
        self.spark_config = spark
        self.num_processes = positive_int("backend.num_processes", num_processes)
        self.local_mode = local_mode
        self.threads_per_process = positive_int(
            "backend.threads_per_process", threads_per_process, optional=True
        )
        self.timeout_s = float(timeout_s)
        self._spark: SparkSession | None = None

    @contextlib.contextmanager
    def _cluster(self) -> Iterator[str]:
        from hydra.utils import instantiate

        set_spark_env_defaults()  # workers must run this interpreter (PYSPARK_PYTHON)
        self._spark = instantiate(self.spark_config)
        yield self._spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1")

    def _launch(self, job: TrainJob) -> None:
        from pyspark.ml.torch.distributor import TorchDistributor

        assert self._spark is not None, "_launch runs inside _cluster()"
        local_mode = self.local_mode
        if local_mode is None:
            local_mode = self._spark.sparkContext.master.startswith("local")
        threads = self.threads_per_process
        if threads is None and not local_mode:  # a barrier task owns spark.task.cpus cores
            threads = int(self._spark.sparkContext.getConf().get("spark.task.cpus", "1"))
        distributor = TorchDistributor(
            num_processes=self.num_processes, local_mode=local_mode, use_gpu=self.use_gpu
        )
        # The return value is ignored on purpose: rank 0 reports through the job's channel.
        distributor.run(ddp_worker, job, threads, self.timeout_s)

    def _cancel(self) -> None:
        if self._spark is not None:
            with contextlib.suppress(Exception):
                self._spark.sparkContext.cancelAllJobs()


def ddp_worker(job: TrainJob, threads: int | None, timeout_s: float) -> None:
    """One DDP rank (runs in a ``torchrun`` child: RANK, WORLD_SIZE, LOCAL_RANK are set)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    with failures_reported(job.channel, rank):
        device = worker_device(job.use_gpu, local_rank)
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // per_machine))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
        )
        try:
            session = WorkerSession(job, rank, world, device)
            ddp_net = DistributedDataParallel(
                session.net, device_ids=[device.index] if device.type == "cuda" else None
            )
            config = session.module.configure_optimizers()
            optimizer = config["optimizer"]
            schedule = config.get("lr_scheduler") or {}
            scheduler = schedule.get("scheduler")
            per_step = scheduler is not None and schedule.get("interval") == "step"
            while not session.stopped:
                session.start_epoch(optimizer)
                with session.wrapped(ddp_net):
                    images = train_epoch(
                        session.module,
                        session.train_batches,
                        optimizer,
                        scheduler if per_step else None,
                        session,
                        session.memory_format,
                    )
                session.train_finished(images)
                if scheduler is not None and not per_step:
                    scheduler.step()
                session.finish_epoch()
            session.finish()
        finally:
            dist.destroy_process_group()
