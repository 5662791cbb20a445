"""Soak test: minutes of mixed valid and invalid traffic against ``python -m mnist_mlops.serve``.

At concurrency 64 (default) for ``--duration`` seconds (default 180), against one server or
two sharing one prediction-log folder (``--servers 2``), each with ``--workers`` uvicorn
workers (default 2), it sends a seeded mix of valid requests (JSON digits, PNG pictures, raw
uint8 batches, feedback) and invalid ones (wrong types, corrupt and bomb PNGs, unsupported
Content-Type, oversized bodies, unknown routes). Halfway through, a second model version is
registered and the production alias moved to it (the servers pick it up by polling). The
prediction log gets a small size budget so segments rotate many times; a reader polls it
throughout, so every prediction answered 200 can be looked for before rotation retires it.

It prints requests, answers by status, unexpected answers, p50/p99 latency, the peak RSS of
every server process, prediction ids answered 200 vs found in the log, and the log's own
counters (segments retired, write failures, records lost); the JSON goes to
``reports/benchmarks/soak.json``.

    python benchmarks/soak.py                          # 180 s, 1 server x 2 workers
    python benchmarks/soak.py --duration 60 --servers 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# Before torch loads OpenMP (as mnist_mlops.serve does): idle OpenMP threads sleep instead of
# spinning, which on a busy machine makes a 2-thread forward pass many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image
from serving import PYTHON, ROOT, _test_digits, standin_store

# the process helpers are test support (tests/support/), not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.processes import free_port, stop_process_group, wait_for_http  # noqa: E402

MIB = 1024**2
OVERSIZED = ("json_too_big", "feedback_too_big")


def add_version(tracking_uri: str, seed: int) -> str:
    """Log another (untrained) gap_v8, register it and move the production alias to it."""
    import mlflow
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mnist_mlops.tracking.mlflow_logger import log_inference_model
    from mnist_mlops.tracking.registry import register_run_model

    mlflow.set_tracking_uri(tracking_uri)
    torch.manual_seed(seed)
    net = instantiate(OmegaConf.load(ROOT / "conf/model/gap_v8.yaml").net).eval()
    experiment = mlflow.get_experiment_by_name("mnist")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        log_inference_model(net, torch.zeros(4, 28, 28, dtype=torch.uint8))
    client = mlflow.MlflowClient(tracking_uri)
    version = register_run_model(client, "mnist-classifier", run.info.run_id)
    client.set_registered_model_alias("mnist-classifier", "production", version)
    return version


def _png(image: np.ndarray, scale: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.kron(image, np.ones((scale, scale), np.uint8))).save(buffer, "PNG")
    return buffer.getvalue()


def _png_bomb(side: int = 20_000) -> bytes:
    """A valid all-black side x side PNG of a few hundred kB (see tests/serving/test_abuse)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = 50
    block = (b"\x00" * (1 + side)) * rows
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeat = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(side // rows):
        checksum = zlib.adler32(block, checksum)
    data = b"\x78\xda" + first + repeat * (side // rows - 1) + deflate.flush()
    data += struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


class Traffic:
    """The request mix: (name, weight, expected statuses, request builder)."""

    def __init__(self, digits: np.ndarray, seed: int) -> None:
        self.random = random.Random(seed)
        self.digits = digits
        self.pngs = [_png(d) for d in digits[:64]]
        self.raw_batch = digits[:32].tobytes()
        self.bomb = _png_bomb()
        self.served: list[tuple[str, str | None]] = []  # (id, feedback_token) for feedback
        json_ct = {"Content-Type": "application/json"}
        self.kinds = [
            ("predict_json", 55, {200}, self._predict_json),
            ("predict_png", 10, {200}, self._predict_png),
            ("batch_raw32", 5, {200}, lambda: ("/predict/batch", self.raw_batch, _ct("octet"))),
            # 409: already labelled; 429: rate limit; 404: its segment was rotated out already
            ("feedback", 3, {200, 404, 409, 429}, self._feedback),
            ("bad_types", 6, {422}, lambda: ("/predict", self._bad_types(), json_ct)),
            (
                "corrupt_png",
                4,
                {422},
                lambda: ("/predict", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, _ct("png")),
            ),
            ("png_bomb", 1, {413}, lambda: ("/predict", self.bomb, _ct("png"))),
            ("wrong_type", 4, {415}, lambda: ("/predict", b"7", {"Content-Type": "text/plain"})),
            ("json_too_big", 1, {413}, lambda: ("/predict", b" " * (MIB + 4096) + b"{}", json_ct)),
            ("feedback_too_big", 2, {413}, lambda: ("/feedback", b" " * 20_000 + b"{}", json_ct)),
            (
                "bad_label",
                3,
                {422},
                lambda: ("/feedback", b'{"id": "' + b"0" * 32 + b'", "label": "7"}', json_ct),
            ),
            ("unknown_route", 2, {404}, lambda: ("/predictions", b"{}", json_ct)),
            ("batch_ragged", 4, {422}, lambda: ("/predict/batch", b"\0" * 1000, _ct("octet"))),
        ]
        self.weights = [k[1] for k in self.kinds]

    def pick(self):
        return self.random.choices(self.kinds, self.weights)[0]

    def _predict_json(self):
        image = self.digits[self.random.randrange(len(self.digits))]
        body = json.dumps({"pixels": image.tolist(), "scale": "0-255"}).encode()
        return "/predict", body, {"Content-Type": "application/json"}

    def _bad_types(self) -> bytes:
        pixels: list = [0] * 784
        pixels[self.random.randrange(784)] = self.random.choice(["7", True, None, [1]])
        return json.dumps({"pixels": pixels, "scale": "0-255"}).encode()

    def _predict_png(self):
        return "/predict", self.pngs[self.random.randrange(len(self.pngs))], _ct("png")

    def _feedback(self):
        if not self.served:
            return self._predict_json()
        prediction_id, token = self.served[self.random.randrange(len(self.served))]
        body = {"id": prediction_id, "label": self.random.randrange(10)}
        if token:
            body["feedback_token"] = token
        return "/feedback", json.dumps(body).encode(), {"Content-Type": "application/json"}


def _ct(kind: str) -> dict:
    return {"Content-Type": {"png": "image/png", "octet": "application/octet-stream"}[kind]}


class Results:
    def __init__(self) -> None:
        self.statuses: Counter = Counter()
        self.by_kind: dict[str, Counter] = {}
        self.unexpected: Counter = Counter()
        self.latencies: list[float] = []
        self.json_latencies: list[float] = []
        self.kind_latencies: dict[str, list[float]] = {}
        self.transport_errors: Counter = Counter()
        self.answered_ids: set[str] = set()
        self.answered_at: dict[str, tuple[float, str]] = {}  # id -> (monotonic time, server)
        self.versions: Counter = Counter()


class Connection:
    """A minimal keep-alive HTTP/1.1 client connection on asyncio streams.

    A tenth of httpx's CPU per request: on a 2-core machine the load generator shares the
    CPU with the servers, and with httpx it, not the servers, set the pace."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        try:
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await self.writer.drain()
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionResetError("closed before answering")
            length, close = 0, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
            data = await self.reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            raise
        if close:
            self.close()
        return int(status_line.split()[1]), data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _client_loop(
    urls: list[str], traffic: Traffic, results: Results, stop: float, seat: int
) -> None:
    server = urls[seat % len(urls)]  # each simulated client sticks to one server
    connection = Connection(server)
    while time.monotonic() < stop:
        name, _, expected, build = traffic.pick()
        path, body, headers = build()
        started = time.perf_counter()
        try:
            status, data = await connection.post(path, body, headers)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # an oversized body is answered 413 and the connection closed at once (the server
            # never reads past the limit); a client still sending may see the reset instead
            kind = "reset after early 413" if name in OVERSIZED else "unexpected"
            results.transport_errors[f"{name} ({kind}): {type(exc).__name__}"] += 1
            continue
        elapsed = time.perf_counter() - started
        results.latencies.append(elapsed)
        if name == "predict_json":
            results.json_latencies.append(elapsed)
        results.kind_latencies.setdefault(name, []).append(elapsed)
        results.statuses[status] += 1
        results.by_kind.setdefault(name, Counter())[status] += 1
        if status not in expected:
            text = data[:120].decode("utf-8", "replace")
            results.unexpected[f"{name} -> {status}: {text}"] += 1
        if status == 200 and path.startswith("/predict"):
            answer = json.loads(data)
            ids = answer["ids"] if "ids" in answer else [answer["id"]]
            results.answered_ids.update(ids)
            now = time.monotonic()
            for prediction_id in ids:
                results.answered_at[prediction_id] = (now, server)
            results.versions[answer["model"]["version"]] += len(ids)
            token = answer.get("feedback_token")
            if len(traffic.served) < 10_000:
                traffic.served.append((ids[0], token))
    connection.close()


async def _load(urls: list[str], traffic: Traffic, results: Results, args) -> None:
    stop = time.monotonic() + args.duration
    await asyncio.gather(
        *(_client_loop(urls, traffic, results, stop, seat) for seat in range(args.concurrency))
    )


class Sampler(threading.Thread):
    """Peak RSS of every server process, polled."""  # (a thread: psutil calls are short)

    def __init__(self, servers: list[subprocess.Popen], interval: float) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.interval = interval
        self.peak_rss: dict[int, int] = {}
        self.first_rss: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample_rss()

    def sample_rss(self) -> None:
        import psutil

        for index, server in enumerate(self.servers):
            try:
                root = psutil.Process(server.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                role = "supervisor" if process.pid == server.pid else "worker"
                if "resource_tracker" in " ".join(_cmdline(process)):
                    role = "resource tracker"
                self.roles[process.pid] = f"server {index + 1} {role}"
                self.peak_rss[process.pid] = max(self.peak_rss.get(process.pid, 0), rss)
                self.first_rss.setdefault(process.pid, rss)


class LogReader:
    """The prediction ids seen in the log, read with the public reader again and again."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.seen_ids: set[str] = set()
        self.reads = 0
        self.last_read: float | None = None
        self.max_gap_s = 0.0  # the longest time between two reads
        self.started = time.monotonic()
        self.on_disk = 0
        self.bytes_per_s = 0.0

    def read(self) -> None:
        from mnist_mlops.predictions import read_prediction_log

        try:
            window = read_prediction_log(self.log_dir)
        except FileNotFoundError:
            return
        self.on_disk = len(window)
        self.seen_ids.update(window.ids.tolist())
        self.reads += 1
        now = time.monotonic()
        if self.reads == 1:
            self.started = now
        elif self.on_disk:
            # bytes/s of log written: bytes per record on disk x records seen per second
            size = sum(p.stat().st_size for p in _segments(self.log_dir))
            self.bytes_per_s = size / self.on_disk * len(self.seen_ids) / (now - self.started)
        if self.last_read is not None:
            self.max_gap_s = max(self.max_gap_s, now - self.last_read)
        self.last_read = now


def _segments(log_dir: Path) -> list[Path]:
    try:
        return [p for p in log_dir.glob("predictions-*") if p.is_file()]
    except OSError:
        return []


def _read_log_until(log_dir: str, interval: float, stop, connection) -> None:
    """In its own process: the load generator's busy event loop would starve a reader thread
    of the GIL (gaps of 39 s were seen), and ids rotated out meanwhile would look lost."""
    reader = LogReader(Path(log_dir))
    while not stop.wait(interval):
        reader.read()
    reader.read()  # after the servers stopped: everything flushed at shutdown
    connection.send(
        {
            "seen_ids": reader.seen_ids,
            "reads": reader.reads,
            "max_gap_s": reader.max_gap_s,
            "bytes_per_s": reader.bytes_per_s,
        }
    )


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return []


def _log_counters(url: str) -> dict[str, float]:
    """The prediction log's own counters from /metrics (summed over label values)."""
    text = httpx.get(url, timeout=10).text
    wanted = (
        "mnist_prediction_log_segments_deleted_total",
        "mnist_prediction_log_write_failures_total",
        "mnist_prediction_log_records_lost_total",
        "mnist_prediction_log_corrupt_total",
        "mnist_rejected_requests_total",
    )
    totals: dict[str, float] = {}
    for name in wanted:
        values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([\d.e+]+)$", text, re.M)
        totals[name] = sum(float(v) for v in values)
    return totals


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per server")
    parser.add_argument("--servers", type=int, default=1, help="servers sharing one log folder")
    # rotation must be slower than the reader (see "retention" in the report), or ids rotated
    # out between two reads count as lost: at ~1,900 predictions/s (~1.7 MB/s of log) 16 MiB
    # keeps ~9 s, and still rotates ~100 times in a minute
    parser.add_argument("--log-budget-mib", type=float, default=16, help="prediction log budget")
    parser.add_argument("--segment-mib", type=float, default=1, help="prediction log segment size")
    parser.add_argument("--promote-at", type=float, default=0.5, help="fraction of the duration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "reports/benchmarks/soak.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    tracking_uri = standin_store(workdir / "store")
    log_dir = workdir / "predictions"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    ports = [free_port() for _ in range(args.servers)]
    servers = [
        subprocess.Popen(
            [
                PYTHON,
                "-m",
                "mnist_mlops.serve",
                f"server.port={port}",
                f"server.workers={args.workers}",
                f"serving.prediction_log_dir={log_dir}",
                f"serving.prediction_log_max_total_bytes={int(args.log_budget_mib * MIB)}",
                f"serving.prediction_log_max_segment_bytes={int(args.segment_mib * MIB)}",
                "serving.poll_interval_s=2",
                f"hydra.run.dir={workdir}/hydra-{port}",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"server-{port}.log", "w"),  # noqa: SIM115
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    traffic = Traffic(_test_digits(), args.seed)
    results = Results()
    # reading the whole log costs ~0.15 s per 4 MiB: poll often enough to see every segment
    # before rotation retires it, not so often that the reader starves the servers
    sampler = Sampler(servers, interval=0.5)
    spawn = multiprocessing.get_context("spawn")
    stop_reading = spawn.Event()
    from_reader, to_main = spawn.Pipe(duplex=False)
    log_reader = spawn.Process(
        target=_read_log_until, args=(str(log_dir), 0.5, stop_reading, to_main), daemon=True
    )
    promotion: dict = {}
    try:
        for url, server in zip(urls, servers, strict=True):
            wait_for_http(f"{url}/ready", server)
        sampler.sample_rss()  # the RSS of the loaded, idle servers: the baseline for growth
        sampler.start()
        log_reader.start()

        def promote() -> None:
            time.sleep(args.duration * args.promote_at)
            started = time.monotonic()
            promotion["version"] = add_version(tracking_uri, seed=args.seed + 1)
            promotion["at_s"] = round(args.duration * args.promote_at, 1)
            promotion["register_s"] = round(time.monotonic() - started, 2)

        promoter = threading.Thread(target=promote, daemon=True)
        promoter.start()
        started = time.monotonic()
        load_started = started
        asyncio.run(_load(urls, traffic, results, args))
        elapsed = time.monotonic() - started
        promoter.join(timeout=60)
        time.sleep(1.5)  # the flusher writes the last buffered predictions
        counters = [_log_counters(f"{url}/metrics") for url in urls]
    finally:
        for server in servers:
            stop_process_group(server)  # SIGTERM: graceful, the log writers flush and close
        sampler.stopping.set()
        stop_reading.set()
        print(f"server logs: {workdir}", file=sys.stderr)
    sampler.join(timeout=10)
    log = from_reader.recv() if from_reader.poll(120) else {"seen_ids": set(), "reads": 0}  # noqa: E501
    log_reader.join(timeout=10)
    seen_ids = log["seen_ids"]
    lost = results.answered_ids - seen_ids
    report = {
        "machine": _machine(),
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "servers": args.servers,
        "workers_per_server": args.workers,
        "log_budget_mib": args.log_budget_mib,
        "segment_mib": args.segment_mib,
        "requests": sum(results.statuses.values()),
        "requests_per_s": round(sum(results.statuses.values()) / elapsed, 1),
        "by_status": dict(sorted(results.statuses.items())),
        "server_errors_5xx": sum(n for s, n in results.statuses.items() if s >= 500),
        "unexpected": dict(results.unexpected.most_common(10)),
        "transport_errors": dict(results.transport_errors),
        "by_kind": {k: dict(v) for k, v in sorted(results.by_kind.items())},
        "latency_ms": {
            "all_p50": round(_percentile(results.latencies, 50), 2),
            "all_p99": round(_percentile(results.latencies, 99), 2),
            "predict_json_p50": round(_percentile(results.json_latencies, 50), 2),
            "predict_json_p99": round(_percentile(results.json_latencies, 99), 2),
            "p50_p99_by_kind": {
                name: [round(_percentile(v, 50), 1), round(_percentile(v, 99), 1)]
                for name, v in sorted(results.kind_latencies.items())
            },
        },
        "promotion": promotion,
        "answers_by_model_version": dict(results.versions),
        "rss_mib_ready_to_peak": {
            f"{sampler.roles[pid]} (pid {pid})": [
                round(sampler.first_rss[pid] / MIB, 1),
                round(rss / MIB, 1),
            ]
            for pid, rss in sorted(sampler.peak_rss.items())
        },
        "prediction_ids_answered_200": len(results.answered_ids),
        "prediction_ids_found_in_log": len(results.answered_ids & seen_ids),
        "prediction_ids_lost": len(lost),
        "lost_sample": [
            {
                "id": i,
                "answered_at_s": round(results.answered_at[i][0] - load_started, 2),
                "server": results.answered_at[i][1],
            }
            for i in sorted(lost, key=lambda i: results.answered_at[i][0])[:20]
        ],
        "log_reads": log["reads"],
        "log_read_max_gap_s": round(log.get("max_gap_s", 0.0), 2),
        # how long a record stays in the log before rotation retires it, at the load's pace
        "log_retention_s_estimate": round(
            args.log_budget_mib * MIB / max(log.get("bytes_per_s", 0.0), 1.0), 1
        ),
        "log_counters": {k: sum(c[k] for c in counters) for k in counters[0]},
    }
    _print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def _print(report: dict) -> None:
    print(
        f"\nsoak: {report['duration_s']} s at concurrency {report['concurrency']}, "
        f"{report['servers']} server(s) x {report['workers_per_server']} workers, prediction "
        f"log budget {report['log_budget_mib']} MiB ({report['segment_mib']} MiB segments)"
    )
    print(f"machine: {report['machine']}")
    print(f"requests: {report['requests']} ({report['requests_per_s']}/s)")
    print("by status: " + ", ".join(f"{s}: {n}" for s, n in report["by_status"].items()))
    print(
        f"5xx: {report['server_errors_5xx']}; "
        f"unexpected answers: {sum(report['unexpected'].values())}"
    )
    for text, count in report["unexpected"].items():
        print(f"  {count} x {text}")
    if report["transport_errors"]:
        print(f"transport errors: {report['transport_errors']}")
    latency = report["latency_ms"]
    print(
        f"latency: all p50 {latency['all_p50']} ms, p99 {latency['all_p99']} ms; "
        f"/predict JSON p50 {latency['predict_json_p50']} ms, p99 {latency['predict_json_p99']} ms"
    )
    print(
        f"promotion: {report['promotion']}; "
        f"answers by version: {report['answers_by_model_version']}"
    )
    print(
        "RSS MiB when ready -> peak: "
        + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in report["rss_mib_ready_to_peak"].items())
    )
    print(
        f"prediction ids answered 200: {report['prediction_ids_answered_200']}, found in the "
        f"log: {report['prediction_ids_found_in_log']}, lost: {report['prediction_ids_lost']} "
        f"({report['log_reads']} log reads, at most {report['log_read_max_gap_s']} s apart; a "
        f"record stays ~{report['log_retention_s_estimate']} s before rotation)"
    )
    print(f"log counters: {report['log_counters']}")
    for row in report["lost_sample"]:
        print(f"  lost: {row}")


if __name__ == "__main__":
    main()
