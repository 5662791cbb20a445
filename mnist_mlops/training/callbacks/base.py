"""Driver-side hooks the trainer calls; loggers (MLflow), progress bars and pruners plug in here.

Callbacks keep the training core free of tracking and sweep dependencies: MLflow and Optuna are
imported only by the callback classes that need them (``mnist_mlops.tracking``, :mod:`.pruning`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import TrainerView as Trainer
    from mnist_mlops.training.module import ClassifierModule


class TrainingInterrupted(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised by a callback to stop a run on purpose (e.g. a pruned sweep trial).

    The entrypoint marks such runs KILLED instead of FAILED.
    """


class Callback:
    """No-op base; override the hooks you need (names follow Lightning)."""

    def on_fit_start(self, trainer: Trainer, module: ClassifierModule) -> None: ...

    def on_train_batch_end(
        self, trainer: Trainer, module: ClassifierModule, loss: Any, batch_idx: int
    ) -> None: ...

    def on_train_epoch_start(self, trainer: Trainer, module: ClassifierModule) -> None: ...

    def on_validation_epoch_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        """Once per epoch with that epoch's train/val metrics, ``lr`` and ``epoch_time_s``."""

    def on_fit_end(self, trainer: Trainer, module: ClassifierModule) -> None: ...

    def on_test_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None: ...
