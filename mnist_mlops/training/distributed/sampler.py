"""Which rows each rank trains on: the same optimizer steps as one process, split across ranks.

Two samplers, one per kind of data module; both give every rank the same number of training
steps per epoch (DDP needs that) and split each step's rows so that, with DDP's gradient
averaging, one step sees about ``data.batch_size`` rows whatever the world size:

- :class:`RankBatches` (split in memory): every rank holds the split, draws the same global
  order and takes rows ``rank, rank + world, ...`` of each global batch;
- :class:`StreamedRankBatches` (``data.streaming=true``): each rank reads only its own shard of
  the Parquet row groups (:mod:`mnist_mlops.training.streaming`), in a seeded windowed shuffle,
  and cuts it into as many batches as the run has steps; memory is the window, not the split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from mnist_mlops.training.datamodule import EpochBatches

if TYPE_CHECKING:
    from mnist_mlops.training.datamodule import MnistDataModule, TensorSplit
    from mnist_mlops.training.streaming import StreamingDataModule

Batch = tuple[torch.Tensor, torch.Tensor]


class RankBatches:
    """This rank's part of every global batch of the in-memory split, one epoch per iteration.

    Each epoch is an :class:`~mnist_mlops.training.datamodule.EpochBatches` (the data module's
    own epoch) drawn from a generator seeded with the run's seed, the same on every rank, so
    with one rank the batches are those of a local run.
    """

    def __init__(
        self,
        datamodule: MnistDataModule,
        split: TensorSplit,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        max_batches: int | None,
        train: bool,
    ) -> None:
        self.datamodule, self.split, self.batch_size = datamodule, split, batch_size
        self.rank, self.world, self.max_batches, self.train = rank, world, max_batches, train
        self.order_generator = torch.Generator().manual_seed(seed)
        self.num_batches = len(self._epoch(torch.Generator().manual_seed(seed)))

    def _epoch(self, generator: torch.Generator) -> EpochBatches:
        return EpochBatches(
            self.datamodule,
            self.split,
            self.batch_size,
            self.train,
            generator,
            self.rank,
            self.world,
            self.max_batches,
        )

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._epoch(self.order_generator))


class StreamedRankBatches:
    """This rank's streamed shard of the training split, one epoch per iteration.

    Every rank runs the same ``steps`` steps: the number of global batches of ``batch_size``
    rows in the split (capped by ``max_batches``, as ``limit_train_batches`` does locally). A
    rank cuts its shard (its row groups, which all ranks plan alike from the files' metadata)
    into that many near-equal batches, so every row is trained on exactly once per epoch (with
    no limit) and the ranks' batches add up to about one global batch per step.
    """

    def __init__(
        self,
        datamodule: StreamingDataModule,
        rank: int,
        world: int,
        max_batches: int | None,
    ) -> None:
        self.datamodule = datamodule
        self.stream = datamodule.shard_stream(rank, world)
        self.rank, self.world = rank, world
        total = sum(block.rows for block in self.stream.blocks)
        self.full_steps = math.ceil(total / datamodule.batch_size)
        self.steps = min(self.full_steps, max_batches or self.full_steps)
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def batch_sizes(self, epoch: int) -> list[int]:
        """Rows per step of this rank in ``epoch``: its shard in ``full_steps`` near-equal parts."""
        rows = self.stream.rows(epoch)
        if rows < self.full_steps:
            raise ValueError(
                f"rank {self.rank} of {self.world} streams {rows} rows in epoch {epoch}, fewer "
                f"than the {self.full_steps} steps per epoch (data.batch_size="
                f"{self.datamodule.batch_size}); use fewer processes or a smaller batch size"
            )
        base, extra = divmod(rows, self.full_steps)
        return [base + 1] * extra + [base] * (self.full_steps - extra)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        sizes = self.batch_sizes(epoch)[: self.steps]
        return self.datamodule.shard_batches(self.stream, epoch, sizes)
