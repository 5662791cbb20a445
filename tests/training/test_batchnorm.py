"""Precise BatchNorm: recomputed statistics are the clean data's, with dropout kept off."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mnist_mlops.training.backends.local import LocalBackend
from mnist_mlops.training.batchnorm import recalibrate_batchnorm
from mnist_mlops.training.datamodule import MnistDataModule, RandomAffine
from mnist_mlops.training.module import ClassifierModule
from mnist_mlops.training.trainer import Trainer

CPU = torch.device("cpu")


def test_statistics_become_the_exact_mean_and_variance_of_the_batches() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    net = nn.Sequential(nn.Dropout(0.5), conv, nn.BatchNorm2d(4, momentum=0.3)).train()
    batches = [(torch.randn(50, 1, 8, 8) * 3 + 1, torch.zeros(50)) for _ in range(4)]

    assert recalibrate_batchnorm(net, batches, CPU) == 200

    with torch.no_grad():  # what BN sees with dropout off: the conv of the clean images
        features = [conv(x) for x, _ in batches]
    batch_means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    batch_vars = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features])
    norm = net[2]
    torch.testing.assert_close(norm.running_mean, batch_means.mean(0))
    torch.testing.assert_close(norm.running_var, batch_vars.mean(0))
    assert norm.momentum == 0.3 and net.training and norm.training  # modes restored


def test_the_trainer_recalibrates_the_restored_best_weights(synthetic_processed_dir: Path) -> None:
    def fitted(recalibrate: bool) -> ClassifierModule:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(8, 10), nn.LogSoftmax(dim=1),
        )  # fmt: skip
        module = ClassifierModule(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
        data = MnistDataModule(
            synthetic_processed_dir,
            batch_size=32,
            eval_batch_size=100,
            augmentation=RandomAffine(degrees=30, translate=0.2),
            seed=1,
        )
        trainer = Trainer(
            backend=LocalBackend(num_threads=1),
            epochs=1,
            device="cpu",
            precision="32-true",
            limit_train_batches=3,
            recalibrate_bn=recalibrate,
        )
        trainer.fit(module, data)
        assert trainer.best_state is not None
        return module, trainer.best_state, data

    plain, best, _ = fitted(False)
    torch.testing.assert_close(plain.net[1].running_mean, best["1.running_mean"])

    recalibrated, best, data = fitted(True)
    norm = recalibrated.net[1]
    torch.testing.assert_close(recalibrated.net[0].weight, best["0.weight"])  # weights untouched
    with torch.no_grad():  # the clean training split's statistics, batch by batch
        means = [
            recalibrated.net[0](x).mean(dim=(0, 2, 3)) for x, _ in data.clean_train_dataloader()
        ]
    clean = torch.stack(means).mean(0)
    # (oneDNN's train-mode BN kernel and a plain conv differ in summation order: ~1e-4)
    torch.testing.assert_close(norm.running_mean, clean, atol=5e-4, rtol=0)
    assert (best["1.running_mean"] - clean).abs().max() > 10 * 5e-4  # the EMA was far off
