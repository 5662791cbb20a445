"""The driver-side trainer: epochs, device, callbacks and the best-validation checkpoint.

The trainer decides *what* happens around the steps (which epoch, whether to stop, which weights
are best, who gets told); the backend decides *where* the steps run (this process, Orca, Spark
DDP). Model selection reads val only (``monitor``/``monitor_mode``, set from the ``selection``
config group); the kept model (best epoch restored, BatchNorm recalibrated when asked) is then
re-validated, and that score (``val/acc_selected``, ``val/loss_selected``) is its validation score:
the one the registry ranks by. ``test`` runs once, on the same weights, for the report only.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mnist_mlops.training.batchnorm import recalibrate_batchnorm
from mnist_mlops.training.callbacks.base import Callback
from mnist_mlops.training.precision import resolve_precision

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import Backend
    from mnist_mlops.training.datamodule import MnistDataModule
    from mnist_mlops.training.module import ClassifierModule

DEVICES = ("auto", "cpu", "cuda")
# suffix of the re-validated scores of the kept model (``val/acc`` -> ``val/acc_selected``)
SELECTED_SUFFIX = "_selected"
_log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present; asking for CUDA without it is a clear error."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"trainer.device must be one of {DEVICES} (or cuda:N), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.device={device} but no CUDA device is available; use cpu or auto"
        )
    return torch.device(device)


class Trainer:
    """Lightning-shaped ``fit``/``test`` over a pluggable backend.

    The one object standing in for "the trainer" everywhere: the module, the epoch loop and
    the callbacks ask it for epochs, device, precision and schedule length. A distributed
    worker gets :meth:`for_worker`, a copy of this trainer without what stays on the driver.
    """

    def __init__(
        self,
        backend: Backend,
        epochs: int = 15,
        device: str = "auto",
        precision: str = "auto",
        deterministic: bool = False,
        callbacks: Sequence[Callback] = (),
        limit_train_batches: int | None = None,
        limit_val_batches: int | None = None,
        limit_test_batches: int | None = None,
        monitor: str = "val/acc",
        monitor_mode: str = "max",
        recalibrate_bn: bool = False,
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"trainer.epochs must be a positive integer, got {epochs!r}")
        for name, limit in (
            ("limit_train_batches", limit_train_batches),
            ("limit_val_batches", limit_val_batches),
            ("limit_test_batches", limit_test_batches),
        ):
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ValueError(
                    f"trainer.{name} must be null or a positive integer, got {limit!r}"
                )
        self.backend = backend
        self.max_epochs = epochs
        self.device = resolve_device(device)
        self.requested_precision = precision  # backends resolve it again on their workers' device
        self.precision = resolve_precision(precision, self.device)
        self.deterministic = deterministic
        self.callbacks = list(callbacks)
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        if monitor_mode not in ("max", "min"):
            raise ValueError(f"trainer.monitor_mode must be 'max' or 'min', got {monitor_mode!r}")
        self.monitor = monitor
        self.monitor_mode = monitor_mode
        self.recalibrate_bn = recalibrate_bn
        self.current_epoch = 0
        self.should_stop = False
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        # the kept model's validation scores, measured after fit() restored/recalibrated it
        self.selected_metrics: dict[str, float] = {}
        self.datamodule: MnistDataModule | None = None
        # set on a worker's copy: the driver's count (a rank cannot count the global batches)
        self._fixed_train_batches: int | None = None
        self._configure_determinism()

    def _configure_determinism(self) -> None:
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not self.deterministic

    # --- sizes the module and callbacks ask for ---------------------------------------------
    @property
    def num_train_batches(self) -> int:
        if self._fixed_train_batches is not None:
            return self._fixed_train_batches
        assert self.datamodule is not None, "fit() sets the datamodule"
        total = self.datamodule.num_train_batches()
        return min(total, self.limit_train_batches or total)

    @property
    def estimated_stepping_batches(self) -> int:
        return self.num_train_batches * self.max_epochs

    # --- on a distributed worker ------------------------------------------------------------
    def for_worker(self) -> Trainer:
        """This trainer as a worker process needs it (picklable): the same epochs, limits,
        precision setting and schedule length (``num_train_batches`` fixed to the driver's),
        without the backend, callbacks, data, history or checkpoint, which stay on the driver."""
        worker = copy.copy(self)
        worker._fixed_train_batches = self.num_train_batches
        worker.backend = None  # type: ignore[assignment]
        worker.callbacks = []
        worker.datamodule = None
        worker.history = []
        worker.best_state = None
        worker.selected_metrics = {}
        return worker

    def attach_device(self, device: torch.device) -> None:
        """On a worker: train on ``device`` (``precision: auto`` resolved for it)."""
        self.device = device
        self.precision = resolve_precision(self.requested_precision, device)
        self._configure_determinism()

    # --- the Lightning-shaped API -----------------------------------------------------------
    def fit(self, module: ClassifierModule, datamodule: MnistDataModule) -> None:
        """Train for ``max_epochs`` (or until a callback stops it) and keep the best-val weights
        (with ``recalibrate_bn``, their BatchNorm statistics recomputed on clean training data)."""
        datamodule.setup(self.device)
        self.datamodule = datamodule
        module.trainer = self
        for callback in self.callbacks:
            callback.on_fit_start(self, module)
        self.backend.fit(module, datamodule, self)
        if self.best_state is not None:
            module.net.load_state_dict(self.best_state)
        if self.recalibrate_bn:
            module.to(self.device)
            recalibrate_batchnorm(module.net, datamodule.clean_train_dataloader(), self.device)
        self.selected_metrics = self.validate_selected(module, datamodule)
        _log.info(
            "selected epoch %s by %s (%s): re-validated %s",
            None if self.best_epoch is None else self.best_epoch + 1,
            self.monitor,
            self.monitor_mode,
            ", ".join(f"{k}={v:.4f}" for k, v in self.selected_metrics.items()),
        )
        for callback in self.callbacks:
            callback.on_fit_end(self, module)

    @torch.inference_mode()
    def validate_selected(
        self, module: ClassifierModule, datamodule: MnistDataModule
    ) -> dict[str, float]:
        """Accuracy and NLL on val (float32, on the driver) of the weights fit() keeps.

        Why: the best epoch's ``val/acc`` was measured before BatchNorm recalibration, so it is
        not the score of the model that is tested, logged and served; this one is.
        """
        module.to(self.device)
        was_training = module.net.training
        module.net.eval()
        correct, loss_sum, seen = 0, 0.0, 0
        try:
            for index, (x, y) in enumerate(datamodule.val_dataloader()):
                if self.limit_val_batches and index >= self.limit_val_batches:
                    break
                x, y = x.to(self.device).float(), y.to(self.device)
                log_probs = module.net(x).float()
                correct += int((log_probs.argmax(dim=1) == y).sum())
                loss_sum += float(torch.nn.functional.nll_loss(log_probs, y, reduction="sum"))
                seen += int(y.numel())
        finally:
            module.net.train(was_training)
        seen = max(seen, 1)
        return {
            f"val/acc{SELECTED_SUFFIX}": correct / seen,
            f"val/loss{SELECTED_SUFFIX}": loss_sum / seen,
        }

    def test(self, module: ClassifierModule, datamodule: MnistDataModule) -> dict[str, float]:
        """Evaluate the test split once with the module's current (best-val) weights.

        The returned metrics (logged by the callbacks) also carry the kept model's re-validated
        ``val/*_selected`` scores from fit(), so the run records both with the model.
        """
        datamodule.setup(self.device)
        self.datamodule = datamodule
        module.trainer = self
        metrics = {**self.backend.test(module, datamodule, self), **self.selected_metrics}
        for callback in self.callbacks:
            callback.on_test_end(self, module, metrics)
        return metrics

    # --- hooks the backends call on the driver ----------------------------------------------
    def train_epoch_started(self, module: ClassifierModule) -> None:
        for callback in self.callbacks:
            callback.on_train_epoch_start(self, module)

    def train_batch_finished(self, module: ClassifierModule, loss: Any, batch_idx: int) -> None:
        for callback in self.callbacks:
            callback.on_train_batch_end(self, module, loss, batch_idx)

    def epoch_finished(self, module: ClassifierModule, metrics: dict[str, float]) -> None:
        """Record an epoch, snapshot the weights when ``monitor`` improved, tell the callbacks."""
        if self.monitor not in metrics:
            raise KeyError(
                f"monitor {self.monitor!r} not among the epoch metrics {sorted(metrics)}"
            )
        metrics = dict(metrics)
        self.history.append(metrics)
        score = metrics[self.monitor]
        sign = 1.0 if self.monitor_mode == "max" else -1.0
        if self.best_score is None or sign * (score - self.best_score) > 0:
            self.best_score, self.best_epoch = score, self.current_epoch
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in module.net.state_dict().items()
            }
        try:
            for callback in self.callbacks:
                callback.on_validation_epoch_end(self, module, metrics)
        finally:
            self.current_epoch += 1
