"""The MNIST data module: Parquet splits read once into memory, batches built on the fly.

Images stay uint8 in memory (47 MB for all of MNIST, on the GPU too when ``keep_on_device``);
each batch is indexed, converted to float, optionally augmented and normalised in a few
vectorised tensor ops. That is cheaper than a per-sample ``Dataset`` + collate, which costs more
than the forward pass of a 14k-parameter network on a CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from mnist_mlops.data.manifest import data_normalization
from mnist_mlops.data.splits import MnistArrays, load_split, split_dir

Batch = tuple[torch.Tensor, torch.Tensor]


class RandomAffine:
    """Per-image random rotation/translation/scale of a whole batch in one ``grid_sample``.

    ``torchvision.transforms.v2.RandomAffine`` draws one set of parameters per call, so on a
    batch every image would get the same transform; this draws one per image and stays a
    single vectorised op. Out-of-frame pixels are background (0).
    """

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: Sequence[float] = (0.9, 1.1),
        p: float = 1.0,
    ) -> None:
        if degrees < 0 or not 0 <= translate < 1 or not 0 <= p <= 1:
            raise ValueError(
                f"augmentation needs degrees >= 0, 0 <= translate < 1, 0 <= p <= 1; "
                f"got degrees={degrees}, translate={translate}, p={p}"
            )
        low, high = (float(s) for s in scale)
        if not 0 < low <= high:
            raise ValueError(
                f"augmentation scale must be (low, high) with 0 < low <= high, got {scale}"
            )
        self.degrees, self.translate, self.scale, self.p = (
            float(degrees),
            float(translate),
            (low, high),
            p,
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``images``: float (N, 1, H, W) with background 0."""
        n = images.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, generator=generator).mul_(high - low).add_(low)

        angle = uniform(-self.degrees, self.degrees).mul_(math.pi / 180)
        inv_scale = 1.0 / uniform(*self.scale)
        cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
        # translate is a fraction of the image side; affine_grid coordinates span [-1, 1]
        tx = uniform(-self.translate, self.translate).mul_(2)
        ty = uniform(-self.translate, self.translate).mul_(2)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        if self.p < 1.0:
            keep = torch.rand(n, generator=generator) >= self.p
            theta[keep] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        theta = theta.to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )


