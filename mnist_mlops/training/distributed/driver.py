"""The driver half of a Spark backend: launch the workers, then follow them epoch by epoch.

``spark_ddp`` and ``orca`` differ only in how they start N worker processes (their
``_cluster``/``_launch``/``_cancel``, Lightning's "launcher"). Everything else is here, once:
``fit`` ships a :class:`~.protocol.TrainJob`, opens an :class:`~.channel.EpochChannel` and
launches the workers in a background thread. The main thread receives an
:class:`~.protocol.EpochReport` after every epoch, loads the reported weights into the
driver's module and calls ``trainer.epoch_finished``: MLflow logging, the progress bar, the
best-weights checkpoint and ``should_stop`` (pruning, early stopping) behave exactly as under
``local``, live, on the driver. ``test`` runs on the driver. A worker exception is raised on
the driver as :class:`~.protocol.DistributedTrainingError` with the worker's traceback.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mnist_mlops.training.backends.local import LocalBackend
from mnist_mlops.training.distributed.channel import EpochChannel
from mnist_mlops.training.distributed.protocol import EpochReport, TrainJob

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import TrainerView
    from mnist_mlops.training.datamodule import MnistDataModule
    from mnist_mlops.training.module import ClassifierModule

log = logging.getLogger(__name__)


def positive_int(name: str, value: Any, optional: bool = False) -> Any:
    """``value`` if it is a positive int (or None when ``optional``); else a clear error."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "null or a positive integer" if optional else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


class DistributedBackend:
    """Driver half of a Spark backend; subclasses say how the workers are started."""

    name = "distributed"

    def __init__(self, use_gpu: bool = False, channels_last: bool = True) -> None:
        self.use_gpu = bool(use_gpu)
        self.channels_last = bool(channels_last)

    # what a concrete backend provides ---------------------------------------------------------
    def _cluster(self) -> contextlib.AbstractContextManager[str]:
        """Start (or join) the cluster; yield the driver address the workers can reach."""
        raise NotImplementedError

    def _launch(self, job: TrainJob) -> None:
        """Run the job on the workers; return when they have all ended."""
        raise NotImplementedError

    def _cancel(self) -> None:
        """Best effort: stop the running workers (a rank failed, or the driver gave up)."""

    # the Backend protocol ---------------------------------------------------------------------
    def fit(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: TrainerView
    ) -> None:
        if self.use_gpu and trainer.device.type != "cuda":
            log.info(
                "backend.use_gpu=true: workers train on their GPUs; the driver uses %s",
                trainer.device,
            )
        job = TrainJob.from_driver(module, datamodule, trainer, self.use_gpu, self.channels_last)

        def on_epoch(report: EpochReport) -> bool:
            module.net.load_state_dict(report.state)
            module.logged = dict(report.logged)
            trainer.epoch_finished(module, report.metrics)
            more = report.epoch + 1 < trainer.max_epochs and not trainer.should_stop
            if more:
                trainer.train_epoch_started(module)
            return not more

        with self._cluster() as driver_host:
            channel = EpochChannel(driver_host)
            try:
                trainer.train_epoch_started(module)
                channel.serve(
                    lambda: self._launch(replace(job, channel=channel.address)),
                    on_epoch,
                    self._cancel,
                )
            finally:
                channel.close()

    def test(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: TrainerView
    ) -> dict[str, Any]:
        """The test split once, on the driver: cheap, and identical for every backend."""
        return LocalBackend(channels_last=self.channels_last).test(module, datamodule, trainer)
