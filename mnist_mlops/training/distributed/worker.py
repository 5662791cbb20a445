"""The worker side: one DDP rank running the epoch loop on its share of the data.

Every rank rebuilds the module from the :class:`~.protocol.TrainJob`, gets the trainer's worker
copy (the same object type the module sees on the driver) and runs
:class:`~mnist_mlops.training.loop.EpochLoop` with a :class:`WorkerSession` as its
:class:`~mnist_mlops.training.loop.Ranks`: the training forward goes through DDP (gradient
averaging), every rank validates its share of ``val`` with rank 0's BatchNorm statistics, the
torchmetrics states are reduced across ranks when computed, and rank 0 reports each epoch to
the driver and broadcasts its stop decision. :func:`ddp_worker` is the entry ``spark_ddp``
launches; Orca enters through :mod:`.orca_worker`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import torch

from mnist_mlops.training.distributed.channel import DriverLink, failures_reported
from mnist_mlops.training.distributed.protocol import EpochReport
from mnist_mlops.training.distributed.sampler import RankBatches, StreamedRankBatches
from mnist_mlops.training.loop import EpochLoop

if TYPE_CHECKING:
    from mnist_mlops.training.distributed.protocol import TrainJob
    from mnist_mlops.training.module import ClassifierModule

Batch = tuple[torch.Tensor, torch.Tensor]


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


class WorkerSession:
    """One rank's share of a :class:`~.protocol.TrainJob`: its module on its device, its
    batches, and (rank 0) the link to the driver; the loop's :class:`Ranks` on a worker."""

    def __init__(self, job: TrainJob, rank: int, world: int, device: torch.device) -> None:
        self.job, self.rank, self.world, self.device = job, rank, world, device
        self.trainer = job.trainer
        self.trainer.attach_device(device)
        self.memory_format = job.memory_format
        torch.manual_seed(job.seed + rank)  # dropout masks differ per rank, as on one big batch
        self.module = job.module
        self.module.trainer = self.trainer
        self.net = self.module.net.to(device, memory_format=self.memory_format)
        self.module.to(device)
        data = job.datamodule
        data.generator = torch.Generator().manual_seed(job.seed + 7919 * (rank + 1))
        self.train_batches: Iterable[Batch]
        if data.streaming:  # this rank reads only its shard of the row groups
            self.train_batches = StreamedRankBatches(
                data,  # type: ignore[arg-type]
                rank,
                world,
                self.trainer.limit_train_batches,
            )
        else:
            data.setup(device)
            self.train_batches = RankBatches(
                data,
                data.splits["train"],
                data.batch_size,
                rank,
                world,
                job.seed,
                self.trainer.limit_train_batches,
                train=True,
            )
        self.val_batches = RankBatches(
            data,
            data.splits["val"],
            data.eval_batch_size,
            rank,
            world,
            job.seed,
            self.trainer.limit_val_batches,
            train=False,
        )
        self.link = DriverLink(job.channel) if rank == 0 and job.channel else None
        self.ddp_net: torch.nn.Module | None = None  # set once DDP has wrapped ``net``
        self.epoch = 0
        self.stopped = False

    # --- the loop's Ranks ---------------------------------------------------------------------
    def epoch_started(self, module: ClassifierModule) -> None:
        """The driver runs the epoch-start callbacks itself."""

    @contextlib.contextmanager
    def training(self, module: ClassifierModule) -> Iterator[None]:
        """Route ``training_step``'s forward through DDP (gradient averaging) for a while."""
        if self.ddp_net is None:
            raise RuntimeError("the DDP wrapper must be set before training")
        module.net = self.ddp_net
        try:
            yield
        finally:
            module.net = self.net

    def before_validation(self, net: torch.nn.Module) -> None:
        import torch.distributed as dist

        for buffer in self.net.buffers():  # every rank validates with rank 0's BN statistics
            dist.broadcast(buffer, src=0)

    def images_seen(self, images: int) -> float:
        import torch.distributed as dist

        total = torch.tensor([images], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(total)  # rows trained by all ranks together this epoch
        return float(total.item())

    def epoch_finished(self, module: ClassifierModule, metrics: dict[str, float]) -> bool:
        """Rank 0 reports the epoch and asks the driver; every rank gets its answer."""
        import torch.distributed as dist

        stop = torch.zeros(1, dtype=torch.uint8, device=self._collective_device())
        if self.link is not None:
            logged = {k: v for k, v in metrics.items() if k not in ("lr", "epoch_time_s")}
            report = EpochReport(
                epoch=self.epoch,
                logged=logged,
                lr=metrics["lr"],
                epoch_time_s=metrics["epoch_time_s"],
                state={k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            )
            stop[0] = int(self.link.report_epoch(report))
        dist.broadcast(stop, src=0)
        self.epoch += 1
        self.stopped = bool(stop.item()) or self.epoch >= self.trainer.max_epochs
        return self.stopped

    def finish(self) -> None:
        if self.link is not None:
            self.link.done(self.epoch)

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


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
            session.ddp_net = DistributedDataParallel(
                session.net, device_ids=[device.index] if device.type == "cuda" else None
            )
            loop = EpochLoop(session.module, session.trainer, session.memory_format)
            loop.run(lambda: session.train_batches, lambda: session.val_batches, session)
            session.finish()
        finally:
            dist.destroy_process_group()
