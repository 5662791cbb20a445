"""Local server processes started by the benchmarks and by the tests that run real servers
(``mlflow server``, ``mlflow models serve``, ``python -m mnist_mlops.serve``): picking a port,
waiting until the server answers, and stopping it with every process it forked, in one place.

Test support, not part of the package (tests import ``support.processes``, benchmarks
``tests.support.processes``). Standard library only, so a benchmark needs no test client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2) -> bool:
    """Whether a GET of ``url`` answers 200 (``False`` while the server is not up yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_http(
    url: str, process: subprocess.Popen, timeout: float = 180, interval: float = 0.5
) -> None:
    """Block until ``url`` answers 200; fail at once if ``process`` exits instead of waiting
    out the whole timeout for a server that has already died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        if http_ok(url):
            return
        time.sleep(interval)
    raise TimeoutError(f"{url} did not become ready in {timeout}s")


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group of a server started with ``start_new_session=True`` (uvicorn
    and gunicorn fork workers), and SIGKILL it if it has not exited within ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
