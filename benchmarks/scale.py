"""Benchmark: how generation (data=mnist8m) and the streaming loader scale with the dataset.

    .venv/bin/python benchmarks/scale.py                      # 20k and 60k images, ~2-4 min
    .venv/bin/python benchmarks/scale.py --sizes 70000 200000 1000000 --source-dir data/processed

For each size, ``python -m mnist_mlops.generate`` runs in a fresh subprocess (its own JVM, as a
user runs it) while this process samples the memory (PSS) of its process tree, split into the
driver (the Python process), the JVM and the Python workers Spark forks (the executors' side
in ``local[N]``). Then one epoch of the streaming loader (rank 0 of 1 and of 2) and, for
comparison, the in-memory ``load_split`` run in fresh subprocesses that report their peak RSS
and Arrow's peak allocation. On a shared machine wall time depends on the neighbours, so the
generator's own rate is also measured as images per CPU-second of this process (one core):
the number to extrapolate from.

Without ``--source-dir`` the source digits are 2,000 synthetic ones (the generator's cost does
not depend on which digits it deforms); ``--source-dir`` takes a real processed directory.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # a dvc dependency, so always present in the project venv

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


class TreeSampler(threading.Thread):
    """Peak PSS per role (driver, JVM, Python workers) of a process tree, every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = {"driver": 0, "jvm": 0, "workers": 0, "total": 0}
        self.stop = threading.Event()

    def role(self, proc: psutil.Process) -> str:
        if proc.pid == self.root.pid:
            return "driver"
        return "jvm" if "java" in proc.name() else "workers"

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            now = {"driver": 0, "jvm": 0, "workers": 0}
            for proc in procs:
                try:
                    now[self.role(proc)] += _pss(proc)
                except psutil.Error:
                    continue
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)
            self.peak["total"] = max(self.peak["total"], sum(now.values()))
            time.sleep(0.1)


def _pss(proc: psutil.Process) -> int:
    """Proportional set size: pages shared by forked workers (pyspark's daemon forks them)
    count once in the sum, where RSS would count them in every process."""
    try:
        return proc.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):
        return proc.memory_info().rss


def synthetic_source(root: Path) -> Path:
    """A processed directory of synthetic digits (train 2,000; 200 per held-out split)."""
    import pyarrow.parquet as pq

    from mnist_mlops.data.baseline import compute_baseline
    from mnist_mlops.data.manifest import write_json
    from mnist_mlops.data.splits import arrays_to_table
    from mnist_mlops.data.synthetic import synthetic_digits

    for offset, (split, size) in enumerate(
        {"train": 2000, "val": 200, "gate": 200, "test": 200}.items()
    ):
        images, labels = synthetic_digits(size, seed=offset)
        (root / split).mkdir(parents=True)
        ids = [f"{split}-{i:05d}" for i in range(size)]
        pq.write_table(arrays_to_table(images, labels, ids), root / split / "part-00000.parquet")
        if split == "train":
            write_json(
                root / "baseline.json", compute_baseline(images, labels, "synthetic", seed=0)
            )
    return root


def generate(size: int, source: Path, out: Path, partitions: int, master: str) -> dict:
    command = [
        sys.executable, "-m", "mnist_mlops.generate",
        f"data.generator.source_dir={source}", f"data.processed_dir={out}",
        f"data.generator.size={size}", f"spark.master='{master}'", f"spark.partitions={partitions}",
        f"hydra.run.dir={out.parent}/hydra-{size}",
    ]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = TreeSampler(child.pid)
    sampler.start()
    output, _ = child.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"generate failed for size {size}:\n{output[-3000:]}")
    import pyarrow.parquet as pq

    groups = [
        meta.row_group(g).num_rows
        for f in sorted((out / "train").glob("*.parquet"))
        for meta in [pq.ParquetFile(f).metadata]
        for g in range(meta.num_row_groups)
    ]
    step = re.search(r"generating \d+ deformed images done in ([\d.]+) s", output)
    return {
        "size": size,
        "wall_s": round(wall, 1),
        "spark_generate_s": float(step.group(1)) if step else None,
        "images_per_s": round(size / wall),
        "train_bytes_per_image": round(
            sum(f.stat().st_size for f in (out / "train").iterdir()) / size
        ),
        "row_groups": len(groups),
        "row_group_rows_min_max": [min(groups), max(groups)],
        **{f"peak_{k}_pss_mb": round(v / MB) for k, v in sampler.peak.items()},
    }


_LOADER = """
import json, resource, sys, time
from mnist_mlops.data.splits import load_split
from mnist_mlops.training.streaming import ShardedStream
mode, path, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, rows = time.perf_counter(), 0
if mode == "stream":
    stream = ShardedStream([path], rank=0, world_size=world, seed=0, buffer_rows=20000)
    for images, labels in stream.batches(0, 128):
        rows += len(labels)
else:
    rows = len(load_split(path))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import pyarrow as pa
print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak / 1024,
                  "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
                  "growth_mb": (peak - before) / 1024}))
"""


def loader(mode: str, train_dir: Path, world: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, mode, str(train_dir), str(world)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "rows": data["rows"],
        "rows_per_s": round(data["rows"] / data["seconds"]),
        "peak_rss_mb": round(data["peak_mb"]),
        "growth_mb": round(data["growth_mb"]),
        "arrow_peak_mb": round(data["arrow_peak_mb"]),
    }


def generator_cpu_rate(source: Path, images: int = 5000) -> float:
    """Images per CPU-second of the numpy generator on one core (this process's CPU time, so
    neighbours on a shared machine do not count): the per-core rate to extrapolate from."""
    from mnist_mlops.data.deform import generate_range
    from mnist_mlops.data.splits import load_split

    train = load_split(source / "train")
    started = time.process_time()
    generate_range(train.images, train.labels, 0, 0, images)
    return images / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--source-dir", type=Path, help="a real processed directory")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: dict = {"cpu": _cpu_model(), "master": args.master, "generate": [], "loader": []}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        source = (
            args.source_dir.resolve() if args.source_dir else synthetic_source(Path(tmp) / "source")
        )
        results["generator_images_per_cpu_s"] = round(generator_cpu_rate(source))
        print(
            "generator images per CPU-second (numpy, one core):",
            results["generator_images_per_cpu_s"],
        )
        for size in args.sizes:
            out = Path(tmp) / f"gen-{size}"
            row = generate(size, source, out, args.partitions, args.master)
            results["generate"].append(row)
            print("generate", json.dumps(row), flush=True)
            for mode, world in (("stream", 1), ("stream", 2), ("in_memory", 1)):
                entry = {
                    "size": size,
                    "mode": mode,
                    "world_size": world,
                    **loader(mode, out / "train", world),
                }
                results["loader"].append(entry)
                print("loader  ", json.dumps(entry), flush=True)
            shutil.rmtree(out)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
