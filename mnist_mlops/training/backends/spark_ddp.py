"""``backend=spark_ddp``: DDP workers started by PySpark's ``TorchDistributor``.

This module is only the launcher. ``TorchDistributor(num_processes, local_mode, use_gpu)`` runs
:func:`~mnist_mlops.training.distributed.worker.ddp_worker` (the worker entry) in
``num_processes`` processes: with ``local_mode`` as ``torchrun`` children of the driver, else as
Spark barrier tasks on the executors, one process each, so any Spark master works (local,
standalone, YARN, Kubernetes). Each process joins a gloo (CPU) or nccl (GPU) process group and
runs the epoch loop through ``DistributedDataParallel``; the driver half, the protocol, the data
sharding and the worker side are shared with ``backend=orca`` in
:mod:`mnist_mlops.training.distributed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mnist_mlops.training.distributed.driver import DistributedBackend, positive_int
from mnist_mlops.training.distributed.protocol import TrainJob
from mnist_mlops.training.distributed.worker import ddp_worker
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
