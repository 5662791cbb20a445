"""Backends: WHERE the training steps of a Lightning-style module run.

A backend is chosen with the ``backend`` config group (``conf/backend/<name>.yaml`` holds a
``_target_`` to its class), so adding one is a YAML file plus a class, never an ``if`` in the
entrypoint. Every backend receives the same objects:

- ``module``: a :class:`~mnist_mlops.training.module.ClassifierModule` (``training_step``,
  ``validation_step``, ``test_step``, ``configure_optimizers``, ``on_*_epoch_end`` hooks that fill
  ``module.logged``);
- ``datamodule``: a :class:`~mnist_mlops.training.datamodule.MnistDataModule` (already ``setup``);
- ``trainer``: the driver-side :class:`~mnist_mlops.training.trainer.Trainer`, which owns the
  epoch count, device, batch limits, callbacks (MLflow logging, progress bar, pruning) and the
  best-weights checkpoint.

The contract a backend must keep (see :class:`Backend`):

``fit(module, datamodule, trainer)``
    Run ``trainer.max_epochs`` epochs unless ``trainer.should_stop`` turns true. After each epoch,
    on the driver, with the driver's ``module`` holding the current weights, call
    ``trainer.epoch_finished(module, metrics)`` where ``metrics`` holds ``train/loss``,
    ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``lr`` and ``epoch_time_s``
    (``module.logged`` after the epoch hooks, plus the two timing/lr values). A distributed
    backend averages gradients across workers, syncs the weights back to the driver's module
    before that call, and reduces the metric states (torchmetrics ``sync``) first.
    Per-batch hooks (``trainer.train_batch_finished``) are optional for remote backends.

``test(module, datamodule, trainer) -> dict``
    Evaluate ``test_step`` over the whole test split once and return ``module.logged`` (with
    ``test/loss`` and ``test/acc``; ``module.confusion_matrix`` set).

Loggers never live in a backend: MLflow logging happens in driver callbacks, so remote workers
need neither MLflow nor Spark to import the module. The loop helpers in
:mod:`mnist_mlops.training.backends.local` (``train_epoch``, ``evaluate``) run one epoch of a
module on one process and are meant to be reused by worker-side code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mnist_mlops.training.datamodule import MnistDataModule
    from mnist_mlops.training.module import ClassifierModule
    from mnist_mlops.training.trainer import Trainer


class Backend(Protocol):
    """What the :class:`~mnist_mlops.training.trainer.Trainer` needs from a backend."""

    #: short name, logged as the ``backend`` tag of the MLflow run
    name: str

    def fit(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: Trainer
    ) -> None: ...

    def test(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: Trainer
    ) -> dict[str, Any]: ...
