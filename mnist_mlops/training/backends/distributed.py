"""What the Spark backends (``orca``, ``spark_ddp``) share: one DDP job, reported epoch by epoch.

The two backends differ only in *how* they start N worker processes (BigDL-Orca's estimator or
PySpark's ``TorchDistributor``). Everything else lives here, once:

Driver side (:class:`DistributedBackend`)
    ``fit`` pickles a :class:`TrainJob` (the module without its trainer, the data module without
    its tensors, epochs, limits, seed), opens an :class:`EpochChannel` and launches the workers in
    a background thread. The main thread receives an :class:`EpochReport` after every epoch, loads
    the reported weights into the driver's module and calls ``trainer.epoch_finished``: MLflow
    logging, the progress bar, the best-weights checkpoint and ``should_stop`` (pruning, early
    stopping) behave exactly as under ``local``, live, on the driver. ``test`` runs on the driver.
    A worker exception arrives as a :class:`WorkerFailed` message and is raised on the driver as
    :class:`DistributedTrainingError` with the worker's traceback.

Worker side (:class:`WorkerSession`)
    Every rank rebuilds the module and reads the same Parquet splits; each global batch of
    ``data.batch_size`` rows (same seeded order on every rank) is split across the ranks, so with
    DDP's gradient averaging one optimizer step sees the same rows as one local step. After each
    epoch every rank evaluates its share of ``val`` with rank 0's BatchNorm statistics, the
    torchmetrics states are reduced across ranks, and rank 0 reports to the driver.

Why a channel instead of return values: Orca returns nothing until the last epoch, and
``TorchDistributor`` in ``local_mode`` writes every rank's return value to one file (the last
writer wins), while its launcher exits 0 even when a rank crashed (pyspark 3.5.9). Rank 0 sends
its weights itself, and every rank reports its own failure, so neither quirk can lose a result
or hide an error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import queue
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import TYPE_CHECKING, Any

import torch

from mnist_mlops.training.backends.local import LocalBackend, evaluate
from mnist_mlops.training.precision import resolve_precision

if TYPE_CHECKING:
    from mnist_mlops.training.datamodule import MnistDataModule, TensorSplit
    from mnist_mlops.training.module import ClassifierModule
    from mnist_mlops.training.trainer import Trainer

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor]

# How long the driver waits for the workers to wind down after it asked them to stop (or after
# an error on the driver) before it gives up on them.
_STOP_GRACE_S = 300.0
# After the launcher returns, how long to keep reading messages already on their way.
_DRAIN_S = 0.5


class DistributedTrainingError(RuntimeError):
    """Training on the workers failed; the message carries the failing worker's traceback."""


