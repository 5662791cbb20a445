"""Model selection: which epoch's weights the trainer keeps for testing."""

from __future__ import annotations

import torch
from torch import nn

from mnist_mlops.training.backends.local import LocalBackend
from mnist_mlops.training.module import ClassifierModule
from mnist_mlops.training.trainer import Trainer


def test_selection_on_a_loss_keeps_the_lowest_epoch() -> None:
    module = ClassifierModule(nn.Linear(2, 2), optimizer=lambda params: None)
    trainer = Trainer(
        backend=LocalBackend(num_threads=1), device="cpu", monitor="val/loss", monitor_mode="min"
    )
    for epoch, loss in enumerate([0.5, 0.2, 0.3, 0.2]):
        with torch.no_grad():
            module.net.weight.fill_(epoch)
        trainer.epoch_finished(module, {"val/loss": loss})
    assert trainer.best_epoch == 1 and trainer.best_score == 0.2  # the first of the tied minima
    assert trainer.best_state is not None and float(trainer.best_state["weight"][0, 0]) == 1.0
