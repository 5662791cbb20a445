"""Serving benchmark: this app vs ``mlflow models serve`` on the same registered model.

Both servers serve the same registry version of ``gap_v8`` with the same number of uvicorn
workers (``--workers``, default 2: one per core); the same load generator (``wrk``,
Debian package, one thread so it leaves the cores to the servers) sends one 28x28 test digit
per request at concurrency 1, 16 and 64; then ``/predict/batch`` is timed with raw uint8
bodies, against the bare model's batched forward pass on the same images in this process
(same weights, precision, frozen graph, call size and thread count as one app worker), so
the HTTP + parsing + logging overhead shows as a ratio. Results print side by side and go to
``reports/benchmarks/serving.json``.

    python benchmarks/serving.py                       # production model of the project store
    python benchmarks/serving.py --model-version 3 --duration 15
    python benchmarks/serving.py --standin             # untrained gap_v8 (same compute) in a
                                                       # temp store, when nothing is trained yet
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
import time
from pathlib import Path

# Before torch loads OpenMP (as mnist_mlops.serve does): idle OpenMP threads sleep instead of
# spinning, which on a busy machine makes a 2-thread forward pass many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

# the process helpers are test support (tests/support/), not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.processes import free_port, stop_process_group, wait_for_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MLFLOW = str(Path(PYTHON).with_name("mlflow"))
CONCURRENCY = (1, 16, 64)


def standin_store(store: Path) -> str:
    """An untrained gap_v8 logged and registered like training does; returns the tracking URI."""
    import mlflow
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mnist_mlops.tracking.mlflow_logger import log_inference_model
    from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment

    cfg = OmegaConf.create(
        {
            "tracking_uri": f"sqlite:///{store}/mlflow.db",
            "artifact_location": str(store / "artifacts"),
            "experiment_name": "mnist",
        }
    )
    configure_mlflow(cfg)
    net = instantiate(OmegaConf.load(ROOT / "conf/model/gap_v8.yaml").net).eval()
    with mlflow.start_run(experiment_id=ensure_experiment(cfg)) as run:
        log_inference_model(net, torch.zeros(4, 28, 28, dtype=torch.uint8))
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "mnist-classifier").version
    mlflow.MlflowClient().set_registered_model_alias("mnist-classifier", "production", version)
    return cfg.tracking_uri


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a server process and all its children (uvicorn workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(url: str, body: str, concurrency: int, duration: int, workdir: Path) -> dict:
    """One wrk run (1 thread) POSTing ``body``; returns req/s, p50/p99 ms and error counts."""
    script = workdir / "post.lua"
    script.write_text(
        "wrk.method = 'POST'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.body = {json.dumps(body)}\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency_ms(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def batch_throughput(url: str, images: np.ndarray, repeats: int) -> dict:
    """Images/s of /predict/batch with raw uint8 bodies (and with JSON, for reference)."""
    raw = images.tobytes()
    with httpx.Client(timeout=120) as client:
        client.post(url, content=raw, headers={"Content-Type": "application/octet-stream"})
        started = time.perf_counter()
        for _ in range(repeats):
            response = client.post(
                url, content=raw, headers={"Content-Type": "application/octet-stream"}
            )
            response.raise_for_status()
        raw_rate = repeats * len(images) / (time.perf_counter() - started)
        subset = images[:1000]
        body = json.dumps({"images": subset.tolist(), "scale": "0-255"})
        started = time.perf_counter()
        client.post(url, content=body, headers={"Content-Type": "application/json"})
        json_rate = len(subset) / (time.perf_counter() - started)
    return {"raw_uint8_images_per_s": raw_rate, "json_images_per_s": json_rate}


def bare_model_throughput(
    tracking_uri: str, model_uri: str, images: np.ndarray, repeats: int, settings: dict
) -> dict:
    """Images/s of the model alone, prepared exactly as an app worker prepares it (loader's
    precision, device and frozen graph), called in ``inference_chunk`` slices with the
    worker's torch threads, from uint8 input (the app converts uint8 the same way)."""
    import mlflow
    import torch

    from mnist_mlops.serving.loader import freeze_graph, prepare_for_inference
    from mnist_mlops.tracking.registry import load_logged_model

    mlflow.set_tracking_uri(tracking_uri)
    module, dtype, device = prepare_for_inference(
        load_logged_model(model_uri), settings["precision"], "cpu"
    )
    runner = freeze_graph(module, dtype, device) if settings["freeze_graph"] else module
    torch.set_num_threads(settings["torch_threads"])
    chunk = settings["inference_chunk"]

    def one_pass() -> None:
        unit = images.astype(np.float32) * np.float32(1.0 / 255.0)  # as the app parses uint8
        with torch.inference_mode():
            for start in range(0, len(unit), chunk):
                part = torch.from_numpy(unit[start : start + chunk])
                x = part.unsqueeze(1).to(dtype=dtype, memory_format=torch.channels_last)
                runner(x).float().exp_().numpy()

    one_pass()  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        one_pass()
    done = repeats * len(images)
    return {
        "images_per_s": done / (time.perf_counter() - started),
        # CPU-normalised: on a shared machine the wall-clock rate depends on what else runs
        "images_per_cpu_s": done / (time.process_time() - cpu_started),
        "dtype": str(dtype),
        "threads": settings["torch_threads"],
    }


