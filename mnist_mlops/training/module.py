"""The Lightning-shaped classifier module: what one training/validation/test step means.

The module owns the network, the loss, the metrics and how optimizers are built; it knows
nothing about devices, loops or logging backends, so the same module runs under every backend
(local, Orca, Spark DDP). The method names follow ``lightning.LightningModule`` so the module can
be wrapped by the real Lightning Trainer later without changes to the steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.training.losses import ClassificationLoss

Batch = tuple[torch.Tensor, torch.Tensor]
SCHEDULER_INTERVALS = ("epoch", "step")
# Scheduler arguments that mean "how long the schedule is"; filled in from the trainer.
_SCHEDULE_LENGTH_ARGS = ("total_steps", "T_max")


class ClassifierModule(nn.Module):
    """Classifier over a log-softmax network, with torchmetrics for every split.

    Training minimises ``loss`` (NLL by default; label smoothing or distillation from the
    ``model/loss`` group); validation and test always measure plain NLL.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        name: str = "model",
        loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(
                f"model.scheduler_interval must be one of {SCHEDULER_INTERVALS}, "
                f"got {scheduler_interval!r}"
            )
        self.net = net
        self.name = name
        self.criterion = loss if loss is not None else ClassificationLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.trainer: Any = None  # attached by the Trainer, as in Lightning
        self.logged: dict[str, float] = {}
        metric_args = {"num_classes": NUM_CLASSES, "average": "micro", "validate_args": False}
        self.train_acc = MulticlassAccuracy(**metric_args)
        self.val_acc = MulticlassAccuracy(**metric_args)
        self.test_acc = MulticlassAccuracy(**metric_args)
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.test_confusion = MulticlassConfusionMatrix(NUM_CLASSES, validate_args=False)
        self.confusion_matrix: torch.Tensor | None = None  # [true, predicted], after a test run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def log(self, name: str, value: torch.Tensor | float) -> None:
        """Record an epoch-level value; the trainer hands ``logged`` to callbacks (MLflow, bar)."""
        self.logged[name] = float(value)

    def _shared_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        log_probs = self(x)
        return F.nll_loss(log_probs, y), log_probs.detach(), y

    # --- training ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        log_probs = self(x)
        loss = self.criterion(log_probs, y, x)
        self.train_loss.update(loss.detach(), y.numel())
        self.train_acc.update(log_probs.detach(), y)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute())
        self.train_loss.reset()
        self.train_acc.reset()

    # --- validation -------------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, log_probs, y = self._shared_step(batch)
        self.val_loss.update(loss, y.numel())
        self.val_acc.update(log_probs, y)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc_best.update(acc)
        self.log("val/loss", self.val_loss.compute())
        self.log("val/acc", acc)
        self.log("val/acc_best", self.val_acc_best.compute())
        self.val_loss.reset()
        self.val_acc.reset()

    # --- test -------------------------------------------------------------------------------
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, log_probs, y = self._shared_step(batch)
        self.test_loss.update(loss, y.numel())
        self.test_acc.update(log_probs, y)
        self.test_confusion.update(log_probs.argmax(dim=1), y)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss.compute())
        self.log("test/acc", self.test_acc.compute())
        self.confusion_matrix = self.test_confusion.compute().cpu()
        self.test_loss.reset()
        self.test_acc.reset()
        self.test_confusion.reset()

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """Optimizer (and scheduler) from the ``_partial_`` configs, as Lightning expects them."""
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        factory = _with_schedule_length(self.scheduler_factory, self._schedule_length())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": factory(optimizer=optimizer),
                "interval": self.scheduler_interval,
            },
        }

    def _schedule_length(self) -> int:
        if self.trainer is None:
            raise RuntimeError("configure_optimizers needs the trainer attached (module.trainer)")
        if self.scheduler_interval == "step":
            return int(self.trainer.estimated_stepping_batches)
        return int(self.trainer.max_epochs)


def _with_schedule_length(factory: Callable[..., Any], length: int) -> Callable[..., Any]:
    """Fill OneCycleLR's ``total_steps`` / cosine's ``T_max`` unless the config set them."""
    func = factory.func if isinstance(factory, partial) else factory
    given = factory.keywords if isinstance(factory, partial) else {}
    try:
        accepted = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return factory
    missing = {a: length for a in _SCHEDULE_LENGTH_ARGS if a in accepted and given.get(a) is None}
    return partial(factory, **missing) if missing else factory
