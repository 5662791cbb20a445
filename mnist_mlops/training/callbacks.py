"""Driver-side hooks the trainer calls; loggers (MLflow), progress bars and pruners plug in here.

Callbacks keep the training core free of tracking and sweep dependencies: MLflow and Optuna are
imported only by the callback classes that need them (``mnist_mlops.tracking``, the sweeper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_mlops.training.module import ClassifierModule
    from mnist_mlops.training.trainer import Trainer


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


class ProgressBar(Callback):
    """A tqdm bar per epoch showing the live loss and running accuracy."""

    def __init__(self, refresh_every: int = 20) -> None:
        self.refresh_every = refresh_every
        self._bar: Any = None

    def on_train_epoch_start(self, trainer: Trainer, module: ClassifierModule) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.num_train_batches,
            desc=f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
            leave=False,
            dynamic_ncols=True,
        )

    def on_train_batch_end(
        self, trainer: Trainer, module: ClassifierModule, loss: Any, batch_idx: int
    ) -> None:
        if self._bar is None:
            return
        if (batch_idx + 1) % self.refresh_every == 0:
            # .item() syncs a GPU, so only every ``refresh_every`` batches
            self._bar.set_postfix(
                loss=f"{float(loss):.4f}",
                acc=f"{float(module.train_acc.compute()):.4f}",
                refresh=False,
            )
            self._bar.update(self.refresh_every)

    def on_validation_epoch_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        shown = ("train/loss", "train/acc", "val/loss", "val/acc", "epoch_time_s")
        text = "  ".join(f"{k}={metrics[k]:.4f}" for k in shown if k in metrics)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {text}", flush=True)
