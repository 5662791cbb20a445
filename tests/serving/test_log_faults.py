"""Fault injection on the prediction log: a full disk (a file-size limit), a deleted folder,
corrupt bytes, and several writer processes sharing one folder over its budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mnist_mlops.monitoring.sources import PredictionLogSource
from mnist_mlops.predictions import (
    PredictionLogWriter,
    new_prediction_id,
    prediction_exists,
    read_prediction_log,
)

RECORD = 784 + 10 * 4 + 32 + 8 + 2 + 1


def _batch(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    return [new_prediction_id() for _ in range(n)], images, probs


def _run_child(code: str, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line as its result."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- a full disk


def test_short_writes_on_a_full_disk_leave_only_whole_records(tmp_path):
    """RLIMIT_FSIZE makes the kernel cut a write short, then refuse with EFBIG, like a disk
    filling up mid-write. Every refused batch is truncated away and counted; the segment stays
    a valid Arrow stream that pyarrow itself reads to the end."""
    result = _run_child(
        f"""
        import json, os, resource
        import numpy as np
        from mnist_mlops.predictions import PredictionLogWriter, new_prediction_id
        writer = PredictionLogWriter({str(tmp_path)!r}, flush_interval_s=60)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        rng = np.random.default_rng(0)
        written = []
        for k in range(40):
            ids = [new_prediction_id() for _ in range(7)]
            images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
            writer.log_predictions(ids, images, np.full((7, 10), 0.1, np.float32), "1")
            writer.flush()
            written.append(ids)
        lost = writer.lost.get(("predictions", "write_failed"), 0)
        print(json.dumps({{"written": written, "lost": lost}}), flush=True)
        os._exit(0)  # no close(): what is on disk now is what a crash would leave
        """
    )
    (segment,) = tmp_path.glob("predictions-*.arrows")
    assert segment.stat().st_size <= 200_000
    table = pa.ipc.open_stream(segment.read_bytes()).read_all()  # no torn record anywhere
    window = read_prediction_log(tmp_path)
    assert not window.damage.any and table.num_rows == len(window)
    flat = [i for ids in result["written"] for i in ids]
    # whole batches only: what is there is a prefix of what was written, batch by batch
    assert list(window.ids) == flat[: len(window)] and len(window) % 7 == 0
    assert result["lost"] == len(flat) - len(window) > 0


def test_feedback_on_a_full_disk_reports_failure_and_leaves_the_log_readable(tmp_path):
    result = _run_child(
        f"""
        import json, resource
        import numpy as np
        from mnist_mlops.predictions import PredictionLogWriter, new_prediction_id
        writer = PredictionLogWriter({str(tmp_path)!r}, flush_interval_s=60)
        ids = [new_prediction_id() for _ in range(3)]
        writer.log_predictions(ids, np.zeros((3, 28, 28), np.uint8),
                               np.full((3, 10), 0.1, np.float32), "1")
        writer.flush()
        first = writer.log_feedback(ids[0], 3)
        size = sum(p.stat().st_size for p in writer.log_dir.glob("feedback-*"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))  # the feedback file is full
        second = writer.log_feedback(ids[1], 4)
        lost = writer.lost[("feedback", "write_failed")]
        print(json.dumps({{"ok": [first, second], "lost": lost}}))
        """
    )
    assert result["ok"] == [True, False] and result["lost"] == 1
    window = read_prediction_log(tmp_path)
    assert window.labels.tolist() == [3, -1, -1] and not window.damage.any


# --------------------------------------------------------------------------- deletion


def test_a_deleted_folder_is_recreated_and_counted(tmp_path):
    log_dir = tmp_path / "log"
    writer = PredictionLogWriter(log_dir, flush_interval_s=60)
    events: list[tuple] = []
    writer._on_event = lambda *event: events.append(event)
    writer.log_predictions(*_batch(5, seed=1), model_version="1")
    writer.flush()
    shutil.rmtree(log_dir)  # an operator's rm -rf, or make clean on an old layout
    ids, images, probs = _batch(4, seed=2)
    writer.log_predictions(ids, images, probs, model_version="1")
    writer.flush()
    assert log_dir.is_dir() and list(read_prediction_log(log_dir).ids) == ids
    assert ("recreated", "predictions", "folder_deleted", 1) in events
    assert ("lost", "predictions", "segment_deleted", 5) in events
    assert writer.log_feedback(ids[0], 1)
    writer.close()
    assert read_prediction_log(log_dir).labels.tolist() == [1, -1, -1, -1]


# --------------------------------------------------------------------------- corrupt bytes


def test_the_reader_resynchronises_past_corrupt_bytes(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    batches = [_batch(3, seed=k) for k in range(3)]
    sizes = []
    for ids, images, probs in batches:
        writer.log_predictions(ids, images, probs, model_version="1")
        writer.flush()
        sizes.append(next(tmp_path.glob("predictions-*.arrows")).stat().st_size)
    writer.close()
    (segment,) = tmp_path.glob("predictions-*.arrows")
    data = bytearray(segment.read_bytes())
    data[sizes[0] : sizes[0] + 64] = os.urandom(64)  # the middle batch's header is garbage
    segment.write_bytes(bytes(data))
    # a second segment that is not an Arrow stream at all
    (tmp_path / "predictions-00000000000000000001-999_dead.arrows").write_bytes(os.urandom(4096))

    window = read_prediction_log(tmp_path)
    assert list(window.ids) == batches[0][0] + batches[2][0]
    np.testing.assert_array_equal(window.images[3:], batches[2][1])
    assert window.damage.corrupt_spans == 1 and window.damage.bad_segments == 1
    assert prediction_exists(tmp_path, batches[2][0][0])
    assert not prediction_exists(tmp_path, batches[1][0][0])
    # the drift source (and so the drift CLI) reads on instead of raising
    source = PredictionLogSource(str(tmp_path), last_n=None).load()
    assert len(source) == 6 and "1 segments, 1 corrupt spans" in source.description


def test_a_live_writers_index_skips_a_corrupt_segment(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    events: list[tuple] = []
    writer._on_event = lambda *event: events.append(event)
    (tmp_path / "predictions-00000000000000000001-999_dead.arrows").write_bytes(b"x" * 4096)
    ids, images, probs = _batch(2)
    writer.log_predictions(ids, images, probs, model_version="1")
    writer.flush()
    assert not writer.contains("f" * 32)
    assert writer.contains(ids[1])
    assert ("corrupt", "predictions", "bad_segment", 1) in events
    writer.close()


# --------------------------------------------------------------------------- many writers

_WRITER_PROCESS = """
import json, sys, time
from pathlib import Path
import numpy as np
from mnist_mlops.predictions import PredictionLogWriter, new_prediction_id
log_dir, seed, rounds, per_round = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
writer = PredictionLogWriter(log_dir, max_segment_bytes={segment}, max_total_bytes={budget},
                             flush_interval_s=0.01)
