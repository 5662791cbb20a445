"""Training backends side by side: local, spark_ddp (1 and 2 processes), orca (1 and 2 workers).

    python benchmarks/backends.py                          # full processed training split
    python benchmarks/backends.py --epochs 1 --limit-train-batches 50   # a quick look
    python benchmarks/backends.py --only local spark_ddp-2 --json out.json

Every configuration is one ``python -m mnist_mlops.train backend=...`` subprocess on the same
model (gap_v8), seed, batch size and Parquet data (``data/processed`` by default), as a user runs
it; ``orca`` needs its own JVM anyway. Per configuration the table shows the LAST epoch's wall
time (training + validation, measured where the epoch runs: in the trainer for local, on rank 0
for the distributed backends) and training images/s, both read back from the run's MLflow
history, the epoch time relative to local, the wall time of the whole command (interpreter and
JVM start, Spark/Orca setup, test split, model logging) and the peak resident memory of the
whole process tree (driver, JVM, Spark Python workers, torchrun children), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from mlflow import MlflowClient

from mnist_mlops.config import PROJECT_ROOT

CONFIGS: dict[str, list[str]] = {
    "local": ["backend=local"],
    "spark_ddp-1": ["backend=spark_ddp", "backend.num_processes=1"],
    "spark_ddp-2": ["backend=spark_ddp", "backend.num_processes=2"],
    "orca-1": ["backend=orca", "backend.workers_per_node=1"],
    "orca-2": ["backend=orca", "backend.workers_per_node=2"],
}


@dataclass
class Result:
    config: str
    epoch_s: float
    images_per_s: float
    wall_s: float
    peak_rss_mib: float
    val_acc: float


class TreeMemory:
    """Peak summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run_config(name: str, args: argparse.Namespace, workdir: Path) -> Result:
    tracking_uri = f"sqlite:///{workdir}/{name}/mlflow.db"
    command = [
        sys.executable,
        "-m",
        "mnist_mlops.train",
        *CONFIGS[name],
        "model=gap_v8",
        f"seed={args.seed}",
        f"data.processed_dir={args.processed_dir}",
        f"data.batch_size={args.batch_size}",
        f"trainer.epochs={args.epochs}",
        "trainer.device=cpu",
        "callbacks=none",
        f"paths.mlflow_dir={workdir}/{name}",
        f"hydra.run.dir={workdir}/{name}/hydra",
    ]
    if args.limit_train_batches:
        command.append(f"trainer.limit_train_batches={args.limit_train_batches}")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    log_path = workdir / f"{name}.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
        memory = TreeMemory(proc.pid)
        returncode = proc.wait()
        peak = memory.stop()
    wall = time.perf_counter() - started
    if returncode != 0:
        raise RuntimeError(f"{name} failed (exit {returncode}); see {log_path}")
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(client.search_experiments()[0].experiment_id)
    last = {
        key: client.get_metric_history(run.info.run_id, key)[-1].value
        for key in ("epoch_time_s", "train/images_per_s", "val/acc")
    }
    return Result(
        name, last["epoch_time_s"], last["train/images_per_s"], wall, peak, last["val/acc"]
    )


def print_table(results: list[Result]) -> None:
    local = next((r for r in results if r.config == "local"), None)
    header = (
        f"{'backend':<12} {'epoch s':>8} {'vs local':>8} {'images/s':>9} {'wall s':>7} "
        f"{'peak RSS MiB':>12} {'val/acc':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.epoch_s / local.epoch_s:.2f}x" if local else "-"
        print(
            f"{r.config:<12} {r.epoch_s:>8.1f} {ratio:>8} {r.images_per_s:>9.0f} "
            f"{r.wall_s:>7.1f} {r.peak_rss_mib:>12.0f} {r.val_acc:>7.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processed-dir", type=Path, default=PROJECT_ROOT / "data" / "processed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (args.processed_dir / "train").is_dir():
        sys.exit(f"no processed splits in {args.processed_dir}: run `dvc repro preprocess` first")
    print(
        f"cpu cores: {os.cpu_count()}, data: {args.processed_dir}, epochs: {args.epochs}, "
        f"batch {args.batch_size}, load average now: {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for name in args.only:
            results.append(run_config(name, args, Path(tmp)))
            print(f"  {name}: done ({results[-1].wall_s:.0f} s)", flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
