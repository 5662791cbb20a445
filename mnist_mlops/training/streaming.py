"""Training data streamed from Parquet: each process reads only its shard, in bounded memory.

``MnistDataModule`` reads the whole training split into memory, fine at 55k images (43 MB),
not at MNIST8M scale (6.3 GB at 8.1M, in every training process). Here the unit of reading
and sharding is a *block*: a Parquet row group (the generator writes ~10k-row groups), or an
equal slice of one when there are fewer row groups than ranks.

Per epoch, all ranks compute the same plan from the files' metadata alone (no coordination):
largest blocks first (equal sizes in an order seeded by ``(seed, epoch)``), each given to the
rank with the fewest rows so far, so ranks differ by at most one block's rows. A rank then reads
its blocks in a seeded order into a window of about ``buffer_rows`` rows, shuffles the window with a
``(seed, epoch, rank)`` generator, hands out full batches and carries the remainder into the
next window. Every row of the split is seen exactly once per epoch across ranks; a rank's
memory is one window plus one block, whatever the dataset's size. The shuffle is windowed:
two rows from blocks far apart in the epoch's order never meet in a batch, which at a window
of several row groups drawn in random order mixes classes and sources well enough for SGD.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mnist_mlops.data.splits import load_split, pixels_to_images, split_dir
from mnist_mlops.training.datamodule import Batch, MnistDataModule, RandomAffine, TensorSplit


@dataclass(frozen=True)
class Block:
    """Rows ``start..stop-1`` of row group ``row_group`` of ``path``."""

    path: str
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_blocks(directories: Sequence[str | Path], world_size: int = 1) -> list[Block]:
    """Every row of the Parquet files under ``directories``, cut into blocks (row groups,
    split evenly when there are fewer row groups than ``world_size``)."""
    files = [f for d in directories for f in sorted(Path(d).glob("*.parquet"))]
    if not files:
        raise FileNotFoundError(
            f"no Parquet files under {[str(d) for d in directories]} "
            "(run `python -m mnist_mlops.preprocess` first)"
        )
    groups = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        groups += [(str(path), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    groups = [g for g in groups if g[2] > 0]
    pieces = max(1, math.ceil(world_size / max(1, len(groups))))
    blocks = []
    for path, group, rows in groups:
        edges = np.linspace(0, rows, min(pieces, rows) + 1).round().astype(int)
        blocks += [
            Block(path, group, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    return blocks


def assign_blocks(
    blocks: Sequence[Block], seed: int, epoch: int, world_size: int
) -> list[list[Block]]:
    """The epoch's blocks per rank, each rank's in a seeded reading order.

    Largest blocks first, each to the least-loaded rank (ties: lowest rank), equal sizes in a
    seeded order: ranks end within one block's rows of each other (the last block the fullest
    rank got, in practice a small tail block), and which rank reads which block changes every
    epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(blocks))
    order = sorted(order.tolist(), key=lambda i: -blocks[i].rows)  # stable: random among equals
    shards: list[list[Block]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for index in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        shards[rank].append(blocks[index])
        load[rank] += blocks[index].rows
    return [[shard[i] for i in rng.permutation(len(shard))] for shard in shards]


class ShardedStream:
    """One rank's rows of a Parquet split, epoch by epoch, in shuffled uint8 batches."""

    def __init__(
        self,
        directories: Sequence[str | Path],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        buffer_rows: int = 20_000,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if buffer_rows < 1:
            raise ValueError(f"data.stream_buffer_rows={buffer_rows} must be at least 1")
        self.rank, self.world_size, self.seed, self.buffer_rows = (
            rank,
            world_size,
            seed,
            buffer_rows,
        )
        self.blocks = plan_blocks(directories, world_size)
        self._files: dict[str, pq.ParquetFile] = {}

    def shard(self, epoch: int) -> list[Block]:
        return assign_blocks(self.blocks, self.seed, epoch, self.world_size)[self.rank]

    def rows(self, epoch: int) -> int:
        return sum(b.rows for b in self.shard(epoch))

    def read(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (n, 28, 28) and int64 labels of one block (one row group read)."""
        file = self._files.get(block.path)
        if file is None:
            file = self._files[block.path] = pq.ParquetFile(block.path)
        table = file.read_row_group(block.row_group, columns=["label", "pixels"])
        table = table.slice(block.start, block.rows)
        images = pixels_to_images(table.column("pixels")).copy()
        return images, table.column("label").to_numpy().astype(np.int64)

    def batches(
        self, epoch: int, batch_size: int, shuffle: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's rows for ``epoch``; without ``shuffle``, in plain file order."""
        if not shuffle:
            blocks = sorted(self.shard(epoch), key=lambda b: (b.path, b.row_group, b.start))
            for block in blocks:
                images, labels = self.read(block)
                for at in range(0, len(labels), batch_size):
                    yield images[at : at + batch_size], labels[at : at + batch_size]
            return
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        images_buf: list[np.ndarray] = []
        labels_buf: list[np.ndarray] = []
        held = 0
        for block in self.shard(epoch):
            images, labels = self.read(block)
            images_buf.append(images)
            labels_buf.append(labels)
            held += len(labels)
            if held < self.buffer_rows:
                continue
            window_images = np.concatenate(images_buf)
            window_labels = np.concatenate(labels_buf)
            order = rng.permutation(held)
            full = held - held % batch_size
            for at in range(0, full, batch_size):
                take = order[at : at + batch_size]
                yield window_images[take], window_labels[take]
            rest = order[full:]
            images_buf, labels_buf = [window_images[rest]], [window_labels[rest]]
            held = len(rest)
        if held:
            window_images = np.concatenate(images_buf)
            window_labels = np.concatenate(labels_buf)
            order = rng.permutation(held)
            for at in range(0, held, batch_size):
                take = order[at : at + batch_size]
                yield window_images[take], window_labels[take]

    def sized_batches(
        self, epoch: int, sizes: Sequence[int]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's shuffled rows for ``epoch`` cut into batches of ``sizes`` rows (a
        distributed rank's steps; their sum must not exceed :meth:`rows`)."""
        if not sizes:
            return
        chunks = self.batches(epoch, max(sizes))
        images_buf: list[np.ndarray] = []
        labels_buf: list[np.ndarray] = []
        held = 0
        for size in sizes:
            while held < size:
                images, labels = next(chunks)  # StopIteration here: sizes exceed the shard
                images_buf.append(images)
                labels_buf.append(labels)
                held += len(labels)
            images = np.concatenate(images_buf) if len(images_buf) > 1 else images_buf[0]
            labels = np.concatenate(labels_buf) if len(labels_buf) > 1 else labels_buf[0]
            yield images[:size], labels[:size]
            images_buf, labels_buf = [images[size:]], [labels[size:]]
            held -= size


class _StreamedSplits(dict):
    """``splits`` without an in-memory ``train`` (asking for it is a clear error); ``val`` and
    ``test`` (the real, small splits) are read into memory when first asked for."""

    def __init__(self, processed_dir: Path) -> None:
        super().__init__()
        self.processed_dir = processed_dir

    def __missing__(self, key: str) -> TensorSplit:
        if key == "train":
            raise RuntimeError(
                "data.streaming=true streams the training split (backend=local, spark_ddp and "
                "orca each read their shard in row groups); there is no splits['train'] in memory"
            )
        if key in ("val", "test"):
            self[key] = TensorSplit(load_split(split_dir(self.processed_dir, key)))
            return self[key]
        raise KeyError(key)


class StreamingDataModule(MnistDataModule):
    """``data.streaming=true``: the training split streamed (:class:`ShardedStream`), val and
    test in memory as before (they are the real, small splits). A distributed rank streams its
    own shard through :meth:`shard_stream` / :meth:`shard_batches`."""

    streaming = True

    def __init__(
        self,
        processed_dir: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        augmentation: RandomAffine | None = None,
        extra_train_dirs: Sequence[str | Path] = (),
        mean: float | None = None,
        std: float | None = None,
        seed: int = 0,
        buffer_rows: int = 20_000,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            processed_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            augmentation=augmentation,
            extra_train_dirs=extra_train_dirs,
            mean=mean,
            std=std,
            seed=seed,
        )
        self.seed, self.buffer_rows, self.rank, self.world_size = (
            seed,
            buffer_rows,
            rank,
            world_size,
        )
        self.stream: ShardedStream | None = None
        self.splits = _StreamedSplits(self.processed_dir)
        self.epoch = 0

    def setup(self, device: torch.device | str = "cpu") -> None:
        if self.stream is not None:
            return
        self.stream = self.shard_stream(self.rank, self.world_size)
        for split in ("val", "test"):
            self.splits[split]  # noqa: B018 - read now, as the in-memory module does

    def detached(self) -> StreamingDataModule:
        data = super().detached()
        data.stream = None
        data.splits = _StreamedSplits(self.processed_dir)
        return data

    def shard_stream(self, rank: int, world_size: int) -> ShardedStream:
        """The training split's stream for ``rank`` of ``world_size`` processes."""
        return ShardedStream(
            [split_dir(self.processed_dir, "train"), *self.extra_train_dirs],
            rank,
            world_size,
            self.seed,
            self.buffer_rows,
        )

    def shard_batches(
        self, stream: ShardedStream, epoch: int, sizes: Sequence[int]
    ) -> Iterator[Batch]:
        """Training batches of ``sizes`` rows from ``stream`` (a distributed rank's shard)."""
        return self._to_tensors(
            stream.sized_batches(epoch, sizes), epoch, train=True, rank=stream.rank
        )

    def _tensor_batches(self, epoch: int, batch_size: int, train: bool) -> Iterator[Batch]:
        assert self.stream is not None, "call setup() before asking for dataloaders"
        return self._to_tensors(self.stream.batches(epoch, batch_size, train), epoch, train)

    def _to_tensors(
        self,
        batches: Iterator[tuple[np.ndarray, np.ndarray]],
        epoch: int,
        train: bool,
        rank: int = 0,
    ) -> Iterator[Batch]:
        """Normalised float batches; augmentation seeded by (seed, epoch, batch index, rank)."""
        epoch_seed = int(np.random.default_rng([self.seed, epoch, 1 << 20]).integers(2**62))
        for index, (images, labels) in enumerate(batches):
            x = torch.from_numpy(images).unsqueeze(1).float()
            if train and self.augmentation is not None:
                seed = epoch_seed + index + 7919 * rank  # rank 0 draws as a local run does
                x = self.augmentation(x, torch.Generator().manual_seed(seed))
            yield x.mul_(self.scale).sub_(self.shift), torch.from_numpy(labels)

    def train_dataloader(self) -> Iterator[Batch]:
        """The next epoch's batches (each call is a new epoch, as with the in-memory module)."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._tensor_batches(epoch, self.batch_size, train=True)

    def clean_train_dataloader(self) -> Iterator[Batch]:
        return self._tensor_batches(0, self.eval_batch_size, train=False)

    def num_train_batches(self) -> int:
        assert self.stream is not None, "call setup() first"
        return math.ceil(self.stream.rows(self.epoch) / self.batch_size)
