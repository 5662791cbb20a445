"""Helpers for the serving tests: settings, stores, and real uvicorn servers on free ports."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from model_standins import client_for, registry_config

from mnist_mlops.data.splits import load_split
from mnist_mlops.serving.app import create_app
from mnist_mlops.serving.settings import ServingSettings
from mnist_mlops.tracking.registry import promote_if_better, register_run_model
from mnist_mlops.utils.processes import free_port

ADMIN_TOKEN = "test-admin-token"


def promote(store: Path, run_id: str, processed_dir: Path) -> str:
    """Register ``run_id`` in ``store`` and put it through the real gate; returns the version."""
    client = client_for(store)
    cfg = registry_config(store)
    version = register_run_model(client, cfg.model_name, run_id)
    promote_if_better(client, cfg, version, {"test": load_split(processed_dir / "test")})
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
