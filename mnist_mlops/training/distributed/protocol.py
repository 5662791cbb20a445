"""What the driver and the workers send each other: the job out, epoch reports back.

The driver pickles one :class:`TrainJob` into every worker. Rank 0 answers each epoch with an
:class:`EpochReport` (reduced metrics and the weights) and gets back whether to stop; at the
end it sends :class:`TrainingDone`. Any rank that fails sends :class:`WorkerFailed`. The wire
(an authenticated socket) is in :mod:`.channel`.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import TrainerView
    from mnist_mlops.training.datamodule import MnistDataModule
    from mnist_mlops.training.module import ClassifierModule


class DistributedTrainingError(RuntimeError):
    """Training on the workers failed; the message carries the failing worker's traceback."""


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


def send(conn: Connection, message: Any) -> None:
    # Plain pickle, not Connection.send: torch registers ForkingPickler reductions that pass
    # tensors as shared-memory handles, which mean nothing on another process or machine.
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


@dataclass
class TrainJob:
    """Everything a worker needs, picklable and small: the module (without its trainer), the
    data module without loaded data, the trainer's worker copy (epochs, limits, precision,
    schedule length), the run's seed and where to report."""

    module: ClassifierModule
    datamodule: MnistDataModule
    trainer: TrainerView
    seed: int
    use_gpu: bool
    channels_last: bool
    channel: ChannelAddress | None = None

    @classmethod
    def from_driver(
        cls,
        module: ClassifierModule,
        datamodule: MnistDataModule,
        trainer: TrainerView,
        use_gpu: bool,
        channels_last: bool,
    ) -> TrainJob:
        attached = module.trainer
        module.trainer = None  # the driver's trainer holds callbacks, MLflow state and the data
        try:
            shipped = copy.deepcopy(module).cpu()
        finally:
            module.trainer = attached
        return cls(
            module=shipped,
            datamodule=datamodule.detached(),  # workers read the Parquet splits themselves
            trainer=trainer.for_worker(),
            seed=int(datamodule.generator.initial_seed()),
            use_gpu=use_gpu,
            channels_last=channels_last,
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format
