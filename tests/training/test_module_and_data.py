"""Module and data module pieces that need no training run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD
from mnist_mlops.data.splits import load_split
from mnist_mlops.training.datamodule import MnistDataModule, RandomAffine


def module_with(scheduler: str, epochs: int = 4, steps: int = 7) -> torch.nn.Module:
    model_cfg = OmegaConf.load(Path(CONFIG_DIR) / "model" / "gap_v8.yaml")
    schedule = OmegaConf.load(Path(CONFIG_DIR) / "model" / "scheduler" / f"{scheduler}.yaml")
    optimizer = OmegaConf.load(Path(CONFIG_DIR) / "model" / "optimizer" / "sgd.yaml")
    cfg = OmegaConf.merge(
        {"_target_": "mnist_mlops.training.module.ClassifierModule", "net": model_cfg.net},
        {"optimizer": optimizer},
        {"scheduler": schedule.scheduler, "scheduler_interval": schedule.scheduler_interval},
    )
    cfg = OmegaConf.merge({"model": cfg}).model  # resolve ${model.optimizer.lr}
    module = instantiate(cfg)
    module.trainer = SimpleNamespace(max_epochs=epochs, estimated_stepping_batches=epochs * steps)
    return module


def test_onecycle_is_stepped_per_batch_over_the_whole_run_peaking_at_the_optimizer_lr() -> None:
    config = module_with("onecycle").configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    assert scheduler.total_steps == 28
    assert max(g["max_lr"] for g in config["optimizer"].param_groups) == pytest.approx(0.01)


def test_cosine_is_stepped_per_epoch_over_the_epochs() -> None:
    config = module_with("cosine").configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert config["lr_scheduler"]["scheduler"].T_max == 4


def test_no_scheduler_means_only_an_optimizer() -> None:
    assert set(module_with("none").configure_optimizers()) == {"optimizer"}


def test_batches_are_normalised_on_the_fly_and_extra_dirs_are_folded_in(
    synthetic_processed_dir: Path,
) -> None:
    data = MnistDataModule(
        synthetic_processed_dir,
        batch_size=50,
        eval_batch_size=1000,
        extra_train_dirs=[synthetic_processed_dir / "val"],
    )
    data.setup()
    train_rows = len(load_split(synthetic_processed_dir / "train"))
    val_rows = len(load_split(synthetic_processed_dir / "val"))
    assert len(data.splits["train"]) == train_rows + val_rows
    x, y = next(iter(data.val_dataloader()))
    raw = load_split(synthetic_processed_dir / "val")
    expected = (torch.from_numpy(raw.images).float() / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(x[:, 0], expected)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
    assert torch.equal(y, torch.from_numpy(raw.labels))
    assert sum(len(b[1]) for b in data.train_dataloader()) == train_rows + val_rows


def test_training_order_is_reshuffled_each_epoch_but_seeded() -> None:
    def orders(seed: int) -> list[torch.Tensor]:
        data = MnistDataModule("unused", seed=seed)
        data.splits["train"] = _Split(torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10))
        return [torch.cat([b[1] for b in data.train_dataloader()]) for _ in range(2)]

    first, again = orders(1), orders(1)
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


class _Split:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)


def test_random_affine_transforms_each_image_differently_and_keeps_background() -> None:
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 255.0
    out = RandomAffine(degrees=15, translate=0.1)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert out[:, :, 0, 0].abs().max() == 0  # corners stay background
    with pytest.raises(ValueError, match="scale"):
        RandomAffine(scale=(1.2, 0.8))


def test_training_core_imports_without_mlflow_or_spark() -> None:
    """A GPU worker has torch + hydra only: the core must not pull in tracking or Spark."""
    code = (
        "import sys\n"
        "import mnist_mlops.models.convnet, mnist_mlops.training.module\n"
        "import mnist_mlops.training.datamodule, mnist_mlops.training.trainer\n"
        "import mnist_mlops.training.backends.local, mnist_mlops.training.callbacks\n"
        "bad = [m for m in ('mlflow', 'pyspark', 'optuna') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_augmented_batches_are_the_same_with_or_without_loader_workers(
    synthetic_processed_dir: Path,
) -> None:
    def two_epochs(workers: int) -> list[torch.Tensor]:
        data = MnistDataModule(
            synthetic_processed_dir,
            batch_size=200,
            num_workers=workers,
            augmentation=RandomAffine(),
            seed=3,
        )
        data.setup()
        return [torch.cat([x for x, _ in data.train_dataloader()]) for _ in range(2)]

    in_process, with_workers = two_epochs(0), two_epochs(2)
    assert not torch.equal(in_process[0], in_process[1])  # fresh augmentation every epoch
    for a, b in zip(in_process, with_workers, strict=True):
        assert torch.equal(a, b)
