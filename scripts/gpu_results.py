"""Train the results page's runs side by side on one machine, recording each without MLflow.

    python scripts/gpu_results.py --out /tmp/results                  # the 11 runs, CUDA
    python scripts/gpu_results.py --out /tmp/r --device cpu --models lenet_v1 --seeds 1 \
        --override trainer.epochs=1 --override trainer.limit_train_batches=5   # smoke run
    python scripts/reproduce_results.py --records /tmp/results/results_records.json \
        --save-rows docs/results_rows.json                             # the page from them

Why: the reproduction takes hours on the 2-core CPU, while a lent GPU box does all of it in
minutes, but has only torch and Hydra (no MLflow, no Spark, no network). So every run here is
the ordinary training entrypoint (``python -m mnist_mlops.train``) with ``logger=json``, which
writes the run's record (params, per-epoch metrics, selected epoch, re-validated val scores,
test scores, epoch times, hardware) to a file; all runs start at once as separate processes
sharing the one GPU, and the records are gathered into one JSON file (``results_records.json``)
after every finished run, so a run stopped by ``--time-limit`` still leaves the others' rows.

The runs are those of ``reproduce_results.py``: the eight designs under ``experiment=report``
(one seed) and ``gap_v8`` under ``experiment=best`` with seeds 1, 2, 3.
``experiment=best_distilled`` needs its teachers as MLflow models and is not run here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_results import BEST_SEEDS, MODELS  # noqa: E402  (a sibling script, not a package)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECORDS_FILE = "results_records.json"


@dataclass
class Job:
    """One training run: its name, Hydra overrides, and (once started) process and files."""

    name: str
    overrides: list[str]
    record: Path = Path()
    log: Path = Path()
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def plan(models: list[str], seeds: list[int], report_seed: int | None) -> list[Job]:
    """The report-regime run of each design, then ``experiment=best`` for each seed."""
    jobs = []
    for model in models:
        seed = [f"seed={report_seed}"] if report_seed is not None else []
        jobs.append(Job(f"report-{model}", ["experiment=report", f"model={model}", *seed]))
    for seed in seeds:
        jobs.append(Job(f"best-gap_v8-seed{seed}", ["experiment=best", f"seed={seed}"]))
    return jobs


def command(job: Job, args: argparse.Namespace, work: Path) -> list[str]:
    """The training entrypoint with a JSON-file logger and this machine's device settings."""
    on_gpu = args.device.startswith("cuda")
    return [
        sys.executable,
        "-m",
        "mnist_mlops.train",
        *job.overrides,
        "logger=json",
        f"logger.path={job.record}",
        f"++logger.tags.results_id={args.results_id}",
        "callbacks=console",
        f"trainer.device={args.device}",
        f"backend.num_threads={args.threads}",
        f"data.keep_on_device={str(on_gpu).lower()}",
        f"hydra.run.dir={work / job.name}",
        f"data.processed_dir={args.processed_dir.resolve()}",
        *args.override,
    ]


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gather(jobs: list[Job], meta: dict[str, Any], out: Path) -> None:
    """Write every record there is (finished or not) with the run conditions, atomically."""
    records = []
    for job in jobs:
        record = read_record(job.record)
        if record is None:
            continue
        record["job"] = {
            "name": job.name,
            "overrides": job.overrides,
            "returncode": job.returncode,
            "wall_s": None if job.ended is None else round(job.ended - job.started, 1),
        }
        records.append(record)
    partial = out / f".{RECORDS_FILE}.tmp"
    partial.write_text(json.dumps({**meta, "records": records}, indent=1) + "\n")
    partial.replace(out / RECORDS_FILE)


def progress(jobs: list[Job], elapsed: float) -> str:
    parts = []
    for job in jobs:
        record = read_record(job.record) or {}
        epochs = len(record.get("history", []))
        state = "done" if job.returncode == 0 else f"rc={job.returncode}"
        parts.append(f"{job.name}:{epochs}ep" + ("" if job.returncode is None else f"({state})"))
    return f"[{elapsed:6.0f}s] " + " ".join(parts)