def positive_int(name: str, value: Any, optional: bool = False) -> Any:
    """``value`` if it is a positive int (or None when ``optional``); else a clear error."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "null or a positive integer" if optional else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


# --- messages between the workers and the driver -------------------------------------------
@dataclass(frozen=True)
class ChannelAddress:
    host: str
    port: int
    authkey: bytes = field(repr=False)


@dataclass(frozen=True)
class EpochReport:
    """Rank 0 after one epoch: the reduced metrics and the weights (CPU tensors)."""

    epoch: int
    logged: dict[str, float]
    lr: float
    epoch_time_s: float
    state: dict[str, torch.Tensor]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.logged, lr=self.lr, epoch_time_s=self.epoch_time_s)


@dataclass(frozen=True)
class TrainingDone:
    epochs: int


@dataclass(frozen=True)
class WorkerFailed:
    rank: int
    host: str
    error: str
    traceback: str


def _send(conn: Connection, message: Any) -> None:
    # Plain pickle, not Connection.send: torch registers ForkingPickler reductions that pass
    # tensors as shared-memory handles, which mean nothing on another process or machine.
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


# --- the job every worker receives ----------------------------------------------------------
@dataclass
class TrainJob:
    """Everything a worker needs, picklable and small (no data, no driver-side trainer)."""

    module: ClassifierModule
    datamodule: MnistDataModule
    max_epochs: int
    steps_per_epoch: int
    limit_train_batches: int | None
    limit_val_batches: int | None
    seed: int
    use_gpu: bool
    channels_last: bool
    precision: str = "32-true"  # as configured; each worker resolves "auto" on its own device
    channel: ChannelAddress | None = None

    @classmethod
    def from_driver(
        cls,
        module: ClassifierModule,
        datamodule: MnistDataModule,
        trainer: Trainer,
        use_gpu: bool,
        channels_last: bool,
    ) -> TrainJob:
        attached = module.trainer
        module.trainer = None  # the driver's trainer holds callbacks, MLflow state and the data
        try:
            shipped = copy.deepcopy(module).cpu()
        finally:
            module.trainer = attached
        data = copy.copy(datamodule)
        data.splits = {}  # workers read the Parquet splits themselves
        return cls(
            module=shipped,
            datamodule=data,
            max_epochs=trainer.max_epochs,
            steps_per_epoch=trainer.num_train_batches,
            limit_train_batches=trainer.limit_train_batches,
            limit_val_batches=trainer.limit_val_batches,
            seed=int(datamodule.generator.initial_seed()),
            use_gpu=use_gpu,
            channels_last=channels_last,
            precision=trainer.requested_precision,
        )

    @property
    def estimated_stepping_batches(self) -> int:
        """Optimizer steps of the whole run, for OneCycle/cosine schedules (as on the driver;
        a rank may run one step fewer when the last global batch is dropped)."""
        return self.steps_per_epoch * self.max_epochs

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


# --- driver side ----------------------------------------------------------------------------
class EpochChannel:
    """The driver's end: workers connect (authenticated), send reports, get stop decisions."""

    def __init__(self, host: str) -> None:
        authkey = secrets.token_bytes(32)
        self._listener = Listener((host, 0), authkey=authkey)
        self.address = ChannelAddress(host, int(self._listener.address[1]), authkey)
        self._incoming: queue.Queue[Connection] = queue.Queue()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="epoch-channel", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception:  # a failed handshake (wrong key, port scan) is not fatal
                continue
            self._incoming.put(conn)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wake accept() so its thread can end
            socket.create_connection((self.address.host, self.address.port), timeout=1).close()
        self._listener.close()

    def serve(
        self,
        launch: Callable[[], Any],
        on_epoch: Callable[[EpochReport], bool],
        on_failure: Callable[[], None],
    ) -> TrainingDone:
        """Run ``launch`` (blocking until the workers end) while answering their messages.

        ``on_epoch`` runs on this (the calling) thread, so MLflow's thread-local active run and
        every driver callback work as in a local run; it returns True to stop training.
        """
        launched: dict[str, BaseException | None] = {"error": None}

        def run() -> None:
            try:
                launch()
            except BaseException as err:  # surfaced on the calling thread below
                launched["error"] = err

        launcher = threading.Thread(target=run, name="launch-workers", daemon=True)
        launcher.start()
        conns: list[Connection] = []
        done: TrainingDone | None = None
        failures: list[WorkerFailed] = []
        driver_error: BaseException | None = None
        stop_requested_at: float | None = None
        finished_at: float | None = None
        while True:
            if finished_at is None and not launcher.is_alive():
                finished_at = time.monotonic()  # then drain: a last message may still be queued
            while not self._incoming.empty():
                conns.append(self._incoming.get())
            ready = wait(conns, timeout=0.05 if finished_at else 0.2) if conns else []
            if not conns and not finished_at:
                time.sleep(0.2)
            for conn in ready:
                try:
                    message = _receive(conn)
                except (EOFError, OSError):
                    conns.remove(conn)
                    continue
                if isinstance(message, EpochReport):
                    stop = driver_error is not None
                    if not stop:
                        try:
                            stop = bool(on_epoch(message))
                        except BaseException as err:  # e.g. a pruning callback interrupting
                            driver_error, stop = err, True
                    with contextlib.suppress(OSError):
                        _send(conn, stop)
                    if stop and stop_requested_at is None:
                        stop_requested_at = time.monotonic()
                elif isinstance(message, TrainingDone):
                    done = message
                elif isinstance(message, WorkerFailed):
                    failures.append(message)
                    log.error(
                        "worker rank %d on %s failed:\n%s",
                        message.rank,
                        message.host,
                        message.traceback,
                    )
                    on_failure()
            if finished_at and not ready and time.monotonic() - finished_at > _DRAIN_S:
                break
            if stop_requested_at and time.monotonic() - stop_requested_at > _STOP_GRACE_S:
                on_failure()
                raise DistributedTrainingError(
                    f"workers did not stop within {_STOP_GRACE_S:.0f} s after the driver asked"
                )
        for conn in conns:
            conn.close()
        launch_error = launched["error"]
        if failures:
            first = failures[0]
            raise DistributedTrainingError(
                f"training failed in worker rank {first.rank} on {first.host}: {first.error}\n"
                f"--- worker traceback ---\n{first.traceback}"
            ) from launch_error
        if driver_error is not None:
            raise driver_error
        if launch_error is not None:
            raise DistributedTrainingError(
                f"launching the workers failed: {type(launch_error).__name__}: {launch_error}"
            ) from launch_error
        if done is None:
            raise DistributedTrainingError(
                "the workers ended without reporting that training finished (a worker process "
                "was probably killed: out of memory, or the cluster lost an executor)"
            )
        return done


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
    def fit(self, module: ClassifierModule, datamodule: MnistDataModule, trainer: Trainer) -> None:
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
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: Trainer
    ) -> dict[str, Any]:
        """The test split once, on the driver: cheap, and identical for every backend."""
        return LocalBackend(channels_last=self.channels_last).test(module, datamodule, trainer)


