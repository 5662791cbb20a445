"""Every ``python -m mnist_mlops.<entry>``: quick ``--help``, its own groups, one exit-code table.

The entrypoints are thin Hydra shells; these tests pin what they share: ``--help`` answers before
torch, MLflow or Spark load, lists only the groups that entry composes, and every exit code comes
from :mod:`mnist_mlops.exit_codes`, the table the README repeats.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_mlops.config import PROJECT_ROOT
from mnist_mlops.exit_codes import ExitCode

ENTRYPOINTS = [
    "preprocess",
    "generate",
    "train",
    "evaluate",
    "register",
    "serve",
    "drift",
    "retrain",
]
HEAVY = ("torch", "mlflow", "pyspark")

# runs the entry's module as __main__ with --help, then reports which heavy packages it loaded
_HELP_PROBE = """
import runpy, sys
sys.argv = [{entry!r}, "--help"]
code = 0
try:
    runpy.run_module("mnist_mlops.{entry}", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("LOADED=" + ",".join(m for m in {heavy!r} if m in sys.modules))
sys.exit(code)
"""


def _help(entry: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE.format(entry=entry, heavy=HEAVY)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.perf_counter() - started


def _groups_listed(help_text: str) -> set[str]:
    block = help_text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    return {m.group(1) for m in re.finditer(r"^([\w/]+): ", block, flags=re.MULTILINE)}


@pytest.mark.parametrize("entry", ENTRYPOINTS)
def test_help_answers_before_torch_mlflow_or_spark_load(entry: str) -> None:
    done, seconds = _help(entry)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED=\n" in done.stdout, f"{entry} --help imported: {done.stdout.splitlines()[-1]}"
    assert f"{entry} is powered by Hydra" in done.stdout
    print(f"{entry} --help: {seconds:.2f} s")  # the benchmark number (-s shows it)


def test_help_lists_only_the_groups_the_entry_composes() -> None:
    register, _ = _help("register")
    train, _ = _help("train")
    assert _groups_listed(register.stdout) == {"data", "paths", "registry", "selection"}
    assert {"model", "backend", "trainer", "logger", "experiment"} <= _groups_listed(train.stdout)
    assert "source" not in _groups_listed(train.stdout)  # a drift group


def test_exit_code_table_is_the_one_the_readme_and_drift_use() -> None:
    from mnist_mlops.monitoring.report import DriftExit
    from mnist_mlops.retrain import EXIT_LOCKED

    readme = (PROJECT_ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\d+)` \| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert table == {str(int(code)): code.name for code in ExitCode}
    assert {int(code) for code in DriftExit} <= {int(code) for code in ExitCode}
    assert DriftExit.ALERT == ExitCode.DRIFT_ALERT and EXIT_LOCKED == ExitCode.LOCKED


@pytest.mark.parametrize(
    ("entry", "override", "named"),
    [
        ("evaluate", "run_file={tmp}/nowhere/run.json", "{tmp}/nowhere/run.json"),
        ("retrain", "trigger=sometimes", "trigger='sometimes'"),
        ("retrain", "watch.max_cycles=abc", "watch.max_cycles"),
        ("train", "trainer.precision=fp8", "trainer.precision"),
    ],
)
def test_a_bad_value_is_one_line_naming_it_and_exit_failed(
    tmp_path: Path, entry: str, override: str, named: str
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"mnist_mlops.{entry}",
            override.format(tmp=tmp_path),
            f"hydra.run.dir={tmp_path / 'hydra'}",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.reports_dir={tmp_path / 'reports'}",
            f"paths.mlflow_dir={tmp_path / 'mlruns'}",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == ExitCode.FAILED
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"{entry}: ")]
    assert len(lines) == 1 and named.format(tmp=tmp_path) in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "reports").exists()  # nothing half-written


# The layers of the package, lowest first: a module imports only from its own package or a lower
# layer (README, "How the code is laid out"); the entrypoints sit on top and nothing imports them.
LAYERS = [
    {"config", "exit_codes", "utils"},
    {"data"},
    {"models", "training", "predictions"},
    {"tracking"},
    {"serving", "monitoring"},
    {"retraining"},
    {*ENTRYPOINTS, "stage_params"},
]


def _layer_of(module: str) -> tuple[int, str]:
    part = module.split(".")[1] if "." in module else module
    for rank, layer in enumerate(LAYERS):
        if part in layer:
            return rank, part
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and the README")


def test_imports_only_go_down_the_layers() -> None:
    from test_import_graph import import_graph  # the ast import graph of the whole package

    upward = []
    for module, imported in import_graph().items():
        if module == "mnist_mlops":
            continue
        rank, package = _layer_of(module)
        for target in imported - {"mnist_mlops"}:
            target_rank, target_package = _layer_of(target)
            if target_package != package and target_rank >= rank:
                upward.append(f"{module} -> {target}")
    assert upward == []
