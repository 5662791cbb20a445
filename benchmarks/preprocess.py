"""Benchmark: Spark preprocessing of the real MNIST files vs a plain numpy + pyarrow floor.

    MNIST_RAW_DIR=/path/to/raw .venv/bin/python benchmarks/preprocess.py [--repeats 1]

Each variant runs in a fresh subprocess (so every Spark run pays for its own JVM, as
``python -m mnist_mlops.preprocess`` does) while the parent samples the resident memory of
the whole process tree (Python + JVM). Both variants produce the same outputs as
``python -m mnist_mlops.preprocess`` (train/val/gate/test Parquet with the same per-class
quotas from ``data.val_size`` and ``data.gate_size``, baseline.json, manifest.json) from the
same verified files, and the report checks that their rows and label counts per split agree,
so the ratio compares like with like; the "conversion" row compares only decode + split +
Parquet write. (Which images land in val and gate differs: Spark ranks by a seeded xxhash64,
the floor by a seeded numpy permutation.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # a dvc dependency, so always present in the project venv

REPO_ROOT = Path(__file__).resolve().parent.parent


class StepCollector(logging.Handler):
    """Collects the ``step``/``seconds`` timings that ``timed_step`` attaches to its records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "step"):
            self.seconds[record.step] = self.seconds.get(record.step, 0.0) + record.seconds


