"""``backend=orca``: BigDL-Orca's PyTorch estimator on Spark (``Estimator.from_torch``).

This module is only the launcher (and Orca's context). Orca starts ``workers_per_node`` DDP
workers per Spark node (gloo) and runs its own batch loop;
:class:`~mnist_mlops.training.distributed.orca_worker.OrcaWorker`, an Orca ``MainCallback``,
maps that loop's hooks onto the steps of the one epoch loop and, after each epoch, validates
and reports to the driver through the protocol shared with ``backend=spark_ddp``
(:mod:`mnist_mlops.training.distributed`).

All epochs run in ONE ``fit`` call: Orca costs about 4 s per ``fit`` (barrier job, process
group, model broadcast), which the original paid every epoch by calling ``fit`` per epoch.

Facts about BigDL 2.4 on pyspark 3.5 / Python 3.11 / Java 17 this module works around:

- In a venv, BigDL sets ``PYTHONHOME`` to the venv and Spark's Python workers then die with
  "No module named 'encodings'": ``PYTHONHOME`` must be the base interpreter's prefix while the
  context starts (and ``spark.executorEnv.PYTHONHOME`` on a cluster, for the same reason).
- ``init_orca_context`` must create the SparkContext itself (it puts the BigDL jars on the
  driver's class path), so no SparkSession may exist in the process before it.
- For non-local masters BigDL glues ``--driver-class-path <jars>`` to ``pyspark-shell`` in
  ``PYSPARK_SUBMIT_ARGS`` without a space; a trailing space on ``BIGDL_JARS`` avoids that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from mnist_mlops.training.distributed.driver import DistributedBackend, positive_int
from mnist_mlops.training.distributed.orca_worker import OrcaWorker, SessionBatches
from mnist_mlops.training.distributed.protocol import TrainJob
from mnist_mlops.utils.runtime import set_spark_env_defaults

log = logging.getLogger(__name__)

# BigDL's jar ships a log4j2-test.xml, which log4j2 prefers over every other configuration and
# which logs Spark at INFO (hundreds of lines per run); this file, passed explicitly, wins.
_LOG4J2_PROPERTIES = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
# py4j complains about every closed gateway connection at shutdown
logger.py4j.name = py4j
logger.py4j.level = error
"""


