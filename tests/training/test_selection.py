"""Model selection: which epoch's weights the trainer keeps, and the score it is known by."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.splits import load_split
from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.tracking.registry import score_model
from mnist_mlops.training.backends.local import LocalBackend
from mnist_mlops.training.datamodule import MnistDataModule, RandomAffine
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


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 10), nn.LogSoftmax(dim=1),
    )  # fmt: skip


def _fit(processed_dir: Path, recalibrate: bool) -> tuple[Trainer, ClassifierModule]:
    torch.manual_seed(0)
    module = ClassifierModule(
        _bn_net(), optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)
    )
    data = MnistDataModule(
        processed_dir,
        batch_size=32,
        eval_batch_size=64,
        augmentation=RandomAffine(degrees=30, translate=0.2),
        seed=1,
    )
    trainer = Trainer(
        backend=LocalBackend(num_threads=1),
        epochs=3,
        device="cpu",
        precision="32-true",
        limit_train_batches=4,
        recalibrate_bn=recalibrate,
    )
    trainer.fit(module, data)
    return trainer, module


def test_the_kept_model_is_revalidated_after_bn_recalibration(synthetic_processed_dir: Path):
    """val/acc_selected is the served model's accuracy on val, measured after recalibration,
    through an independent path (the logged InferenceModel on raw uint8 images)."""
    trainer, module = _fit(synthetic_processed_dir, recalibrate=True)
    served = InferenceModel(module.net).eval()
    expected = score_model(served, load_split(synthetic_processed_dir / "val"))
    selected = trainer.selected_metrics
    assert selected["val/acc_selected"] == pytest.approx(expected["acc"], abs=1e-9)
    assert selected["val/loss_selected"] == pytest.approx(expected["loss"], rel=1e-4)
    # test() reports them with the test scores, so the logger records them with the model
    metrics = trainer.test(module, trainer.datamodule)
    assert {"test/acc", "val/acc_selected", "val/loss_selected"} <= set(metrics)


def test_without_recalibration_the_selected_score_is_the_best_epochs(
    synthetic_processed_dir: Path,
):
    """Nothing changes the weights after selection: re-validation must reproduce the score the
    best epoch was selected with (a check that the restored weights are the ones validated)."""
    trainer, _ = _fit(synthetic_processed_dir, recalibrate=False)
    best = trainer.history[trainer.best_epoch]
    assert trainer.selected_metrics["val/acc_selected"] == pytest.approx(best["val/acc"])
    assert trainer.selected_metrics["val/loss_selected"] == pytest.approx(
        best["val/loss"], rel=1e-5
    )


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_one_selection_group_drives_trainer_registry_sweeper_and_pruner() -> None:
    GlobalHydra.instance().clear()
    for overrides, metric, mode in (
        ((), "val/acc", "max"),
        (("experiment=best",), "val/loss", "min"),
        (("selection=val_loss",), "val/loss", "min"),
    ):
        cfg = _compose(*overrides)
        assert (cfg.trainer.monitor, cfg.trainer.monitor_mode) == (metric, mode)
        assert cfg.optimized_metric == f"{metric}_selected"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        sweep = compose(
            config_name="train",
            overrides=["hparams_search=optuna", "experiment=best"],
            return_hydra_config=True,
        )
    assert sweep.optimized_metric == "val/loss_selected"
    assert sweep.callbacks.optuna_pruning.monitor == "val/loss"
    assert sweep.hydra.sweeper.direction == "min"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        register = compose(config_name="register", overrides=["selection=val_loss"])
    assert (register.selection.selected, register.selection.mode) == ("val/loss_selected", "min")


def test_debug_runs_are_tagged() -> None:
    GlobalHydra.instance().clear()
    assert _compose("debug=default").logger.tags.debug == "true"
    assert "debug" not in _compose().logger.tags
