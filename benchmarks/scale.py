"""Benchmark: how preprocessing, generation (data=mnist8m) and the streaming loader scale.

    .venv/bin/python benchmarks/scale.py                      # 20k and 60k images, ~2-4 min
    .venv/bin/python benchmarks/scale.py --sizes 70000 200000 1000000 --source-dir data/processed
    MNIST_RAW_DIR=... .venv/bin/python benchmarks/scale.py --preprocess 70000 1000000 \
        [--standalone]                # preprocessing only, local[2] (and a 2-worker cluster)

``--preprocess``: for each size, raw IDX files of that many images (the real training digits
tiled to ``size - 10,000``, the real 10k test set; gzip level 1) are written once, then
``python -m mnist_mlops.preprocess`` runs in a fresh subprocess with ``local[2]`` and, with
``--standalone``, against ``scripts/spark_standalone.sh``'s cluster (2 workers x 1 core, on
their own ports). A sampler records every process of the run (driver Python, driver JVM,
Python workers, executor JVMs and their Python workers): peak RSS per role and the CPU
seconds of all of them, so images per CPU-second (the per-core rate) is measured apart from
the neighbours' load; the 1-minute load average is recorded before and after each run.

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
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def run_sampled(
    command: list[str], make_sampler: Callable[[int], threading.Thread], what: str
) -> tuple[str, float, Any]:
    """Run ``command`` from the repo root while a sampler thread watches its process tree;
    return (output, wall seconds, the stopped sampler). A failed child ends the benchmark
    with the tail of its output."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = make_sampler(child.pid)
    sampler.start()
    output, _ = child.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"{what} failed:\n{output[-3000:]}")
    return output, wall, sampler


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
    output, wall, sampler = run_sampled(command, TreeSampler, f"generate for size {size}")
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


# --- preprocessing at scale --------------------------------------------------------------


def write_raw(size: int, real_raw: Path, out: Path) -> Path:
    """The four IDX .gz files for ``size`` images: real train digits tiled, real test set."""
    import gzip

    from mnist_mlops.data.idx import MNIST_FILES, load_raw_mnist

    real = load_raw_mnist(real_raw, verify_checksums=True)
    n_train = size - len(real["test"].labels)
    out.mkdir(parents=True)

    def write(role: str, array, count: int) -> None:
        row_shape = array.shape[1:]
        magic = (0x08 << 8) | (1 + len(row_shape))
        dims = (count, *row_shape)
        path = out / MNIST_FILES[role][0]
        with gzip.open(path, "wb", compresslevel=1) as handle:
            handle.write(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims))
            left = count
            while left:
                take = min(left, len(array))
                handle.write(array[:take].tobytes())
                left -= take

    write("train_images", real["train"].images, n_train)
    write("train_labels", real["train"].labels, n_train)
    write("test_images", real["test"].images, len(real["test"].labels))
    write("test_labels", real["test"].labels, len(real["test"].labels))
    return out


class ClusterSampler(threading.Thread):
    """Peak RSS per role and CPU seconds of a run's processes, every 200 ms.

    Roles: ``driver`` (the Python process started), ``driver_jvm`` (its JVM; in ``local[N]``
    the executors run inside it), ``local_workers`` (Python workers that JVM forks),
    ``executor_jvm`` (standalone executors: CoarseGrainedExecutorBackend processes started
    after the run began) and ``executor_workers`` (their Python workers).
    """

    def __init__(self, pid: int, worker_pids: set[int] | None = None) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        # executors count only when a worker daemon of OUR cluster started them: the machine is
        # shared, and other jobs' executors must not enter the CPU seconds or the peaks
        self.worker_pids = worker_pids or set()
        self.started = time.time()
        self.peak_rss: dict[str, int] = {}
        self.peak_sum: dict[str, int] = {}
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def processes(self) -> dict[str, list[psutil.Process]]:
        roles: dict[str, list[psutil.Process]] = {
            k: [] for k in ("driver", "driver_jvm", "local_workers", "executor_jvm",
                            "executor_workers")
        }  # fmt: skip
        roles["driver"].append(self.root)
        for child in self.root.children(recursive=True):
            roles["driver_jvm" if "java" in child.name() else "local_workers"].append(child)
        for worker in self.worker_pids:
            try:
                executors = psutil.Process(worker).children()
            except psutil.Error:
                continue
            for proc in executors:
                roles["executor_jvm"].append(proc)
                roles["executor_workers"].extend(proc.children(recursive=True))
        return roles

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                roles = self.processes()
            except psutil.Error:
                time.sleep(0.2)
                continue
            for role, procs in roles.items():
                total = 0
                for proc in procs:
                    try:
                        rss = proc.memory_info().rss
                        times = proc.cpu_times()
                    except psutil.Error:
                        continue
                    total += rss
                    self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)
                    self.cpu[proc.pid] = times.user + times.system
                self.peak_sum[role] = max(self.peak_sum.get(role, 0), total)
            time.sleep(0.2)


def cluster_worker_pids() -> set[int]:
    """The Worker daemons of the cluster :func:`standalone` started (from their pid files)."""
    pids = set()
    for path in Path(_STANDALONE_DIR, "pids").glob("*Worker*.pid"):
        try:
            pids.add(int(path.read_text().strip()))
        except ValueError:
            continue
    return pids


