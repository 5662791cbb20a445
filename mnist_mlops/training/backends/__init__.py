"""Backends: WHERE the epochs of a Lightning-style module run (Lightning calls this a strategy).

A backend is chosen with the ``backend`` config group (``conf/backend/<name>.yaml`` holds a
``_target_`` to its class), so adding one is a YAML file plus a class, never an ``if`` in the
entrypoint. Every backend receives the same objects:

- ``module``: a :class:`~mnist_mlops.training.module.ClassifierModule` (``training_step``,
  ``validation_step``, ``test_step``, ``configure_optimizers``, ``on_*_epoch_end`` hooks that fill
  ``module.logged``);
- ``datamodule``: a :class:`~mnist_mlops.training.datamodule.MnistDataModule` (already ``setup``);
- ``trainer``: the driver-side :class:`~mnist_mlops.training.trainer.Trainer` (typed as
  :class:`~mnist_mlops.training.contracts.TrainerView`), which owns the epoch count, device,
  batch limits, callbacks (MLflow logging, progress bar, pruning) and the best-weights checkpoint.

and every backend runs the same epoch loop, :class:`~mnist_mlops.training.loop.EpochLoop`:

- ``local`` (:mod:`.local`): in this process;
- ``spark_ddp`` (:mod:`.spark_ddp`) and ``orca`` (:mod:`.orca`): these modules only *launch* N
  worker processes on Spark; the driver half, the driver<->worker protocol and the worker side
  are shared, in :mod:`mnist_mlops.training.distributed`.

The contract (:class:`~mnist_mlops.training.contracts.Backend`):

``fit(module, datamodule, trainer)``
    Run ``trainer.max_epochs`` epochs unless ``trainer.should_stop`` turns true. After each epoch,
    on the driver, with the driver's ``module`` holding the current weights, call
    ``trainer.epoch_finished(module, metrics)`` where ``metrics`` holds ``train/loss``,
    ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``lr``, ``epoch_time_s`` and
    ``train/images_per_s``. Per-batch hooks (``trainer.train_batch_finished``) are optional for
    remote backends.

``test(module, datamodule, trainer) -> dict``
    Evaluate ``test_step`` over the whole test split once and return ``module.logged``'s
    ``test/*`` values (``module.confusion_matrix`` set).

Loggers never live in a backend: MLflow logging happens in driver callbacks, so remote workers
need neither MLflow nor Spark to import the module.
"""

from __future__ import annotations

from mnist_mlops.training.contracts import Backend

__all__ = ["Backend"]
