"""Executor-side decode and the Spark baseline against the in-memory (numpy) code they replace."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mnist_mlops.data.baseline import QUANTILES, compute_baseline
from mnist_mlops.data.idx import (
    IMAGES_MAGIC,
    MNIST_FILES,
    RawDataError,
    ensure_raw_files,
    load_raw_mnist,
    write_idx_gz,
)
from mnist_mlops.data.idx_ranges import (
    check_headers,
    inflate_idx,
    inflate_sources,
    read_idx_header,
    slice_plan,
    source_frames,
)
from mnist_mlops.data.manifest import canonical_json, streamed_split_summary
from mnist_mlops.data.spark_baseline import (
    combine_pairwise,
    linear_quantiles,
    order_key,
    pairwise_sum,
    spark_baseline,
    tree_pieces,
)
from mnist_mlops.data.splits import arrays_to_table, load_split
from mnist_mlops.data.synthetic import synthetic_digits

# --- the plan --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "block", "slices"),
    [([60_000, 10_000], 10_000, 2), ([97, 120], 25, 3), ([5, 3], 4, 7), ([1234, 0], 100, 4)],
)
def test_slice_plan_covers_every_row_once_in_order(counts, block, slices) -> None:
    plan = slice_plan(counts, block, slices)
    assert len(plan) == slices
    flat = [(s, i) for pieces in plan for s, a, b in pieces for i in range(a, b)]
    assert flat == [(s, i) for s, c in enumerate(counts) for i in range(c)]


def test_slice_plan_cuts_as_createdataframe_did() -> None:
    """70k rows in 10k batches over 2 partitions: 3 batches, then 4 (the old job's files)."""
    plan = slice_plan([60_000, 10_000], 10_000, 2)
    assert plan[0] == [(0, 0, 10_000), (0, 10_000, 20_000), (0, 20_000, 30_000)]
    assert plan[1][0] == (0, 30_000, 40_000) and plan[1][-1] == (1, 0, 10_000)


# --- inflating ------------------------------------------------------------------------------


def test_inflate_is_the_decompressed_file(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (37, 28, 28), dtype=np.uint8)
    gz = write_idx_gz(tmp_path / "x.gz", images)
    header = read_idx_header(gz, IMAGES_MAGIC)
    assert header.shape == (37, 28, 28) and header.offset == 16
    inflate_idx(gz, tmp_path / "x", header)
    assert (tmp_path / "x").read_bytes() == gzip.decompress(gz.read_bytes())


@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_inflate_refuses_a_payload_of_the_wrong_length(tmp_path, change) -> None:
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    raw = gzip.decompress(write_idx_gz(tmp_path / "ok.gz", images).read_bytes())
    bad = raw[:-100] if change == "truncate" else raw + b"\x00" * 784
    (tmp_path / "bad.gz").write_bytes(gzip.compress(bad))
    header = read_idx_header(tmp_path / "bad.gz", IMAGES_MAGIC)
    with pytest.raises(RawDataError, match=r"bad\.gz holds .*7840: truncated or corrupt"):
        inflate_idx(tmp_path / "bad.gz", tmp_path / "bad", header)


def test_header_of_a_label_file_named_as_images_is_refused(tmp_path) -> None:
    gz = write_idx_gz(tmp_path / "labels.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(RawDataError, match="IDX magic 0x00000801, expected 0x00000803"):
        read_idx_header(gz, IMAGES_MAGIC)


# --- decoding on the executors ---------------------------------------------------------------


def decode_with_spark(spark, raw_dir: Path, scratch: Path, block: int, slices: int) -> dict:
    """Every row the executors decode, per source, as numpy arrays in image-id order."""
    paths = ensure_raw_files(raw_dir, download=False, verify_checksums=False)
    sources = inflate_sources(paths, check_headers(paths), scratch)
    keys, frame = source_frames(spark, sources, block, slices)
    table = frame.toPandas()
    ids = list(table["image_id"])
    order = np.argsort(ids, kind="stable")
    pixels = np.frombuffer(b"".join(bytes(table["pixels"][i]) for i in order), np.uint8)
    labels = np.asarray(table["label"])[order]
    split = np.asarray(table["split"])[order]
    out = {}
    for source in ("train", "test"):
        mine = split == source
        out[source] = (
            pixels.reshape(-1, 28, 28)[mine],
            labels[mine],
            [ids[i] for i in order[mine]],
            keys.where(f"split = '{source}'").count(),
        )
    return out


@pytest.mark.parametrize(("block", "slices"), [(50, 3), (1000, 2)])
def test_executor_decode_equals_numpy_decode(
    spark_session, synthetic_raw_dir, tmp_path, block, slices
) -> None:
    expected = load_raw_mnist(synthetic_raw_dir, verify_checksums=False)
    decoded = decode_with_spark(spark_session, synthetic_raw_dir, tmp_path, block, slices)
    for source in ("train", "test"):
        images, labels, ids, keys = decoded[source]
        np.testing.assert_array_equal(images, expected[source].images)
        np.testing.assert_array_equal(labels, expected[source].labels)
        assert ids == [f"{source}-{i:05d}" for i in range(len(labels))]
        assert keys == len(labels)


@pytest.mark.slow
def test_executor_decode_equals_numpy_decode_on_real_mnist(
    spark_session, real_raw_dir, tmp_path
) -> None:
    """The 70k real images and labels, decoded by byte range on executors vs numpy."""
    expected = load_raw_mnist(real_raw_dir, verify_checksums=True)
    decoded = decode_with_spark(spark_session, real_raw_dir, tmp_path, 10_000, 2)
    for source, size in (("train", 60_000), ("test", 10_000)):
        images, labels, ids, keys = decoded[source]
        assert len(labels) == size == keys
        np.testing.assert_array_equal(images, expected[source].images)
        np.testing.assert_array_equal(labels, expected[source].labels)
        assert ids[0] == f"{source}-00000" and ids[-1] == f"{source}-{size - 1:05d}"


def test_ids_widen_past_99999_so_they_sort_in_index_order(tmp_path) -> None:
    from mnist_mlops.data.spark_preprocess import image_ids

    assert image_ids("train", 3) == ["train-00000", "train-00001", "train-00002"]
    ids = image_ids("train", 100_001)
    assert ids[-1] == "train-100000" and ids == sorted(ids)


# --- numpy's arithmetic, reproduced in pieces ------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 8, 9, 127, 128, 129, 1000, 8193, 50_001])
def test_pairwise_sum_is_numpys(n) -> None:
    values = np.random.default_rng(n).random(n) * 30
    assert pairwise_sum(values.tolist()) == np.add.reduce(values)


@pytest.mark.parametrize("n", [130, 5000, 77_777])
def test_pairwise_sum_from_task_pieces_is_numpys(n) -> None:
    """Tasks of random sizes: node sums with numpy inside each, the rest on the driver."""
    rng = np.random.default_rng(n)
    values = rng.random(n).astype(np.float32).astype(np.float64) * rng.random() * 30
    cuts = np.unique(np.concatenate([[0, n], rng.integers(1, n, 6)]))
    nodes, loose = {}, {}
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        pieces, edge = tree_pieces(n, int(start), int(stop))
        nodes.update({(a, b): float(np.add.reduce(values[a:b])) for a, b in pieces})
        loose.update({i: float(values[i]) for i in edge})
    total = combine_pairwise(n, nodes, loose)
    assert total / n == values.mean()
    deviations = values - np.array([total / n])
    assert np.sqrt(pairwise_sum((deviations * deviations).tolist()) / n) == values.std()


@pytest.mark.parametrize("n", [1, 2, 5, 101, 5000])
def test_linear_quantiles_are_numpys(n) -> None:
    values = np.random.default_rng(n).random(n).astype(np.float32).astype(np.float64)
    ordered = np.sort(values)
    qs = list(QUANTILES.values())
    got = linear_quantiles(n, qs, lambda rank: float(ordered[rank]))
    assert got.tolist() == np.quantile(values, qs).tolist()


def test_order_key_sorts_like_the_floats() -> None:
    values = np.array([-3.5, -0.0, 0.0, 1e-300, 0.25, 7.0, -1e-300, 28.0])
    keys = order_key(values)
    assert np.array_equal(np.argsort(keys, kind="stable"), np.argsort(values, kind="stable"))


# --- the Spark baseline ----------------------------------------------------------------------


def test_spark_baseline_is_byte_identical_to_the_in_memory_one(spark_session, tmp_path) -> None:
    """Several files and row groups (uneven), ids in order: the same JSON, byte for byte."""
    images, labels = synthetic_digits(2300, seed=3)
    ids = [f"train-{i:05d}" for i in range(len(labels))]
    split = tmp_path / "train"
    split.mkdir()
    for index, (lo, hi) in enumerate([(0, 700), (700, 1900), (1900, 2300)]):
        table = arrays_to_table(images[lo:hi], labels[lo:hi], ids[lo:hi])
        pq.write_table(table, split / f"part-{index:05d}.parquet", row_group_size=333)
    rows, digest, _ = streamed_split_summary(split, require_order=True)
    arrays = load_split(split)
    for sample_size in (5000, 400):  # all rows, then a seeded subsample
        expected = compute_baseline(
            arrays.images, arrays.labels, digest, seed=11, sample_size=sample_size
        )
        got = spark_baseline(spark_session, split, digest, seed=11, sample_size=sample_size)
        assert canonical_json(got) == canonical_json(expected)
    assert rows == 2300 and json.loads(canonical_json(got))["source"]["n_images"] == 2300


def test_raw_file_names_are_the_ones_inflated(tmp_path, synthetic_raw_dir) -> None:
    paths = ensure_raw_files(synthetic_raw_dir, download=False, verify_checksums=False)
    sources = inflate_sources(paths, check_headers(paths), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f.removesuffix(".gz") for f, _ in MNIST_FILES.values())
    assert [s.name for s in sources] == ["train", "test"]
