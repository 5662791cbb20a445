"""Progress on the console: one plain line per epoch, or a live tqdm bar."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mnist_mlops.training.callbacks.base import Callback

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import TrainerView as Trainer
    from mnist_mlops.training.module import ClassifierModule


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