rng = np.random.default_rng(seed)
written = []
Path(log_dir, f"ready-{{seed}}").touch()  # start together, as two servers would run
while len(list(Path(log_dir).glob("ready-*"))) < 2:
    time.sleep(0.01)
for k in range(rounds):
    ids = [new_prediction_id() for _ in range(per_round)]
    images = rng.integers(0, 256, (per_round, 28, 28), dtype=np.uint8)
    writer.log_predictions(ids, images, np.full((per_round, 10), 0.1, np.float32), str(seed))
    written += ids
    writer.flush()
lost = writer.lost
# stay alive until the other writer is done too (a stopped writer's segments may be retired)
Path(log_dir, f"done-{{seed}}").touch()
while len(list(Path(log_dir).glob("done-*"))) < 2:
    time.sleep(0.01)
writer.close()
print(json.dumps({{"written": written, "lost": {{"/".join(k): v for k, v in lost.items()}}}}))
"""


def test_two_processes_over_budget_lose_nothing_they_should_keep(tmp_path):
    """Two processes (two servers on one folder) write concurrently far past the budget: neither
    loses a record to the other (no segment deleted under its writer), each keeps its newest."""
    segment, budget = 20 * RECORD, 8 * 20 * RECORD
    script = _WRITER_PROCESS.format(segment=segment, budget=budget)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), str(seed), "60", str(3 + 2 * seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    window = read_prediction_log(tmp_path)
    assert not window.damage.any
    ids = list(window.ids)
    for result in results:
        assert "predictions/segment_deleted" not in result["lost"], result["lost"]
        written = result["written"]
        kept = [i for i in ids if i in set(written)]
        assert kept == written[len(written) - len(kept) :]  # its newest, none missing between
        assert len(kept) * RECORD >= budget / 2 - 2 * segment  # about half the budget each
    total = sum(p.stat().st_size for p in tmp_path.glob("predictions-*.arrows"))
    assert total <= budget + 2 * segment
    assert not list(tmp_path.glob(".writer-*.lock"))  # both released their locks


@pytest.mark.parametrize("kill", [True])
def test_a_killed_writer_leaves_a_readable_log_that_others_retire(tmp_path, kill):
    """SIGKILL mid-life: its segments stay readable; its lock is free, so a live writer may
    retire them once over budget."""
    code = f"""
        import json, os, signal, sys
        import numpy as np
        from mnist_mlops.predictions import PredictionLogWriter, new_prediction_id
        writer = PredictionLogWriter({str(tmp_path)!r}, max_segment_bytes={20 * RECORD},
                                     max_total_bytes={4 * 20 * RECORD}, flush_interval_s=60)
        ids = [new_prediction_id() for _ in range(50)]
        writer.log_predictions(ids, np.zeros((50, 28, 28), np.uint8),
                               np.full((50, 10), 0.1, np.float32), "dead")
        writer.flush()
        print(json.dumps(ids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == -9
    dead_ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(read_prediction_log(tmp_path).ids) == dead_ids
    live = PredictionLogWriter(
        tmp_path, max_segment_bytes=20 * RECORD, max_total_bytes=4 * 20 * RECORD
    )
    for k in range(6):
        live.log_predictions(*_batch(10, seed=k), model_version="live")
        live.flush()
    live.close()
    versions = read_prediction_log(tmp_path).model_versions.tolist()
    assert versions.count("live") == 60 and versions.count("dead") < 50
    assert len(list(tmp_path.glob(".writer-*.lock"))) == 1  # the killed writer's, still owning
    for seg in tmp_path.glob("predictions-*.arrows"):
        seg.unlink()
    PredictionLogWriter(tmp_path).close()  # a new writer sweeps locks that own nothing
    assert not list(tmp_path.glob(".writer-*.lock"))


# --------------------------------------------------------------------------- real uvicorn workers


def _serve(tmp_path: Path, name: str, store: Path, log_dir: Path, workers: int, **limits):
    """Start ``python -m mnist_mlops.serve`` (its own process group); returns (process, url)."""
    from support.processes import free_port

    port = free_port()
    args = [
        sys.executable,
        "-m",
        "mnist_mlops.serve",
        f"server.port={port}",
        f"server.workers={workers}",
        f"serving.prediction_log_dir={log_dir}",
        "serving.prediction_log_flush_interval_s=0.05",
        "serving.poll_interval_s=0",
        "serving.torch_threads=1",
        f"hydra.run.dir={tmp_path}/hydra-{name}",
        *[f"serving.prediction_log_{key}={value}" for key, value in limits.items()],
    ]
    metrics_dir = tmp_path / f"metrics-{name}"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with open(tmp_path / f"{name}.log", "w") as server_log:
        process = subprocess.Popen(
            args, stdout=server_log, stderr=server_log, start_new_session=True, env=env
        )
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_two_servers_one_with_two_workers_share_a_folder_over_budget(production_store, tmp_path):
    """Server A (2 uvicorn workers) answers a trickle of single predictions while server B, on
    the same folder, pushes the log far past its budget. The old log let B delete A's open
    segments (31 of 31 lost); now B retires only its own, every prediction A answered is in
    the log, nothing is damaged, and /metrics shows B's rotation and no loss."""
    import httpx
    from support.processes import stop_process_group, wait_for_http

    segment, budget = 60_000, 600_000
    log_dir = tmp_path / "predictions"
    limits = {"max_segment_bytes": segment, "max_total_bytes": budget}
    a, url_a = _serve(tmp_path, "a", production_store, log_dir, 2, **limits)
    b, url_b = _serve(tmp_path, "b", production_store, log_dir, 1, **limits)
    single = {"pixels": [0] * 300 + [255] * 184 + [0] * 300, "scale": "0-255"}
    try:
        wait_for_http(f"{url_a}/ready", a, timeout=240)
        wait_for_http(f"{url_b}/ready", b, timeout=240)

        def predict_a() -> str:  # a new connection each time: both of A's workers answer
            answer = httpx.post(f"{url_a}/predict", json=single, timeout=60)
            assert answer.status_code == 200, answer.text
            return answer.json()["id"]

        served_a = [predict_a() for _ in range(30)]
        rng = np.random.default_rng(0)
        served_b = []
        for _ in range(6):  # 6 x 300 images, ~1.6 MB: B alone is 2.6x the whole budget
            pixels = rng.integers(0, 256, (300, 784), dtype=np.uint8).tobytes()
            answer = httpx.post(
                f"{url_b}/predict/batch",
                content=pixels,
                headers={"Content-Type": "application/octet-stream"},
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
            served_b += answer.json()["ids"]
            served_a.append(predict_a())
        time.sleep(0.5)  # a few flusher ticks: every writer trims to its share
        metrics_b = httpx.get(f"{url_b}/metrics", timeout=30).text
        metrics_a = httpx.get(f"{url_a}/metrics", timeout=30).text
    finally:
        stop_process_group(a)  # SIGTERM: each worker flushes and releases its lock
        stop_process_group(b)
    # graceful either way (uvicorn re-raises SIGTERM after its shutdown when single-process)
    assert a.returncode in (0, -15) and b.returncode in (0, -15), (a.returncode, b.returncode)
    window = read_prediction_log(log_dir)
    logged = set(window.ids.tolist())
    assert not window.damage.any
    lost_a = set(served_a) - logged
    assert not lost_a, f"{len(lost_a)} of {len(served_a)} predictions of server A lost"
    kept_b = [i for i in served_b if i in logged]
    assert kept_b == served_b[len(served_b) - len(kept_b) :] and 0 < len(kept_b) < len(served_b)
    writers = {p.name.rsplit("-", 1)[1] for p in log_dir.glob("predictions-*.arrows")}
    assert len(writers) == 3  # A's two workers and B, side by side
    total = sum(p.stat().st_size for p in log_dir.glob("predictions-*.arrows"))
    assert total <= budget + 3 * segment
    deleted = 'mnist_prediction_log_segments_deleted_total{kind="predictions",reason="budget"}'
    assert deleted in metrics_b
    for text in (metrics_a, metrics_b):
        assert "segment_deleted" not in text and "write_failed" not in text


def test_an_unusable_folder_does_not_stop_the_writer_and_recovers(tmp_path):
    """A path under a regular file cannot be created: start anyway, count the failed writes,
    and write again once the folder can exist."""
    from mnist_mlops.serving.feedback_trust import load_or_create_secret

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    log_dir = blocker / "log"
    assert len(load_or_create_secret(log_dir)) == 32  # ephemeral, logged
    writer = PredictionLogWriter(log_dir, flush_interval_s=60)
    writer.log_predictions(*_batch(3), model_version="1")
    writer.flush()
    assert writer.lost[("predictions", "write_failed")] == 3
    blocker.unlink()
    ids, images, probs = _batch(2, seed=1)
    writer.log_predictions(ids, images, probs, model_version="1")
    writer.flush()
    writer.close()
    assert list(read_prediction_log(log_dir).ids) == ids


def test_log_failures_reach_prometheus(tmp_path):
    """The serving app hands metrics.log_event to its writer: what the log survives is counted."""
    from prometheus_client import REGISTRY

    from mnist_mlops.serving import metrics

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "recreated": sample("mnist_prediction_log_recreated_total", kind="predictions"),
        "lost": sample(
            "mnist_prediction_log_records_lost_total", kind="predictions", reason="segment_deleted"
        ),
    }
    writer = PredictionLogWriter(tmp_path / "log", flush_interval_s=60, on_event=metrics.log_event)
    writer.log_predictions(*_batch(5), model_version="1")
    writer.flush()
    shutil.rmtree(tmp_path / "log")
    writer.log_predictions(*_batch(1), model_version="1")
    writer.flush()
    writer.close()
    assert sample("mnist_prediction_log_recreated_total", kind="predictions") == (
        before["recreated"] + 1
    )
    lost = sample(
        "mnist_prediction_log_records_lost_total", kind="predictions", reason="segment_deleted"
    )
    assert lost == before["lost"] + 5
    assert b"mnist_prediction_log_records_lost_total" in metrics.render()[0]