def compose_config(raw_dir: str, out_dir: str):
    from hydra import compose, initialize_config_dir

    from mnist_mlops.config import CONFIG_DIR

    overrides = [f"data.raw_dir={raw_dir}", f"data.processed_dir={out_dir}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="preprocess", overrides=overrides)


def run_spark(raw_dir: str, out_dir: str, warm: bool) -> dict:
    """The real job; ``warm`` runs it once untimed on the same JVM, then times a second run."""
    from mnist_mlops.preprocess import preprocess

    steps = StepCollector()
    logging.basicConfig(level=logging.INFO)
    logging.getLogger().addHandler(steps)
    cfg = compose_config(raw_dir, out_dir)
    if not warm:
        manifest = preprocess(cfg)
        return {"steps": steps.seconds, **_written(manifest)}
    from hydra.utils import instantiate

    spark = instantiate(cfg.spark)
    preprocess(cfg, spark=spark)
    steps.seconds.clear()
    start = time.perf_counter()
    manifest = preprocess(cfg, spark=spark)
    job = time.perf_counter() - start
    spark.stop()
    return {"steps": steps.seconds, "job_s": job, **_written(manifest)}


def _written(manifest: dict) -> dict:
    """What a variant wrote, from its manifest: rows and label counts per split."""
    return {
        "dataset_hash": manifest["dataset_hash"],
        "splits": {
            name: {"rows": info["rows"], "label_counts": info["label_counts"]}
            for name, info in manifest["splits"].items()
        },
    }


def _image_ids(source: str, n: int) -> list[str]:
    """The real job's ids, ``<source>-<index>`` zero-padded to 5 digits for MNIST."""
    return [f"{source}-{i:05d}" for i in range(n)]


def run_floor(raw_dir: str, out_dir: str) -> dict:
    """numpy + pyarrow only, writing what the real job writes: the four splits with the same
    stratified val and gate quotas (val first, then gate, from each class's seeded order),
    Parquet, per-split hashes and label counts, the baseline and the manifest."""
    from dataclasses import asdict

    import numpy as np
    import pyarrow.parquet as pq

    from mnist_mlops.data.baseline import compute_baseline
    from mnist_mlops.data.constants import NUM_CLASSES, SPLITS
    from mnist_mlops.data.idx import load_raw_mnist
    from mnist_mlops.data.manifest import build_manifest, split_content_hash, write_json
    from mnist_mlops.data.spark_preprocess import BASELINE_FILE, MANIFEST_FILE, class_quotas
    from mnist_mlops.data.splits import arrays_to_table, load_split
    from mnist_mlops.preprocess import settings_from_config

    settings = settings_from_config(compose_config(raw_dir, out_dir))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    raw = load_raw_mnist(raw_dir, download=False, verify_checksums=True)
    seconds["read_raw"] = time.perf_counter() - start

    start = time.perf_counter()
    train = raw["train"]
    counts = np.bincount(train.labels, minlength=NUM_CLASSES)
    val_quotas = class_quotas(counts, settings.val_size)
    gate_quotas = class_quotas(counts, settings.gate_size, "data.gate_size")
    rng = np.random.default_rng(settings.split_seed)
    split_of = np.full(len(train.labels), "train", dtype=object)
    for label in range(NUM_CLASSES):
        order = rng.permutation(np.flatnonzero(train.labels == label))
        n_val, n_gate = int(val_quotas[label]), int(gate_quotas[label])
        split_of[order[:n_val]] = "val"
        split_of[order[n_val : n_val + n_gate]] = "gate"
    train_ids = np.asarray(_image_ids("train", len(train.labels)))
    parts = {
        name: (
            train.images[split_of == name],
            train.labels[split_of == name],
            train_ids[split_of == name],
        )
        for name in ("train", "val", "gate")
    }
    test = raw["test"]
    parts["test"] = (test.images, test.labels, np.asarray(_image_ids("test", len(test.labels))))
    out = Path(out_dir)
    for split in SPLITS:
        images, labels, split_ids = parts[split]
        (out / split).mkdir(parents=True)
        table = arrays_to_table(images, labels, split_ids.tolist())
        pq.write_table(table, out / split / "part-00000.parquet", compression="snappy")
    seconds["split_write"] = time.perf_counter() - start

    start = time.perf_counter()
    splits, arrays = {}, {}
    for split in SPLITS:
        arrays[split] = load_split(out / split)
        splits[split] = {
            "rows": len(arrays[split]),
            "files": len(list((out / split).glob("*.parquet"))),
            "content_hash": split_content_hash(arrays[split]),
            "label_counts": np.bincount(arrays[split].labels, minlength=NUM_CLASSES).tolist(),
        }
    seconds["hash"] = time.perf_counter() - start
    start = time.perf_counter()
    baseline = compute_baseline(
        arrays["train"].images,
        arrays["train"].labels,
        splits["train"]["content_hash"],
        seed=settings.split_seed,
    )
    baseline_hash = write_json(out / BASELINE_FILE, baseline)
    normalization = {"mean": float(settings.mean), "std": float(settings.std)}
    manifest = build_manifest(splits, baseline_hash, normalization, {"settings": asdict(settings)})
    write_json(out / MANIFEST_FILE, manifest)
    seconds["baseline"] = time.perf_counter() - start
    return {"steps": seconds, **_written(manifest)}


def child_main(args: argparse.Namespace) -> None:
    if args.variant == "floor":
        result = run_floor(args.raw_dir, args.out)
    else:
        result = run_spark(args.raw_dir, args.out, warm=args.variant == "spark-warm")
    print("RESULT " + json.dumps(result), flush=True)


def measure(variant: str, raw_dir: str, workdir: Path) -> dict:
    """Run one variant in a subprocess; wall time, peak tree RSS, CPU time and output bytes."""
    out = workdir / variant
    cmd = [sys.executable, __file__, "--child", variant, "--raw-dir", raw_dir, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak, cpu = 0, {}

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            rss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
            except psutil.Error:
                pass
            peak = max(peak, rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {proc.returncode}); rerun: {' '.join(cmd)}")
    result = json.loads(
        next(line[7:] for line in stdout.splitlines() if line.startswith("RESULT "))
    )
    out_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        **result,
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "cpu_s": sum(cpu.values()),
        "out_bytes": out_bytes,
    }


def check_same_output(results: dict[str, dict]) -> None:
    """Every variant wrote the same splits with the same rows and label counts per class."""
    floor = results["floor"]["splits"]
    for variant, result in results.items():
        if result["splits"] != floor:
            raise SystemExit(
                f"{variant} and floor wrote different splits: {result['splits']} vs {floor}"
            )
    rows = {name: info["rows"] for name, info in floor.items()}
    print(f"same splits in every variant (rows {rows}, label counts per split equal)")


def report(results: dict[str, dict]) -> None:
    spark, floor = results["spark"], results["floor"]
    conversion = {
        "floor": floor["steps"]["read_raw"] + floor["steps"]["split_write"],
        # the job inflates the .gz files before the executors decode them: part of conversion
        "spark": spark["steps"]["read_raw"]
        + spark["steps"].get("inflate", 0.0)
        + spark["steps"]["spark_split_write"],
    }
    after_jvm = spark["wall_s"] - spark["steps"].get("spark_start", 0.0)
    rows = [
        ("wall, whole process (s)", spark["wall_s"], floor["wall_s"]),
        ("  of which JVM start (s)", spark["steps"].get("spark_start", 0.0), 0.0),
        ("wall once the JVM is up (s)", after_jvm, floor["wall_s"]),
        ("decode+split+write only (s)", conversion["spark"], conversion["floor"]),
        (
            "hash + baseline (s)",
            spark["steps"]["hash"] + spark["steps"]["baseline"],
            floor["steps"]["hash"] + floor["steps"]["baseline"],
        ),
        ("CPU time, all processes (s)", spark["cpu_s"], floor["cpu_s"]),
        ("peak RSS, Python+JVM (MiB)", spark["peak_rss_mb"], floor["peak_rss_mb"]),
        ("output bytes (MiB)", spark["out_bytes"] / 2**20, floor["out_bytes"] / 2**20),
    ]
    if "spark-warm" in results:
        rows.insert(3, ("job on a warm JVM (s)", results["spark-warm"]["job_s"], floor["wall_s"]))
    print(f"\n{'':32}{'spark':>10}{'numpy+pyarrow':>15}{'ratio':>8}")
    for name, s, f in rows:
        ratio = f"{s / f:7.2f}x" if f else ""
        print(f"{name:32}{s:10.2f}{f:15.2f}{ratio:>8}")
    from mnist_mlops.data.spark import class_data_archive
    from mnist_mlops.utils.runtime import require_java

    archive = class_data_archive(require_java())
    print(f"\ncores: {os.cpu_count()}, load avg at end: {os.getloadavg()[0]:.2f}")
    print(f"JVM class-data archive: {'used' if archive.is_file() else 'absent'} ({archive})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-dir", default=os.environ.get("MNIST_RAW_DIR"))
    parser.add_argument("--warm", action="store_true", help="also time a second run on a warm JVM")
    parser.add_argument("--child", choices=["floor", "spark", "spark-warm"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.raw_dir:
        parser.error(
            "give --raw-dir or set MNIST_RAW_DIR to the directory with the MNIST .gz files"
        )
    if args.child:
        args.variant = args.child
        child_main(args)
        return
    variants = ["floor", "spark"] + (["spark-warm"] if args.warm else [])
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        results = {}
        for variant in variants:
            print(f"running {variant} ...", flush=True)
            results[variant] = measure(variant, args.raw_dir, Path(tmp))
        check_same_output(results)
        report(results)


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    main()