def preprocess_run(raw: Path, out: Path, size: int, master: str, cluster: bool) -> dict:
    spark = ["spark=cluster", f"spark.master='{master}'", "spark.partitions=2",
             "spark.executor_memory=1g", "spark.executor_cores=1", "spark.num_executors=2",
             "spark.driver_memory=2g"] if cluster else [f"spark.master='{master}'"]  # fmt: skip
    command = [
        sys.executable, "-m", "mnist_mlops.preprocess", f"data.raw_dir={raw}",
        f"data.processed_dir={out}", "data.verify_checksums=false", "data.download=false",
        *spark, f"hydra.run.dir={out.parent}/hydra-pre-{size}",
    ]  # fmt: skip
    load_before = os.getloadavg()[0]
    workers = cluster_worker_pids() if cluster else None
    output, wall, sampler = run_sampled(
        command,
        lambda pid: ClusterSampler(pid, workers),
        f"preprocess for size {size} ({master})",
    )
    steps = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"\]\[INFO\] (.+?) done in ([\d.]+) s", output)
    }
    cpu = sum(sampler.cpu.values())
    return {
        "size": size,
        "master": "standalone 2x1 core" if cluster else master,
        "wall_s": round(wall, 1),
        "images_per_s": round(size / wall),
        "cpu_s": round(cpu, 1),
        "images_per_cpu_s": round(size / cpu),
        "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "steps_s": {k[:40]: v for k, v in steps.items()},
        **{f"peak_rss_{k}_mb": round(v / MB) for k, v in sampler.peak_rss.items()},
        **{f"peak_sum_rss_{k}_mb": round(v / MB) for k, v in sampler.peak_sum.items()
           if k.endswith("workers") or k == "executor_jvm"},
    }  # fmt: skip


def ddp_run(processed: Path, size: int, batches: int) -> dict:
    """One (limited) epoch of backend=spark_ddp, 2 processes, streaming the train split."""
    command = [
        sys.executable, "-m", "mnist_mlops.train", "backend=spark_ddp", "data=mnist8m",
        f"data.processed_dir={processed}", "data.streaming=true", "debug=nolog",
        "trainer.device=cpu", f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=5", "trainer.limit_test_batches=5",
        f"hydra.run.dir={processed.parent}/hydra-ddp-{size}",
    ]  # fmt: skip
    load_before = os.getloadavg()[0]
    output, wall, sampler = run_sampled(command, ClusterSampler, f"spark_ddp for size {size}")
    return {
        "size": size,
        "train_batches_per_rank": batches,
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(sampler.cpu.values()), 1),
        "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # the ranks are the driver's non-JVM descendants (torchrun and its workers)
        "peak_rss_one_worker_mb": round(sampler.peak_rss.get("local_workers", 0) / MB),
        "peak_sum_rss_workers_mb": round(sampler.peak_sum.get("local_workers", 0) / MB),
        "peak_rss_driver_mb": round(sampler.peak_rss.get("driver", 0) / MB),
    }


_STANDALONE_DIR = "/tmp/scale-standalone"


def standalone(action: str) -> str:
    env = {
        **os.environ,
        "SPARK_MASTER_PORT": "7177",
        "SPARK_MASTER_WEBUI_PORT": "8180",
        "SPARK_STANDALONE_DIR": _STANDALONE_DIR,
        "SPARK_WORKER_MEMORY": "2g",
        "SPARK_WORKER_CORES": "1",
    }
    result = subprocess.run(
        ["scripts/spark_standalone.sh", action], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, check=action == "start",
    )  # fmt: skip
    return result.stdout.strip()


def preprocess_bench(
    sizes: list[int], real_raw: Path, cluster: bool, work: Path, ddp_batches: int = 0
) -> list[dict]:
    rows = []
    master_url = standalone("start") if cluster else ""
    try:
        for size in sizes:
            raw = write_raw(size, real_raw, work / f"raw-{size}")
            runs = [("local[2]", False)] + ([(master_url, True)] if cluster else [])
            for master, is_cluster in runs:
                out = work / f"processed-{size}"
                row = preprocess_run(raw, out, size, master, is_cluster)
                rows.append(row)
                print("preprocess", json.dumps(row), flush=True)
                if ddp_batches and not is_cluster:
                    ddp = {"spark_ddp": ddp_run(out, size, ddp_batches)}
                    rows.append(ddp)
                    print("spark_ddp ", json.dumps(ddp), flush=True)
                shutil.rmtree(out)
            shutil.rmtree(raw)
    finally:
        if cluster:
            standalone("stop")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument(
        "--preprocess", type=int, nargs="+", metavar="SIZE",
        help="benchmark preprocessing at these sizes instead (needs MNIST_RAW_DIR)",
    )  # fmt: skip
    parser.add_argument("--standalone", action="store_true", help="also on a 2-worker cluster")
    parser.add_argument(
        "--ddp-batches", type=int, default=0, metavar="N",
        help="after each local preprocess, one spark_ddp epoch (2 ranks, streaming) of N batches",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, help="for the big files (default: a tmp dir)")
    parser.add_argument("--source-dir", type=Path, help="a real processed directory")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.preprocess:
        real_raw = os.environ.get("MNIST_RAW_DIR")
        if not real_raw:
            raise SystemExit("--preprocess needs MNIST_RAW_DIR (the real IDX files to tile)")
        with tempfile.TemporaryDirectory(prefix="scale-pre-", dir=args.work_dir) as tmp:
            rows = preprocess_bench(
                args.preprocess, Path(real_raw), args.standalone, Path(tmp), args.ddp_batches
            )
        if args.json:
            args.json.write_text(
                json.dumps({"cpu": _cpu_model(), "preprocess": rows}, indent=2) + "\n"
            )
        return
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
