"""Deployment test helpers: a throwaway PostgreSQL cluster and an ``mlflow server`` backed by it.

PostgreSQL is Debian's own (``/usr/lib/postgresql/<v>/bin``); ``initdb`` refuses to run as root,
so as root the cluster runs as ``nobody`` in a temp dir it owns. Both listen on 127.0.0.1 only,
on free ports, and are stopped (with every worker they forked) when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.processes import stop_process_group, wait_for_http

BIN = Path(sys.executable).parent
RUN_AS = "nobody"


def require(what: str, reason: str) -> None:
    """The missing-tool rule of ``real_raw_dir``: fail in CI (CI=true), else skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _as_cluster_user(args: list[str]) -> list[str]:
    """Run as ``nobody`` when we are root (initdb and postgres refuse to run as root)."""
    return ["runuser", "-u", RUN_AS, "--", *args] if os.geteuid() == 0 else args


@dataclass(frozen=True)
class Postgres:
    """A running cluster: ``uri`` is the SQLAlchemy URL of its ``mlflow`` database."""

    uri: str
    port: int
    log: Path


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: Path, port: int, log: Path, host: str = "127.0.0.1"
) -> Iterator[str]:
    """``mlflow server`` on ``backend_uri``, proxying artifacts to ``artifacts``; yields its URL.
    Fails the test with the server's log if it is not healthy within three minutes (the first
    start creates the schema in PostgreSQL)."""
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri]
    args += ["--artifacts-destination", str(artifacts), "--serve-artifacts"]
    args += ["--host", host, "--port", str(port), "--workers", "2"]
    with open(log, "a") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        )
    try:
        try:
            wait_for_http(f"{url}/health", process, timeout=180)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}:\n{log.read_text()[-5000:]}")
        yield url
    finally:
        stop_process_group(process)