class TensorSplit:
    """One split as uint8 images (N, 28, 28) and int64 labels, on the CPU or a device."""

    def __init__(self, arrays: MnistArrays, device: torch.device | str = "cpu") -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(arrays.images)).to(device)
        self.labels = torch.from_numpy(np.asarray(arrays.labels, dtype=np.int64)).to(device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class EpochBatches(Dataset):
    """Item ``i`` is batch ``i`` of one epoch's order, so a DataLoader can build them in workers.

    The epoch's order and augmentation seed are drawn from ``generator`` (``randperm``, then one
    ``randint``). A distributed rank ``r`` of ``world`` draws the same order from the same seed
    and takes rows ``r, r + world, ...`` of each global batch, so with one rank its batches are
    those of a local run. ``max_batches`` counts global batches of ``batch_size`` rows, as
    ``limit_*_batches`` do. For training, a final global batch smaller than the world size is
    dropped so that every rank runs the same number of steps (DDP needs that).
    """

    def __init__(
        self,
        module: MnistDataModule,
        split: TensorSplit,
        batch_size: int,
        train: bool,
        generator: torch.Generator,
        rank: int = 0,
        world: int = 1,
        max_batches: int | None = None,
    ) -> None:
        self.module, self.split, self.batch_size, self.train = module, split, batch_size, train
        self.rank, self.world = rank, world
        rows = len(split) if max_batches is None else min(len(split), max_batches * batch_size)
        if train:
            self.order = torch.randperm(len(split), generator=generator)[:rows]
            # augmentation draws come from (epoch seed, batch index): the same images whether
            # batches are built here or in DataLoader workers (which get forked RNG copies)
            self.epoch_seed = int(torch.randint(2**62, (1,), generator=generator))
        else:
            self.order = torch.arange(rows)
            self.epoch_seed = 0
        self.order = self.order.to(split.labels.device)
        full, rest = divmod(rows, batch_size)
        self.num_batches = full + (1 if rest >= (world if train else 1) else 0)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> Batch:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        idx = rows[self.rank :: self.world]
        generator = None
        if self.train:  # rank 0 draws as a local run does; other ranks draw their own
            generator = torch.Generator().manual_seed(self.epoch_seed + index + 7919 * self.rank)
        return self.module.make_batch(self.split, idx, self.train, generator)

    def __iter__(self) -> Iterator[Batch]:
        for index in range(len(self)):
            batch = self[index]
            if len(batch[1]):  # only validation can leave a rank without rows
                yield batch


class MnistDataModule:
    """Lightning-style data module (``setup`` + ``*_dataloader``) over the Parquet splits."""

    #: whether the training split is streamed (``StreamingDataModule``) rather than in memory
    streaming = False

    def __init__(
        self,
        processed_dir: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        augmentation: RandomAffine | None = None,
        keep_on_device: bool = False,
        extra_train_dirs: Sequence[str | Path] = (),
        mean: float | None = None,
        std: float | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers!r}")
        if std is not None and std <= 0:
            raise ValueError(f"data.std must be positive, got {std!r}")
        # the normalisation recorded in the data's manifest (mean/std must agree with it); the
        # logged model is built with these same two numbers, so it serves what was trained
        self.mean, self.std = data_normalization(processed_dir, mean, std)
        self.processed_dir = Path(processed_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augmentation = augmentation
        self.keep_on_device = keep_on_device
        self.extra_train_dirs = [Path(d) for d in extra_train_dirs]
        # x_norm = (x/255 - mean)/std, as one multiply-subtract on the raw 0..255 values
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = self.mean / self.std
        self.generator = torch.Generator().manual_seed(seed)
        self.splits: dict[str, TensorSplit] = {}

    def setup(self, device: torch.device | str = "cpu") -> None:
        """Read every split once; later calls are free (the trainer and evaluator share it)."""
        if self.splits:
            return
        data_device = device if self.keep_on_device else "cpu"
        train = load_split(split_dir(self.processed_dir, "train"))
        if self.extra_train_dirs:
            train = _concat([train, *(load_split(d) for d in self.extra_train_dirs)])
        self.splits["train"] = TensorSplit(train, data_device)
        for split in ("val", "test"):
            self.splits[split] = TensorSplit(
                load_split(split_dir(self.processed_dir, split)), data_device
            )

    def detached(self) -> MnistDataModule:
        """A copy with nothing loaded, to ship to another process (which reads the files)."""
        data = copy.copy(self)
        data.splits = {}
        return data

    def make_batch(
        self,
        split: TensorSplit,
        idx: torch.Tensor,
        train: bool,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Images ``idx`` as normalised float (N, 1, 28, 28), augmented for training.

        ``generator`` drives the augmentation (default: the module's own).
        """
        x = split.images[idx].unsqueeze(1).float()
        if train and self.augmentation is not None:
            x = self.augmentation(x, generator or self.generator)
        return x.mul_(self.scale).sub_(self.shift), split.labels[idx]

    def _loader(self, split: str, batch_size: int, train: bool) -> Dataset | DataLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for dataloaders")
        batches = EpochBatches(self, self.splits[split], batch_size, train, self.generator)
        if self.num_workers == 0 or self.keep_on_device:
            return batches
        return DataLoader(
            batches,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> Dataset | DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def clean_train_dataloader(self) -> Dataset | DataLoader:
        """The training split in order, without augmentation (BatchNorm recalibration)."""
        return self._loader("train", self.eval_batch_size, train=False)

    def val_dataloader(self) -> Dataset | DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> Dataset | DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)

    def num_train_batches(self) -> int:
        return math.ceil(len(self.splits["train"]) / self.batch_size)


def _concat(parts: Sequence[MnistArrays]) -> MnistArrays:
    return MnistArrays(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        image_ids=np.concatenate([p.image_ids for p in parts]),
    )
