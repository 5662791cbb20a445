"""``backend=local``: the epoch loop in this process, on its CPU threads or one GPU."""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

import torch

from mnist_mlops.training.loop import EpochLoop, SingleProcess, evaluate, limited

if TYPE_CHECKING:
    from mnist_mlops.training.contracts import TrainerView
    from mnist_mlops.training.datamodule import MnistDataModule
    from mnist_mlops.training.module import ClassifierModule


class LocalBackend:
    """Runs the epochs of a module in the current process on ``trainer.device``."""

    name = "local"

    def __init__(self, channels_last: bool = True, num_threads: int | None = None) -> None:
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"backend.num_threads must be null or >= 1, got {num_threads!r}")
        self.channels_last = channels_last
        self.num_threads = num_threads
        if num_threads:  # now, so everything after construction (and the run's tags) sees it
            torch.set_num_threads(num_threads)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _prepare(self, module: ClassifierModule, trainer: TrainerView) -> None:
        module.to(trainer.device)
        module.net.to(memory_format=self.memory_format)

    def fit(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: TrainerView
    ) -> None:
        self._prepare(module, trainer)
        EpochLoop(module, trainer, self.memory_format).run(
            lambda: islice(datamodule.train_dataloader(), trainer.num_train_batches),
            lambda: limited(datamodule.val_dataloader(), trainer.limit_val_batches),
            SingleProcess(trainer),
        )

    def test(
        self, module: ClassifierModule, datamodule: MnistDataModule, trainer: TrainerView
    ) -> dict[str, Any]:
        self._prepare(module, trainer)
        evaluate(
            module,
            limited(datamodule.test_dataloader(), trainer.limit_test_batches),
            "test",
            trainer.device,
            self.memory_format,
        )
        return {k: v for k, v in module.logged.items() if k.startswith("test/")}