def _serving_defaults() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf/serve.yaml").serving)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    parser.add_argument("--model-name", default="mnist-classifier")
    parser.add_argument("--model-version", default=None, help="default: the production alias")
    parser.add_argument("--standin", action="store_true", help="untrained gap_v8, temp store")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--workers", type=int, default=2, help="uvicorn workers, the same for both servers"
    )
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--batch-repeats", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "reports/benchmarks/serving.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    tracking_uri = standin_store(workdir / "store") if args.standin else args.tracking_uri
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if args.model_version is None:
        mv = client.get_model_version_by_alias(args.model_name, "production")
    else:
        mv = client.get_model_version(args.model_name, args.model_version)
    model_uri = f"models:/{args.model_name}/{mv.version}"
    digit = _test_digit()
    # mlflow models serve execs `uvicorn` by name: the venv's bin must be on PATH
    path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}

    ours_port, mlflow_port = free_port(), free_port()
    servers = {
        "this app": subprocess.Popen(
            [
                PYTHON,
                "-m",
                "mnist_mlops.serve",
                f"server.port={ours_port}",
                f"serving.prediction_log_dir={workdir}/predictions",
                "serving.poll_interval_s=0",
                f"server.workers={args.workers}",
                f"hydra.run.dir={workdir}/hydra",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "app.log", "w"),  # noqa: SIM115
        ),
        "mlflow models serve": subprocess.Popen(
            [
                MLFLOW,
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "-p",
                str(mlflow_port),
                "-w",
                str(args.workers),
            ],
            cwd=workdir,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "mlflow.log", "w"),  # noqa: SIM115
        ),
    }
    targets = {
        "this app": (
            f"http://127.0.0.1:{ours_port}/predict",
            f"http://127.0.0.1:{ours_port}/ready",
            json.dumps({"pixels": digit.tolist(), "scale": "0-255"}),
        ),
        "mlflow models serve": (
            f"http://127.0.0.1:{mlflow_port}/invocations",
            f"http://127.0.0.1:{mlflow_port}/ping",
            json.dumps({"inputs": (digit / 255.0).astype(np.float32)[None, None].tolist()}),
        ),
    }
    results: dict = {
        "model_uri": model_uri,
        "standin": args.standin,
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, load average before: {os.getloadavg()}",
        "load_generator": "wrk -t1 --latency, one 28x28 digit per request",
        "uvicorn_workers_each": args.workers,
        "servers": {},
    }
    try:
        for name, (url, ready_url, body) in targets.items():
            wait_for_http(ready_url, servers[name])
            _check_same_answer(name, url, body)
            results["servers"][name] = {}
            for concurrency in CONCURRENCY:
                wrk(url, body, concurrency, 2, workdir)  # warm-up
                cpu_before = cpu_seconds(servers[name].pid)
                row = wrk(url, body, concurrency, args.duration, workdir)
                # CPU per request is robust to other load on the machine; req/s is not.
                used = cpu_seconds(servers[name].pid) - cpu_before
                row["server_cpu_ms_per_request"] = 1000 * used / max(row["requests"], 1)
                results["servers"][name][concurrency] = row
        images = np.resize(_test_digits(), (args.batch_size, 28, 28))
        cpu_before = cpu_seconds(servers["this app"].pid)
        results["batch"] = batch_throughput(
            f"http://127.0.0.1:{ours_port}/predict/batch", images, args.batch_repeats
        )
        used = cpu_seconds(servers["this app"].pid) - cpu_before
        served = (args.batch_repeats + 1) * len(images) + 1000
        results["batch"]["server_images_per_cpu_s"] = served / used
        results["model_calls"] = _model_call_sizes(f"http://127.0.0.1:{ours_port}/metrics")
        # the servers are idle now: the bare model gets the same machine
        results["bare_model"] = bare_model_throughput(
            tracking_uri, model_uri, images, args.batch_repeats, _serving_defaults()
        )
        batch, bare = results["batch"], results["bare_model"]
        batch["vs_bare_model"] = batch["raw_uint8_images_per_s"] / bare["images_per_s"]
        batch["vs_bare_model_per_cpu_s"] = (
            batch["server_images_per_cpu_s"] / bare["images_per_cpu_s"]
        )
    finally:
        for process in servers.values():
            stop_process_group(process)
        print(f"server logs: {workdir}", file=sys.stderr)
    results["machine"] += f"; after: {os.getloadavg()}"
    _print_table(results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _test_digits() -> np.ndarray:
    from mnist_mlops.data.splits import load_split

    processed = ROOT / "data/processed/test"
    if processed.exists():
        return load_split(processed, limit=1000).images
    from mnist_mlops.data.synthetic import synthetic_digits

    return synthetic_digits(1000, seed=7)[0]


def _test_digit() -> np.ndarray:
    return _test_digits()[0]


def _model_call_sizes(url: str) -> dict:
    """Mean images per model call, from the app's own histogram (micro-batching at work)."""
    text = httpx.get(url).text
    total = float(re.search(r"^mnist_model_call_images_sum ([\d.e+]+)$", text, re.M).group(1))
    calls = float(re.search(r"^mnist_model_call_images_count ([\d.e+]+)$", text, re.M).group(1))
    return {"calls": calls, "mean_images_per_call": total / max(calls, 1)}


def _check_same_answer(name: str, url: str, body: str) -> None:
    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    response.raise_for_status()
    print(f"{name}: sample answer {response.text[:120]}...", file=sys.stderr)


def _print_table(results: dict) -> None:
    print(f"\nmodel {results['model_uri']}  ({results['machine']})")
    header = f"{'server':<22}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    print(header + f"{'CPU ms/req':>12}")
    for name, rows in results["servers"].items():
        for concurrency, row in rows.items():
            print(
                f"{name:<22}{concurrency:>5}{row['rps']:>10.0f}{row['p50_ms']:>9.2f}"
                f"{row['p99_ms']:>9.2f}{row['errors']:>8}{row['server_cpu_ms_per_request']:>12.2f}"
            )
    ours, theirs = results["servers"]["this app"][16], results["servers"]["mlflow models serve"][16]
    print(f"c=16 speed-up: {ours['rps'] / theirs['rps']:.1f}x req/s")
    batch = results["batch"]
    print(
        f"/predict/batch: {batch['raw_uint8_images_per_s']:.0f} images/s (raw uint8), "
        f"{batch['json_images_per_s']:.0f} images/s (JSON); "
        f"{batch['server_images_per_cpu_s']:.0f} images per server CPU-second"
    )
    bare = results["bare_model"]
    print(
        f"bare model batched forward: {bare['images_per_s']:.0f} images/s, "
        f"{bare['images_per_cpu_s']:.0f} per CPU-second ({bare['dtype']}, {bare['threads']} "
        f"threads); /predict/batch raw uint8 reaches {100 * batch['vs_bare_model']:.0f}% of "
        f"its images/s and {100 * batch['vs_bare_model_per_cpu_s']:.0f}% per CPU-second"
    )
    calls = results["model_calls"]
    print(f"micro-batching: {calls['mean_images_per_call']:.1f} images per model call on average")


if __name__ == "__main__":
    main()
