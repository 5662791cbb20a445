"""The raw MNIST IDX files: locate, verify, download when missing, decode to numpy.

:func:`read_idx` decodes a whole file with numpy (tests, benchmarks, small tools). The
preprocessing job does not: it checks headers here and has the executors read byte ranges
(:mod:`mnist_mlops.data.idx_ranges`), so the driver's memory does not grow with the files.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# torchvision.datasets.MNIST.resources (checked against torchvision in tests/data/test_idx.py);
# copied here so verifying the files does not import torch.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
# IDX magic: two zero bytes, a type code (0x08 = uint8) and the number of dimensions.
_UINT8_TYPE_CODE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


class RawDataError(RuntimeError):
    """A raw MNIST file is missing, truncated, corrupt or not the expected IDX file."""


@dataclass(frozen=True)
class RawSplit:
    """One raw source split as decoded from IDX: uint8 images (N, 28, 28), uint8 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected_md5: str) -> None:
    """Raise a :class:`RawDataError` naming the file and both checksums when they differ."""
    actual = file_md5(path)
    if actual != expected_md5:
        raise RawDataError(
            f"checksum mismatch for {path}: expected md5 {expected_md5}, got {actual} "
            f"({path.stat().st_size} bytes). The file is truncated or corrupt: delete it and "
            "re-download (data.download=true) or point data.raw_dir / MNIST_RAW_DIR at a good copy."
        )


def download_mnist_file(raw_dir: Path, filename: str, md5: str) -> None:
    """Fetch one file with torchvision from its MNIST mirrors (as a normal user's machine does)."""
    from torchvision.datasets import MNIST  # lazy: pulls in torch
    from torchvision.datasets.utils import download_url

    errors = []
    for mirror in MNIST.mirrors:
        try:
            log.info("downloading %s%s into %s", mirror, filename, raw_dir)
            download_url(f"{mirror}{filename}", root=str(raw_dir), filename=filename, md5=md5)
            return
        except Exception as err:  # noqa: BLE001 - every mirror failure is reported below
            errors.append(f"{mirror}: {err}")
    raise RawDataError(
        f"could not download {filename} (expected md5 {md5}) into {raw_dir}; tried "
        + "; ".join(errors)
    )


def ensure_raw_files(
    raw_dir: str | Path, download: bool, verify_checksums: bool = True
) -> dict[str, Path]:
    """Paths of the four IDX files in ``raw_dir``, downloading missing ones when allowed."""
    raw_dir = Path(raw_dir)
    paths: dict[str, Path] = {}
    for role, (filename, md5) in MNIST_FILES.items():
        path = raw_dir / filename
        if not path.is_file():
            if not download:
                raise RawDataError(
                    f"missing MNIST file {path} (expected md5 {md5}); set data.raw_dir or "
                    "MNIST_RAW_DIR to the directory holding the IDX .gz files, or allow "
                    "data.download=true"
                )
            raw_dir.mkdir(parents=True, exist_ok=True)
            download_mnist_file(raw_dir, filename, md5)
        if verify_checksums:
            verify_md5(path, md5)
        paths[role] = path
    return paths


def read_idx(path: str | Path, expected_magic: int, expected_md5: str | None = None) -> np.ndarray:
    """Decode one gzipped uint8 IDX file; every malformation is a :class:`RawDataError`."""
    path = Path(path)
    hint = f" (expected md5 {expected_md5})" if expected_md5 else ""
    try:
        data = gzip.decompress(path.read_bytes())
    except FileNotFoundError as err:
        raise RawDataError(f"missing MNIST file {path}{hint}") from err
    except (OSError, EOFError, zlib.error) as err:
        raise RawDataError(f"{path} is truncated or not gzip data{hint}: {err}") from err
    if len(data) < 4:
        raise RawDataError(f"{path} is too short to be an IDX file{hint}")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise RawDataError(
            f"{path} has IDX magic {magic:#010x}, expected {expected_magic:#010x}{hint}: "
            "wrong file (images vs labels?) or corrupt"
        )
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise RawDataError(f"{path} has a truncated IDX header{hint}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(shape))
    if len(data) != expected_len:
        raise RawDataError(
            f"{path} holds {len(data) - header_len} data bytes but its header {shape} needs "
            f"{expected_len - header_len}: truncated or corrupt{hint}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def write_idx_gz(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as a gzipped IDX file (synthetic raw data for tests and demos)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (_UINT8_TYPE_CODE << 8) | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the bytes (and so their md5) reproducible
    path.write_bytes(gzip.compress(header + array.tobytes(), mtime=0))
    return path


def load_raw_mnist(
    raw_dir: str | Path, download: bool = False, verify_checksums: bool = True
) -> dict[str, RawSplit]:
    """The ``train`` (60k) and ``test`` (10k) source splits, verified and decoded."""
    paths = ensure_raw_files(raw_dir, download, verify_checksums)
    result: dict[str, RawSplit] = {}
    for source in ("train", "test"):
        images_role, labels_role = f"{source}_images", f"{source}_labels"
        images = read_idx(paths[images_role], IMAGES_MAGIC, MNIST_FILES[images_role][1])
        labels = read_idx(paths[labels_role], LABELS_MAGIC, MNIST_FILES[labels_role][1])
        _check_pair(paths[images_role], images, paths[labels_role], labels)
        result[source] = RawSplit(images=images, labels=labels)
    return result


def _check_pair(
    images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray
) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise RawDataError(
            f"{images_path}: expected images of shape (N, 28, 28), got {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise RawDataError(
            f"{labels_path} holds {labels.shape[0]} labels for {images.shape[0]} images "
            f"in {images_path}"
        )
    if labels.size and labels.max() > 9:
        raise RawDataError(f"{labels_path}: label {int(labels.max())} is outside 0..9")


def write_synthetic_raw(
    raw_dir: str | Path, images_labels: Sequence[tuple[np.ndarray, np.ndarray]]
) -> Path:
    """Write (train, test) image/label arrays as the four MNIST file names into ``raw_dir``."""
    raw_dir = Path(raw_dir)
    for source, (images, labels) in zip(("train", "test"), images_labels, strict=True):
        write_idx_gz(raw_dir / MNIST_FILES[f"{source}_images"][0], images)
        write_idx_gz(raw_dir / MNIST_FILES[f"{source}_labels"][0], labels)
    return raw_dir
