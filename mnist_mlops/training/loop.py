"""The one epoch loop: what a training epoch is, whichever backend runs it and wherever.

Every backend runs :class:`EpochLoop`: ``backend=local`` in this process, ``spark_ddp`` in each
``torchrun`` rank, ``orca`` from inside Orca's own batch loop (its hooks call the loop's steps
one by one). An epoch is: record the learning rate, a training pass (``training_step`` in the
trainer's precision, backward, optimizer step, per-step scheduler, ``train_batch_finished``),
``on_train_epoch_end``, the per-epoch scheduler step, a float32 validation pass, then the
epoch's metrics (``module.logged`` plus ``lr``, ``epoch_time_s``, ``train/images_per_s``) go to
the :class:`Ranks` the loop runs in, which says whether to stop. What differs between one
process and N DDP ranks (gradient averaging, BatchNorm buffers, summed image counts, who tells
the trainer) is all in the :class:`Ranks` object.

CPU speed matters (the 2-core target machine): the model and every batch use the
channels_last memory format, which oneDNN convolutions run 10-30% faster than NCHW, and the
loop does no per-batch host work beyond the optimizer step (metrics accumulate on-device).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mnist_mlops.training.precision import forward_context

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import TrainerView
    from mnist_mlops.training.module import ClassifierModule

Batch = tuple[torch.Tensor, torch.Tensor]


class Ranks(Protocol):
    """The processes one training runs in, as the loop needs them."""

    def epoch_started(self, module: ClassifierModule) -> None:
        """Before an epoch's training pass."""

    def training(self, module: ClassifierModule) -> contextlib.AbstractContextManager[None]:
        """The context of the training pass (DDP: the forward goes through the DDP wrapper)."""

    def before_validation(self, net: torch.nn.Module) -> None:
        """Make the ranks' models identical for validation (DDP: rank 0's BatchNorm buffers)."""

    def images_seen(self, images: int) -> float:
        """Images trained this epoch by all ranks together."""

    def epoch_finished(self, module: ClassifierModule, metrics: dict[str, float]) -> bool:
        """The epoch's metrics (reduced over ranks); True to stop training."""


class SingleProcess:
    """:class:`Ranks` of a run that is one process: the epoch goes straight to the trainer."""

    def __init__(self, trainer: TrainerView) -> None:
        self.trainer = trainer

    def epoch_started(self, module: ClassifierModule) -> None:
        self.trainer.train_epoch_started(module)

    def training(self, module: ClassifierModule) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def before_validation(self, net: torch.nn.Module) -> None:
        return None

    def images_seen(self, images: int) -> float:
        return float(images)

    def epoch_finished(self, module: ClassifierModule, metrics: dict[str, float]) -> bool:
        self.trainer.epoch_finished(module, metrics)
        return self.trainer.should_stop


class EpochLoop:
    """Fit epochs of a module: the optimizer and schedulers, and each epoch's steps.

    ``optimizers`` is what ``configure_optimizers`` returned, when the caller had to build the
    optimizer first (Orca asks for it through its own creator); by default the loop asks.
    """

    def __init__(
        self,
        module: ClassifierModule,
        trainer: TrainerView,
        memory_format: torch.memory_format = torch.contiguous_format,
        optimizers: dict[str, Any] | None = None,
    ) -> None:
        self.module, self.trainer, self.memory_format = module, trainer, memory_format
        config = optimizers if optimizers is not None else module.configure_optimizers()
        self.optimizer: torch.optim.Optimizer = config["optimizer"]
        schedule = config.get("lr_scheduler") or {}
        self.scheduler: Any = schedule.get("scheduler")
        self.per_step = self.scheduler is not None and schedule.get("interval") == "step"
        self._started = 0.0
        self._train_s = 0.0
        self._lr = 0.0
        self._images = 0

    # --- the whole fit, for backends that own their batch loop -------------------------------
    def run(
        self,
        train_batches: Callable[[], Iterable[Batch]],
        val_batches: Callable[[], Iterable[Batch]],
        ranks: Ranks,
    ) -> int:
        """Up to ``trainer.max_epochs`` epochs (``train_batches()`` is called once per epoch);
        returns the number of epochs run."""
        epochs = 0
        for _ in range(self.trainer.max_epochs):
            self.start_epoch(ranks)
            with ranks.training(self.module):
                for batch_idx, batch in enumerate(train_batches()):
                    self.optimizer_step(self.training_step(batch, batch_idx), batch_idx)
            self.end_training()
            epochs += 1
            if self.finish_epoch(val_batches(), ranks):
                break
        return epochs

    # --- the steps of one epoch (Orca calls them from its own loop) ---------------------------
    def start_epoch(self, ranks: Ranks) -> None:
        self._started = time.perf_counter()
        self._lr = float(self.optimizer.param_groups[0]["lr"])
        self._images = 0
        ranks.epoch_started(self.module)
        self.module.train()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The forward and loss, in the trainer's (resolved) precision."""
        device = self.trainer.device
        self._images += int(batch[1].shape[0])
        with forward_context(self.trainer.precision, device):
            return self.module.training_step(
                to_device(batch, device, self.memory_format), batch_idx
            )

    def optimizer_step(self, loss: torch.Tensor, batch_idx: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.per_step:
            self.scheduler.step()
        self.trainer.train_batch_finished(self.module, loss, batch_idx)

    def end_training(self) -> None:
        """The training pass is over: its metrics, and the per-epoch scheduler step."""
        self._train_s = time.perf_counter() - self._started
        self.module.on_train_epoch_end()
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step()

    def finish_epoch(self, val_batches: Iterable[Batch], ranks: Ranks) -> bool:
        """Validate, hand the epoch's metrics to ``ranks``; True when training should stop."""
        ranks.before_validation(self.module.net)
        images = ranks.images_seen(self._images)
        evaluate(self.module, val_batches, "validation", self.trainer.device, self.memory_format)
        metrics = dict(self.module.logged)
        metrics["train/images_per_s"] = images / max(self._train_s, 1e-9)
        metrics["lr"] = self._lr
        metrics["epoch_time_s"] = time.perf_counter() - self._started
        return bool(ranks.epoch_finished(self.module, metrics))


def limited(batches: Iterable[Any], limit: int | None) -> Iterable[Any]:
    """The first ``limit`` batches (all when ``limit`` is None), as ``trainer.limit_*`` mean."""
    return islice(batches, limit) if limit else batches


def to_device(
    batch: Batch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> Batch:
    x, y = batch
    x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return x, y.to(device, non_blocking=True)


@torch.inference_mode()
def evaluate(
    module: ClassifierModule,
    batches: Iterable[Batch],
    stage: str,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> None:
    """``validation_step``/``test_step`` over ``batches`` (float32) then the epoch-end hook."""
    module.eval()
    step = module.validation_step if stage == "validation" else module.test_step
    for batch_idx, batch in enumerate(batches):
        step(to_device(batch, device, memory_format), batch_idx)
    if stage == "validation":
        module.on_validation_epoch_end()
    else:
        module.on_test_epoch_end()
