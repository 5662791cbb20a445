"""Deployment fixtures (helpers in deploy_helpers.py): a throwaway PostgreSQL cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import RUN_AS, Postgres, _as_cluster_user, postgres_bin_dir, require
from support.processes import free_port


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        require("PostgreSQL", "apt-get install postgresql (initdb in /usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        require("runuser", "needed to run PostgreSQL as an unprivileged user")
    # Not under pytest's tmp_path: its parents are private to root, and the cluster runs as nobody.
    root = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user=RUN_AS)
    data, log, port = root / "data", root / "postgres.log", free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            _as_cluster_user(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"]
                + ["--encoding=UTF8", "--locale=C"]
            ),
            **run,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        subprocess.run(
            _as_cluster_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
                + ["-w", "-t", "60", "start"]
            ),
            **run,
        )
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow"]
            + ["mlflow"],
            **run,
        )
        yield Postgres(
            uri=f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow", port=port, log=log
        )
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"PostgreSQL did not start: {exc.cmd}\n{exc.stderr}")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_cluster_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