def machine(device: str) -> dict[str, Any]:
    """Where this ran: the GPU's name from torch (imported here only), CPU cores, versions."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        # PyTorch's default: cuDNN convolutions may use TF32 even in trainer.precision=32-true
        info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="records and logs go here")
    parser.add_argument("--results-id", default=time.strftime("gpu-%Y%m%d-%H%M%S"))
    parser.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", nargs="*", type=int, default=BEST_SEEDS)
    parser.add_argument(
        "--report-seed", type=int, default=None, help="seed of the report runs (default: config's)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds, then SIGTERM")
    parser.add_argument("--commit", default="unknown", help="git commit of the code (for the page)")
    parser.add_argument("--override", action="append", default=[], help="Hydra override, all runs")
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=PROJECT_ROOT / "data" / "processed",
        help="the preprocessed splits (data.processed_dir of every run)",
    )
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-results-"))
    jobs = plan(args.models, args.seeds, args.report_seed)
    if not jobs:
        parser.error("nothing to run: give --models and/or --seeds")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    meta: dict[str, Any] = {
        "results_id": args.results_id,
        "git_commit": args.commit,
        "device": args.device,
        "parallel_runs": len(jobs),
        "threads_per_run": args.threads,
        "overrides": args.override,
        "machine": machine(args.device),
        "test_size": None,
    }
    manifest = read_record(args.processed_dir / "manifest.json")
    if manifest is not None:
        meta["test_size"] = manifest.get("splits", {}).get("test", {}).get("rows")
        meta["dataset_hash"] = manifest.get("dataset_hash")
    start = time.time()
    meta["started"] = start
    for job in jobs:
        job.record = work / f"{job.name}.json"
        job.log = work / f"{job.name}.log"
        job.started = time.time()
        with job.log.open("wb") as log:
            job.process = subprocess.Popen(
                command(job, args, work), cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log
            )
    print(f"started {len(jobs)} runs on {args.device}: {[j.name for j in jobs]}", flush=True)
    last_report = 0.0
    stopped = False
    while any(j.returncode is None for j in jobs):
        time.sleep(2)
        now = time.time()
        for job in jobs:
            if job.returncode is None and job.process is not None:
                code = job.process.poll()
                if code is not None:
                    job.returncode, job.ended = code, now
                    print(f"{job.name} ended rc={code} after {now - job.started:.0f}s", flush=True)
                    if code != 0:
                        tail = job.log.read_bytes()[-2000:].decode(errors="replace")
                        print(f"--- {job.name} log tail ---\n{tail}", flush=True)
                    meta["wall_s"] = round(now - start, 1)
                    gather(jobs, meta, out)
        if now - last_report > 15:
            print(progress(jobs, now - start), flush=True)
            last_report = now
        if not stopped and now - start > args.time_limit:
            stopped = True
            print(f"time limit {args.time_limit:.0f}s: stopping the runs still going", flush=True)
            for job in jobs:
                if job.returncode is None and job.process is not None:
                    job.process.send_signal(signal.SIGTERM)
    meta["ended"] = time.time()
    meta["wall_s"] = round(meta["ended"] - start, 1)
    meta["stopped_at_time_limit"] = stopped
    gather(jobs, meta, out)
    with tarfile.open(out / "run_logs.tar.gz", "w:gz") as tar:
        for job in jobs:
            tar.add(job.log, arcname=job.log.name)
            if job.record.exists():
                tar.add(job.record, arcname=job.record.name)
    finished = sum(j.returncode == 0 for j in jobs)
    print(f"{finished}/{len(jobs)} runs finished in {meta['wall_s']:.0f}s -> {out / RECORDS_FILE}")
    sys.exit(0 if finished == len(jobs) else 1)


if __name__ == "__main__":
    main()
