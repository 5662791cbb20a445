"""Driver-side hooks the trainer calls; loggers (MLflow), progress bars and pruners plug in here.

Callbacks keep the training core free of tracking and sweep dependencies: MLflow and Optuna are
imported only by the callback classes that need them (``mnist_mlops.tracking``, the sweeper).
"""

from __future__ import annotations

import time
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


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``4000`` -> ``1h06m40s``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ConsoleProgress(Callback):
    """One plain line per epoch (loss, accuracy, epoch time, ETA) on stdout.

    Plain lines, not a bar: under ``dvc repro`` or a retrain's log file there is no terminal,
    and a long run still has to say where it is. The ETA is the mean epoch time so far times
    the epochs left.
    """

    shown = ("train/loss", "train/acc", "val/loss", "val/acc")

    def __init__(self) -> None:
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: Trainer, module: ClassifierModule) -> None:
        self._fit_start = time.perf_counter()
        print(
            f"training: {trainer.max_epochs} epochs x {trainer.num_train_batches} batches"
            f" on {trainer.device} ({trainer.precision})",
            flush=True,
        )

    def epoch_line(self, trainer: Trainer, metrics: dict[str, float]) -> str:
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - (self._fit_start or time.perf_counter())
        epoch_s = metrics.get("epoch_time_s", elapsed / done)
        eta = elapsed / done * (trainer.max_epochs - done)
        text = "  ".join(f"{k}={metrics[k]:.4f}" for k in self.shown if k in metrics)
        return (
            f"epoch {done}/{trainer.max_epochs}  {text}  time={format_duration(epoch_s)}"
            f"  ETA {format_duration(eta)}"
        )

    def on_validation_epoch_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        print(self.epoch_line(trainer, metrics), flush=True)

    def on_test_end(
        self, trainer: Trainer, module: ClassifierModule, metrics: dict[str, float]
    ) -> None:
        text = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"test (best epoch {(trainer.best_epoch or 0) + 1}): {text}", flush=True)


class ProgressBar(ConsoleProgress):
    """A tqdm bar per epoch showing the live loss and running accuracy, then the epoch line."""

    def __init__(self, refresh_every: int = 20) -> None:
        super().__init__()
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
        super().on_validation_epoch_end(trainer, module, metrics)
