"""Raw IDX handling: decoding, checksums and clear errors for missing/truncated/corrupt files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MNIST_FILES,
    RawDataError,
    ensure_raw_files,
    load_raw_mnist,
    read_idx,
    write_idx_gz,
)

TRAIN_IMAGES, TRAIN_IMAGES_MD5 = MNIST_FILES["train_images"]


def test_md5s_are_torchvisions_published_ones() -> None:
    from torchvision.datasets import MNIST

    assert dict(MNIST.resources) == dict(MNIST_FILES.values())


def test_idx_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx_gz(tmp_path / "i.gz", images)
    write_idx_gz(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz", IMAGES_MAGIC), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz", LABELS_MAGIC), labels)


def test_synthetic_raw_dir_decodes(synthetic_raw_dir: Path) -> None:
    raw = load_raw_mnist(synthetic_raw_dir, verify_checksums=False)
    assert raw["train"].images.shape[1:] == (28, 28)
    assert len(raw["train"].images) == len(raw["train"].labels)
    assert raw["test"].labels.max() <= 9


def test_wrong_magic_names_file(tmp_path: Path) -> None:
    path = write_idx_gz(tmp_path / "labels.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(
        RawDataError, match=r"labels\.gz has IDX magic 0x00000801, expected 0x00000803"
    ):
        read_idx(path, IMAGES_MAGIC, TRAIN_IMAGES_MD5)


def test_truncated_gzip_names_file_and_md5(tmp_path: Path) -> None:
    path = write_idx_gz(tmp_path / TRAIN_IMAGES, np.zeros((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(RawDataError) as err:
        read_idx(path, IMAGES_MAGIC, TRAIN_IMAGES_MD5)
    assert str(path) in str(err.value) and TRAIN_IMAGES_MD5 in str(err.value)
    assert "truncated" in str(err.value)


def test_payload_shorter_than_header_says(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    header = IMAGES_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (3, 28, 28))
    path.write_bytes(gzip.compress(header + bytes(28 * 28 * 2)))
    with pytest.raises(RawDataError, match=r"holds 1568 data bytes but its header \(3, 28, 28\)"):
        read_idx(path, IMAGES_MAGIC)


def test_checksum_mismatch_names_file_and_expected_md5(synthetic_raw_dir: Path) -> None:
    with pytest.raises(RawDataError) as err:
        ensure_raw_files(synthetic_raw_dir, download=False, verify_checksums=True)
    message = str(err.value)
    assert "checksum mismatch" in message
    assert str(synthetic_raw_dir / TRAIN_IMAGES) in message and TRAIN_IMAGES_MD5 in message


def test_missing_file_without_download(tmp_path: Path, synthetic_raw_dir: Path) -> None:
    shutil.copytree(synthetic_raw_dir, tmp_path / "raw")
    (tmp_path / "raw" / MNIST_FILES["test_labels"][0]).unlink()
    with pytest.raises(RawDataError) as err:
        load_raw_mnist(tmp_path / "raw", download=False, verify_checksums=False)
    name, md5 = MNIST_FILES["test_labels"]
    assert name in str(err.value) and md5 in str(err.value) and "MNIST_RAW_DIR" in str(err.value)


def test_label_count_must_match_images(tmp_path: Path, synthetic_raw_dir: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw_dir, raw)
    write_idx_gz(raw / MNIST_FILES["test_labels"][0], np.zeros(3, dtype=np.uint8))
    with pytest.raises(RawDataError, match="holds 3 labels for 120 images"):
        load_raw_mnist(raw, verify_checksums=False)


def test_download_fetches_missing_files_with_torchvision(
    tmp_path: Path, synthetic_raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real torchvision download over real HTTP, from a local mirror of the synthetic files."""
    import functools
    import http.server
    import threading

    from torchvision.datasets import MNIST

    from mnist_mlops.data import idx
    from mnist_mlops.data.idx import file_md5

    synthetic_md5s = {
        role: (name, file_md5(synthetic_raw_dir / name)) for role, (name, _) in MNIST_FILES.items()
    }
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(synthetic_raw_dir)
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/unreachable/", mirror])
        monkeypatch.setattr(idx, "MNIST_FILES", synthetic_md5s)
        target = tmp_path / "data" / "raw"
        raw = load_raw_mnist(target, download=True, verify_checksums=True)
    finally:
        server.shutdown()
    assert sorted(p.name for p in target.iterdir()) == sorted(n for n, _ in synthetic_md5s.values())
    assert len(raw["test"].labels) == 120
