"""Helpers for the serving tests: settings, stores, and real uvicorn servers on free ports."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import uvicorn
from model_standins import client_for, registry_config
from support.processes import free_port

from mnist_mlops.data.splits import load_split
from mnist_mlops.serving.app import create_app
from mnist_mlops.serving.settings import ServingSettings
from mnist_mlops.tracking.registry import promote_if_better, register_run_model

ADMIN_TOKEN = "test-admin-token"


def promote(store: Path, run_id: str, processed_dir: Path) -> str:
    """Register ``run_id`` in ``store`` and put it through the real gate; returns the version."""
    client = client_for(store)
    cfg = registry_config(store)
    version = register_run_model(client, cfg.model_name, run_id)
    promote_if_better(client, cfg, version, {"gate": load_split(processed_dir / "gate")})
    return version


def make_settings(store: Path, log_dir: Path, **overrides) -> ServingSettings:
    values = {
        "tracking_uri": f"sqlite:///{store}/mlflow.db",
        "prediction_log_dir": str(log_dir),
        "admin_token": ADMIN_TOKEN,
        "poll_interval_s": 0,
        "prediction_log_flush_interval_s": 0.05,
        "torch_threads": 1,
    }
    values.update(overrides)
    return ServingSettings(**values)


@contextlib.contextmanager
def live_server(settings: ServingSettings, startup_timeout: float = 60) -> Iterator[str]:
    """A real uvicorn server (uvloop + httptools, as in production) on 127.0.0.1:<free port>."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_until(predicate, timeout: float = 20, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def get_json(url: str) -> tuple[int, dict]:
    response = httpx.get(url, timeout=10)
    return response.status_code, response.json()


@dataclasses.dataclass
class RawAnswer:
    """What a raw HTTP exchange produced: the answer, and how much of the body got out."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the server let us send before it answered or closed
    seconds: float

    def json(self) -> dict:
        return json.loads(self.body)


def raw_exchange(
    url: str, head: str, chunks: Iterable[bytes], pause_s: float = 0.0, timeout: float = 20
) -> RawAnswer:
    """Send ``head`` then ``chunks`` over a plain socket, stopping as soon as the server
    answers or closes; return its answer. Unlike an HTTP client, this shows what the server
    does mid-body (answer early, stop reading) instead of hiding it behind a write error."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    sent = 0
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        for chunk in chunks:
            if select.select([sock], [], [], pause_s)[0]:
                break  # the server has answered (or closed) already
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        received = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                if _complete(received):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    seconds = time.monotonic() - started
    if not received:
        return RawAnswer(None, {}, b"", sent, seconds)
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return RawAnswer(int(lines[0].split()[1]), headers, body, sent, seconds)


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``Transfer-Encoding: chunked`` framing of ``pieces`` (with the final zero chunk)."""
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"
