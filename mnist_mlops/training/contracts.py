"""What the parts of training ask of each other, as types: the trainer seen from below, a backend.

Why a module of protocols: the loop, the backends and the callbacks all receive the trainer,
and the trainer receives a backend and callbacks. Typing each against the concrete class made
the package's only import circle (trainer -> backends -> trainer, trainer -> callbacks ->
trainer). Here the dependency points one way: everything imports this leaf module, the
:class:`~mnist_mlops.training.trainer.Trainer` satisfies :class:`TrainerView`, and nothing
below the trainer imports it.

Layering inside ``mnist_mlops.training`` (a module may import only from the lines above it)::

    contracts, precision, batchnorm, losses, module, datamodule, streaming
    callbacks (base, progress, pruning), loop
    backends.local (the loop in this process)
    distributed (protocol, channel, sampler, worker, orca_worker, driver)
    backends.spark_ddp, backends.orca (launchers of the distributed workers)
    trainer

``tests/test_import_graph.py`` checks that the whole package's import graph has no circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from mnist_mlops.training.datamodule import MnistDataModule
    from mnist_mlops.training.module import ClassifierModule


class TrainerView(Protocol):
    """The trainer as the module, the epoch loop, backends and callbacks see it.

    On the driver this is the :class:`~mnist_mlops.training.trainer.Trainer`; on a distributed
    worker it is that trainer's :meth:`~mnist_mlops.training.trainer.Trainer.for_worker` copy
    (same epochs, limits and schedule length; no callbacks, backend or data).
    """

    max_epochs: int
    current_epoch: int
    device: torch.device
    precision: str
    requested_precision: str
    limit_train_batches: int | None
    limit_val_batches: int | None
    limit_test_batches: int | None
    should_stop: bool
    best_epoch: int | None

    @property
    def num_train_batches(self) -> int: ...

    @property
    def estimated_stepping_batches(self) -> int: ...

    def train_epoch_started(self, module: ClassifierModule) -> None: ...

    def train_batch_finished(self, module: ClassifierModule, loss: Any, batch_idx: int) -> None: ...

    def epoch_finished(self, module: ClassifierModule, metrics: dict[str, float]) -> None: ...

    def for_worker(self) -> TrainerView: ...

    def attach_device(self, device: torch.device) -> None: ...


class Backend(Protocol):
    """WHERE the epochs run (this process, DDP workers on Spark); see :mod:`.backends`."""

    #: short name, logged as the ``backend`` tag of the MLflow run
    name: str

    def fit(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: TrainerView
    ) -> None: ...

    def test(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: TrainerView
    ) -> dict[str, Any]: ...
