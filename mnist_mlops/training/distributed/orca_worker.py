"""The worker side under Orca: Orca's batch-loop hooks mapped onto the one epoch loop.

Orca (``Estimator.from_torch``) runs its own loop over batches and calls hooks; here each hook
calls the matching step of :class:`~mnist_mlops.training.loop.EpochLoop`, with a
:class:`~.worker.WorkerSession` as the loop's ranks, exactly as ``spark_ddp``'s
:func:`~.worker.ddp_worker` runs the loop itself.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from mnist_mlops.training.distributed.channel import failures_reported
from mnist_mlops.training.distributed.protocol import TrainJob
from mnist_mlops.training.distributed.worker import WorkerSession, worker_device
from mnist_mlops.training.loop import EpochLoop

try:  # the worker callback must subclass Orca's MainCallback; Orca is an optional install
    from bigdl.orca.learn.pytorch.callbacks.maincallback import MainCallback
except ImportError:  # pragma: no cover - exercised only without scripts/install.d/orca.sh
    MainCallback = object  # type: ignore[assignment,misc]

_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def _reported(hook: _Hook) -> _Hook:
    """Send an exception raised in a worker hook to the driver before Orca sees it."""

    @functools.wraps(hook)
    def wrapper(self: OrcaWorker, *args: Any, **kwargs: Any) -> Any:
        with failures_reported(self.job.channel, self.rank):
            return hook(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class OrcaWorker(MainCallback):  # type: ignore[misc,valid-type]
    """Runs on every Orca worker: Orca's runner hooks -> the epoch loop's steps.

    One instance is pickled together with the model/optimizer/data creators (they call into
    it), so on a worker they all share it. Orca calls, per worker: ``create_net`` and
    ``create_optimizer`` (then wraps the net in DDP), ``train_batches``, ``before_run``, and
    per epoch ``before_train_epoch``, ``on_train_forward``/``on_iter_backward`` per batch,
    ``on_lr_adjust``, ``after_train_epoch``; finally ``after_run``.
    """

    def __init__(self, job: TrainJob) -> None:
        self.job = job
        self.rank = 0
        self.optimizers: dict[str, Any] | None = None
        self.session: WorkerSession | None = None
        self.loop: EpochLoop | None = None
        self._ddp_scope: contextlib.AbstractContextManager[None] | None = None

    # --- creators (also called once on the driver, where they only build objects) ----------
    @_reported
    def create_net(self, config: dict[str, Any]) -> torch.nn.Module:
        net = self.job.module.net
        if _in_spark_task():  # DDP wraps the net next: device and layout must be final now
            device = worker_device(self.job.use_gpu, _partition_id())
            net.to(device, memory_format=self.job.memory_format)
        return net

    @_reported
    def create_optimizer(self, net: torch.nn.Module, config: dict[str, Any]) -> Any:
        module = self.job.module
        module.trainer = self.job.trainer  # answers max_epochs / estimated_stepping_batches
        self.optimizers = module.configure_optimizers()
        return self.optimizers["optimizer"]

    def train_batches(self) -> SessionBatches:
        return SessionBatches(self)

    # --- Orca runner hooks ----------------------------------------------------------------------
    @_reported
    def before_run(self, runner: Any) -> None:
        self.rank = int(runner.rank)
        device = next(self.job.module.net.parameters()).device
        session = WorkerSession(self.job, self.rank, int(runner.size), device)
        self.session = session
        self.loop = EpochLoop(
            session.module, session.trainer, session.memory_format, self.optimizers
        )

    @_reported
    def before_train_epoch(self, runner: Any) -> None:
        session, loop = self._running()
        if session.stopped:
            return
        session.ddp_net = runner.training_models[0]
        loop.start_epoch(session)
        self._ddp_scope = session.training(session.module)
        self._ddp_scope.__enter__()

    @_reported
    def on_train_forward(self, runner: Any) -> None:
        runner.loss = self._running()[1].training_step(runner.batch, runner.batch_idx)

    @_reported
    def on_iter_backward(self, runner: Any) -> None:
        self._running()[1].optimizer_step(runner.loss, runner.batch_idx)

    def on_lr_adjust(self, runner: Any) -> None:
        """The loop steps the per-epoch scheduler itself (:meth:`EpochLoop.end_training`)."""

    @_reported
    def after_train_epoch(self, runner: Any) -> None:
        session, loop = self._running()
        if self._ddp_scope is None:  # an epoch skipped after the driver said stop
            return
        self._ddp_scope.__exit__(None, None, None)
        self._ddp_scope = None
        loop.end_training()
        loop.finish_epoch(session.val_batches, session)

    @_reported
    def after_run(self, runner: Any) -> None:
        self._running()[0].finish()

    def _running(self) -> tuple[WorkerSession, EpochLoop]:
        if self.session is None or self.loop is None:
            raise RuntimeError("Orca called a training hook before before_run")
        return self.session, self.loop


class SessionBatches:
    """What Orca iterates each epoch: this rank's batches, or nothing once training stopped.

    Orca builds the loader before ``before_run`` creates the session, so this stays lazy.
    """

    def __init__(self, worker: OrcaWorker) -> None:
        self.worker = worker

    def __iter__(self) -> Iterator[Any]:
        session = self.worker._running()[0]
        return iter(()) if session.stopped else iter(session.train_batches)

    def __len__(self) -> int:
        session = self.worker._running()[0]
        return 0 if session.stopped else len(session.train_batches)  # type: ignore[arg-type]


def _in_spark_task() -> bool:
    from pyspark import TaskContext

    return TaskContext.get() is not None


def _partition_id() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context is not None else 0