# --- worker side ----------------------------------------------------------------------------
class DriverLink:
    """Rank 0's end of the :class:`EpochChannel`."""

    def __init__(self, address: ChannelAddress) -> None:
        self._conn = Client((address.host, address.port), authkey=address.authkey)

    def report_epoch(self, report: EpochReport) -> bool:
        """Send the epoch; the driver answers whether to stop."""
        _send(self._conn, report)
        return bool(_receive(self._conn))

    def done(self, epochs: int) -> None:
        _send(self._conn, TrainingDone(epochs))
        self._conn.close()


def report_failure(address: ChannelAddress | None, rank: int, err: BaseException) -> None:
    """Tell the driver why this rank failed (best effort: the driver may be gone too)."""
    if address is None:
        return
    message = WorkerFailed(
        rank=rank,
        host=socket.gethostname(),
        error=f"{type(err).__name__}: {err}",
        traceback="".join(traceback.format_exception(err)),
    )
    with (
        contextlib.suppress(Exception),
        Client((address.host, address.port), authkey=address.authkey) as conn,
    ):
        _send(conn, message)


def worker_device(use_gpu: bool, local_rank: int) -> torch.device:
    """The GPU Spark assigned to this task, else ``local_rank`` modulo the visible GPUs."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("backend.use_gpu=true but this worker sees no CUDA device")
    with contextlib.suppress(Exception):
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None and "gpu" in context.resources():
            addresses = context.resources()["gpu"].addresses
            # CUDA_VISIBLE_DEVICES (set by TorchDistributor) renumbers the visible GPUs from 0
            if not os.environ.get("CUDA_VISIBLE_DEVICES"):
                return torch.device(f"cuda:{int(addresses[0])}")
    return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")


class RankBatches:
    """This rank's part of every global batch, in an order that is the same on every rank.

    Each epoch draws the global order and the augmentation seed exactly as the data module's
    own epoch does (``randperm`` then one ``randint`` from a generator seeded with the run's
    seed), so with one rank the batches are those of a local run; rank ``r`` of ``w`` takes rows
    ``r, r+w, ...`` of each global batch. ``max_batches`` counts global batches of
    ``batch_size`` rows, as ``limit_*_batches`` does in a local run. For training, a final
    global batch smaller than the world size is dropped so that every rank runs the same number
    of steps (DDP needs that).
    """

    def __init__(
        self,
        datamodule: MnistDataModule,
        split: TensorSplit,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        max_batches: int | None,
        train: bool,
    ) -> None:
        self.datamodule, self.split, self.batch_size = datamodule, split, batch_size
        self.rank, self.world, self.train = rank, world, train
        self.order_generator = torch.Generator().manual_seed(seed)
        self.rows = len(split) if max_batches is None else min(len(split), max_batches * batch_size)
        full, rest = divmod(self.rows, batch_size)
        self.num_batches = full + (1 if rest >= (world if train else 1) else 0)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        epoch_seed = 0
        if self.train:
            order = torch.randperm(len(self.split), generator=self.order_generator)[: self.rows]
            epoch_seed = int(torch.randint(2**62, (1,), generator=self.order_generator))
        else:
            order = torch.arange(self.rows)
        order = order.to(self.split.labels.device)
        for index in range(self.num_batches):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            mine = rows[self.rank :: self.world]
            if not len(mine):  # only validation can leave a rank without rows
                continue
            augment = None
            if self.train:  # rank 0 draws as a local run does; other ranks draw their own
                augment = torch.Generator().manual_seed(epoch_seed + index + 7919 * self.rank)
            yield self.datamodule.make_batch(self.split, mine, self.train, augment)


class WorkerSession:
    """One rank's share of a :class:`TrainJob`; also the small trainer the module sees there.

    The module asks its ``trainer`` for ``max_epochs`` and ``estimated_stepping_batches`` (to
    size OneCycle/cosine schedules) and :func:`~mnist_mlops.training.backends.local.train_epoch`
    asks for ``device``, ``precision`` and ``train_batch_finished``; this class answers those on
    a worker.
    """

    def __init__(self, job: TrainJob, rank: int, world: int, device: torch.device) -> None:
        self.job, self.rank, self.world, self.device = job, rank, world, device
        self.max_epochs = job.max_epochs
        self.memory_format = job.memory_format
        self.precision = resolve_precision(job.precision, device)
        torch.manual_seed(job.seed + rank)  # dropout masks differ per rank, as on one big batch
        self.module = job.module
        self.module.trainer = self
        self.net = self.module.net.to(device, memory_format=self.memory_format)
        self.module.to(device)
        data = job.datamodule
        data.generator = torch.Generator().manual_seed(job.seed + 7919 * (rank + 1))
        data.setup(device)
        self.train_batches = RankBatches(
            data,
            data.splits["train"],
            data.batch_size,
            rank,
            world,
            job.seed,
            job.limit_train_batches,
            train=True,
        )
        self.val_batches = RankBatches(
            data,
            data.splits["val"],
            data.eval_batch_size,
            rank,
            world,
            job.seed,
            job.limit_val_batches,
            train=False,
        )
        self.link = DriverLink(job.channel) if rank == 0 and job.channel else None
        self.epoch = 0
        self.stopped = False
        self._started = 0.0
        self._train_s = 0.0
        self._images = 0
        self._lr = 0.0

    # --- what the module and train_epoch ask of their trainer ------------------------------
    @property
    def estimated_stepping_batches(self) -> int:
        return self.job.estimated_stepping_batches

    def train_batch_finished(self, module: ClassifierModule, loss: Any, batch_idx: int) -> None:
        """Per-batch hooks stay on the driver side of a local run; workers report per epoch."""

    def to_device(self, batch: Batch) -> Batch:
        x, y = batch
        return x.to(self.device).contiguous(memory_format=self.memory_format), y.to(self.device)

    # --- the epoch protocol both backends follow ---------------------------------------------
    def start_epoch(self, optimizer: torch.optim.Optimizer) -> None:
        self._started = time.perf_counter()
        self._train_s = 0.0
        self._images = 0
        self._lr = float(optimizer.param_groups[0]["lr"])

    def train_finished(self, images: int) -> None:
        """The training pass of this epoch is over; ``images`` went through it on this rank."""
        self._train_s = time.perf_counter() - self._started
        self._images = int(images)

    @contextlib.contextmanager
    def wrapped(self, ddp_net: torch.nn.Module) -> Iterator[None]:
        """Route ``training_step``'s forward through DDP (gradient averaging) for a while."""
        self.module.net = ddp_net
        try:
            yield
        finally:
            self.module.net = self.net

    def finish_epoch(self) -> bool:
        """Validate, reduce metrics, report (rank 0); True when the driver says stop."""
        import torch.distributed as dist

        for buffer in self.net.buffers():  # every rank validates with rank 0's BN statistics
            dist.broadcast(buffer, src=0)
        images = torch.tensor([self._images], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(images)  # rows trained by all ranks together this epoch
        evaluate(self.module, self.val_batches, "validation", self.device, self.memory_format)
        stop = torch.zeros(1, dtype=torch.uint8, device=self._collective_device())
        if self.link is not None:
            logged = dict(self.module.logged)
            logged["train/images_per_s"] = float(images.item()) / max(self._train_s, 1e-9)
            report = EpochReport(
                epoch=self.epoch,
                logged=logged,
                lr=self._lr,
                epoch_time_s=time.perf_counter() - self._started,
                state={k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            )
            stop[0] = int(self.link.report_epoch(report))
        dist.broadcast(stop, src=0)
        self.epoch += 1
        self.stopped = bool(stop.item()) or self.epoch >= self.max_epochs
        return self.stopped

    def finish(self) -> None:
        if self.link is not None:
            self.link.done(self.epoch)

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def failures_reported(address: ChannelAddress | None, rank: int) -> Iterator[None]:
    """Send any exception of this rank to the driver, then let it propagate (the launcher sees
    the rank fail too)."""
    try:
        yield
    except BaseException as err:
        report_failure(address, rank, err)
        raise