class OrcaBackend(DistributedBackend):
    """Trains with BigDL-Orca: ``workers_per_node`` DDP workers on each Spark node."""

    name = "orca"

    def __init__(
        self,
        spark: Mapping[str, Any],
        workers_per_node: int = 2,
        cores: int | None = None,
        use_gpu: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__(use_gpu=use_gpu, channels_last=channels_last)
        self.spark_config = spark
        self.workers_per_node = positive_int("backend.workers_per_node", workers_per_node)
        self.cores = positive_int("backend.cores", cores, optional=True)
        self._sc: Any = None

    # --- cluster ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _cluster(self) -> Iterator[str]:
        try:
            from bigdl.orca import init_orca_context, stop_orca_context
        except ImportError as err:
            raise RuntimeError(
                "backend=orca needs BigDL-Orca: run `bash scripts/install.d/orca.sh` "
                "(part of `make install`)"
            ) from err
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            raise RuntimeError(
                "backend=orca must create its own SparkContext (BigDL's jars go on the driver's "
                "class path at JVM start), but this process already has one; run training in a "
                "fresh process, e.g. `python -m mnist_mlops.train backend=orca`"
            )
        set_spark_env_defaults()
        threads = torch.get_num_threads()  # Orca's driver-side runner changes them
        with tempfile.TemporaryDirectory(prefix="orca-") as tmp:
            conf = self._spark_conf(Path(tmp) / "log4j2.properties")
            # KMP_SETTINGS=0: BigDL would make Intel OpenMP print its ~70 settings
            with _environ(PYTHONHOME=sys.base_prefix, KMP_SETTINGS="0", **self._submit_env(conf)):
                self._sc = init_orca_context(**self._context_args(conf))
            try:
                yield self._sc.getConf().get("spark.driver.host", "127.0.0.1")
            finally:
                self._sc = None
                stop_orca_context()
                torch.set_num_threads(threads)

    def _master(self) -> str:
        return str(self.spark_config.get("master") or "local[*]")

    def _spark_conf(self, log_config: Path) -> dict[str, str]:
        """``spark.extra_conf`` plus a log4j2 file (written here) for the driver and executors."""
        level = str(self.spark_config.get("log_level") or "WARN").lower()
        log_config.write_text(_LOG4J2_PROPERTIES.format(level=level))
        conf = {
            str(k): str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in (self.spark_config.get("extra_conf") or {}).items()
        }
        for side in ("driver", "executor"):
            key = f"spark.{side}.extraJavaOptions"
            option = f"-Dlog4j2.configurationFile={log_config.as_uri()}"
            conf[key] = f"{conf.get(key, '')} {option}".strip()
        return conf

    def _context_args(self, conf: dict[str, str]) -> dict[str, Any]:
        spark = self.spark_config
        common = {
            "spark_log_level": str(spark.get("log_level") or "WARN"),
            "redirect_spark_log": False,
        }
        master = self._master()
        if master.startswith("local"):
            return {
                "cluster_mode": "local",
                "cores": self._local_cores(master),
                "memory": str(spark.get("driver_memory") or "2g"),
                "conf": conf,
                **common,
            }
        # Every other master: the context is built from PYSPARK_SUBMIT_ARGS (_submit_env),
        # BigDL's generic path that works for standalone, YARN and Kubernetes alike.
        return {"cluster_mode": "spark-submit", **common}

    def _local_cores(self, master: str) -> int:
        """Cores of a local master (``local``, ``local[N]``, ``local[*]``); enough for the workers.

        BigDL needs a number: with ``*`` it sizes each worker's threads as 0.
        """
        given = master.removeprefix("local").strip("[]")
        cores = self.cores or (int(given) if given.isdigit() else os.cpu_count() or 1)
        if cores < self.workers_per_node:
            raise ValueError(
                f"backend.workers_per_node={self.workers_per_node} needs at least as many cores, "
                f"but Spark master {master!r} / backend.cores gives {cores}"
            )
        return cores

    def _submit_env(self, extra_conf: dict[str, str]) -> dict[str, str]:
        master = self._master()
        if master.startswith("local"):
            return {}
        spark = self.spark_config
        jars = os.environ.get("BIGDL_JARS", "").strip()
        executors = int(spark.get("num_executors") or 1)
        cores = int(self.cores or spark.get("executor_cores") or 1)
        conf = {
            "spark.executor.instances": executors,
            "spark.executor.cores": cores,
            "spark.cores.max": executors * cores,
            "spark.executor.memory": spark.get("executor_memory") or "2g",
            # the workers' Python must find its standard library (see the module docstring)
            "spark.executorEnv.PYTHONHOME": sys.base_prefix,
            # the same venv path on every node holds the BigDL jars
            "spark.executor.extraClassPath": jars,
            **extra_conf,
        }
        args = ["--master", master, "--driver-memory", str(spark.get("driver_memory") or "2g")]
        for key, value in conf.items():
            args += ["--conf", f"{key}={value}"]
        return {
            "PYSPARK_SUBMIT_ARGS": shlex.join([*args, "pyspark-shell"]),
            "BIGDL_JARS": jars + " ",  # see the module docstring
        }

    # --- training -----------------------------------------------------------------------------
    def _launch(self, job: TrainJob) -> None:
        from bigdl.orca.learn.pytorch import Estimator

        worker = OrcaWorker(job)

        # Orca insists on plain functions; these close over the one shared worker callback.
        def model_creator(config: dict[str, Any]) -> torch.nn.Module:
            return worker.create_net(config)

        def optimizer_creator(net: torch.nn.Module, config: dict[str, Any]) -> Any:
            return worker.create_optimizer(net, config)

        def data_creator(config: dict[str, Any], batch_size: int) -> SessionBatches:
            return worker.train_batches()

        estimator = Estimator.from_torch(
            model=model_creator,
            optimizer=optimizer_creator,
            backend="spark",
            workers_per_node=self.workers_per_node,
            sync_stats=False,
            log_level=logging.WARNING,
        )
        try:
            estimator.fit(
                data=data_creator,
                epochs=job.trainer.max_epochs,
                batch_size=job.datamodule.batch_size,
                callbacks=[worker],
            )
        finally:
            estimator.shutdown()

    def _cancel(self) -> None:
        if self._sc is not None:
            with contextlib.suppress(Exception):
                self._sc.cancelAllJobs()


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for a block, then restore the whole environment.

    Whole, because ``init_orca_context`` also sets OMP_NUM_THREADS=1 and KMP_* for the JVM it
    starts; the driver process should not keep them.
    """
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
