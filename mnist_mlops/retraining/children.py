"""Child entrypoints of a retrain (``python -m mnist_mlops.drift`` / ``mnist_mlops.train``).

A child dies with its parent (``PR_SET_PDEATHSIG``), so a killed retrain never leaves an orphan
training job behind; its output goes to a log file and, line by line, to our console. Its
command line starts with the overrides it shares with the retrain
(:attr:`~mnist_mlops.retraining.settings.ChildSettings.overrides`), so it sees the same
paths, data and registry.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mnist_mlops.retraining.settings import ChildSettings


def child_args(module: str, children: ChildSettings, *overrides: str) -> list[str]:
    """``module`` with the shared overrides first, then this child's own (later ones win)."""
    return [module, *children.overrides, *overrides]


def _die_with_parent() -> None:
    """Child preexec: get SIGTERM when the retrain process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError):  # not Linux: the child is terminated in run_child
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pump(source: Any, log_file: Any, prefix: str | None) -> None:
    """Copy the child's output line by line into its log file (and onto our console)."""
    for line in source:
        log_file.write(line)
        log_file.flush()
        if prefix is not None:
            sys.stdout.write(f"{prefix}{line}")
            sys.stdout.flush()


def run_child(args: list[str], timeout_s: float, log_path: Path, echo: str | None = None) -> int:
    """Run a Python entrypoint as a child; terminate it if this process is interrupted.

    Its output goes to ``log_path`` and, with ``echo`` (a line prefix), to our stdout as well,
    so a long training shows its epoch lines while it runs.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",  # a stray byte must not stop the copying (and block the child)
            bufsize=1,
            # MLflow's artifact download bars are carriage-return noise in a log and a console
            env={**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
            preexec_fn=_die_with_parent,
        )
        pump = threading.Thread(target=_pump, args=(child.stdout, out, echo), daemon=True)
        pump.start()
        try:
            return child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"`{args[0]}` did not finish in {timeout_s}s; see {log_path}"
            ) from exc
        finally:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            pump.join(timeout=10)
