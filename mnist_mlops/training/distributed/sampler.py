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

if TYPE_CHECKING:
    from mnist_mlops.training.datamodule import MnistDataModule, TensorSplit
    from mnist_mlops.training.streaming import StreamingDataModule

Batch = tuple[torch.Tensor, torch.Tensor]


class RankBatches:
    """This rank's part of every global batch, in an order that is the same on every rank.

    Each epoch draws the global order and the augmentation seed exactly as the data module's
    own epoch does (``randperm`` then one ``randint`` from a generator seeded with the run's
    seed), so with one rank the batches are those of a local run; rank ``r`` of ``w`` takes rows
    ``r, r+w, ...`` of each global batch. ``max_batches`` counts global batches of
    ``batch_size`` rows, as ``limit_*_batches`` does in a local run. For training, a final
    global batch smaller than the world size is dropped so that every rank runs the same number
    of steps (DDP needs that).
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
        self.rank, self.world, self.train = rank, world, train
        self.order_generator = torch.Generator().manual_seed(seed)
        self.rows = len(split) if max_batches is None else min(len(split), max_batches * batch_size)
        full, rest = divmod(self.rows, batch_size)
        self.num_batches = full + (1 if rest >= (world if train else 1) else 0)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        epoch_seed = 0
        if self.train:
            order = torch.randperm(len(self.split), generator=self.order_generator)[: self.rows]
            epoch_seed = int(torch.randint(2**62, (1,), generator=self.order_generator))
        else:
            order = torch.arange(self.rows)
        order = order.to(self.split.labels.device)
        for index in range(self.num_batches):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            mine = rows[self.rank :: self.world]
            if not len(mine):  # only validation can leave a rank without rows
                continue
            augment = None
            if self.train:  # rank 0 draws as a local run does; other ranks draw their own
                augment = torch.Generator().manual_seed(epoch_seed + index + 7919 * self.rank)
            yield self.datamodule.make_batch(self.split, mine, self.train, augment)


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
