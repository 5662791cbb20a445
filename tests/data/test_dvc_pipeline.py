"""`dvc repro` for real, in a throwaway git repo: a copy of the project plus synthetic raw data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from data_raw_fixtures import SYNTHETIC_TEST_SIZE, SYNTHETIC_TRAIN_COUNTS

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    return output


def set_yaml_value(path: Path, key: str, old: str, new: str) -> None:
    text = path.read_text()
    assert f"\n{key}: {old}\n" in text, f"{key}: {old} not found in {path}"
    path.write_text(text.replace(f"\n{key}: {old}\n", f"\n{key}: {new}\n"))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory, synthetic_raw_dir: Path):
    """A fresh 'clone': the tracked project files that the stage needs, committed to git."""
    repo = tmp_path_factory.mktemp("dvc-repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("conf", "mnist_mlops", ".dvc", "dvc.yaml", "dvc.lock", ".dvcignore", ".gitignore"):
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(source, repo / item, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, repo / item)
    for local_state in ("cache", "tmp", "config.local"):
        shutil.rmtree(repo / ".dvc" / local_state, ignore_errors=True)
    data_conf = repo / "conf" / "data" / "mnist.yaml"
    # synthetic files cannot match torchvision's MD5s, and hold only 600 training images
    set_yaml_value(data_conf, "verify_checksums", "true", "false")
    set_yaml_value(data_conf, "val_size", "5000", "97")
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_MLOPS_ROOT", "PYTHONPATH")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        MNIST_RAW_DIR=str(synthetic_raw_dir),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "fresh clone"], repo, env)
    return repo, env


def test_dvc_repro_runs_then_is_a_no_op(dvc_repo) -> None:
    repo, env = dvc_repo
    first = run([str(VENV_BIN / "dvc"), "repro", "preprocess"], repo, env)
    assert "Running stage 'preprocess'" in first
    processed = repo / "data" / "processed"
    manifest = json.loads((processed / "manifest.json").read_text())
    assert {s: manifest["splits"][s]["rows"] for s in ("train", "val", "test")} == {
        "train": int(SYNTHETIC_TRAIN_COUNTS.sum()) - 97,
        "val": 97,
        "test": SYNTHETIC_TEST_SIZE,
    }
    assert (processed / "baseline.json").is_file()
    lock = (repo / "dvc.lock").read_text()
    assert "data/processed/train" in lock and "val_size: 97" in lock

    second = run([str(VENV_BIN / "dvc"), "repro", "preprocess"], repo, env)
    assert "Running stage" not in second
    assert "didn't change, skipping" in second or "up to date" in second
    assert json.loads((processed / "manifest.json").read_text()) == manifest


def test_forced_rerun_in_a_new_jvm_reproduces_the_same_bytes(dvc_repo) -> None:
    """Same rows must give the same Parquet bytes, or DVC would re-run every later stage."""
    repo, env = dvc_repo
    lock_before = (repo / "dvc.lock").read_text()
    if "data/processed/train" not in lock_before:
        pytest.skip("needs the repro from test_dvc_repro_runs_then_is_a_no_op")
    output = run([str(VENV_BIN / "dvc"), "repro", "--force", "preprocess"], repo, env)
    assert "Running stage 'preprocess'" in output
    assert (repo / "dvc.lock").read_text() == lock_before


def test_dvc_tracks_only_the_params_the_stage_reads(dvc_repo) -> None:
    repo, env = dvc_repo
    if not (repo / "data" / "processed" / "manifest.json").exists():
        pytest.skip("needs the repro from test_dvc_repro_runs_then_is_a_no_op")
    data_conf = repo / "conf" / "data" / "mnist.yaml"
    dvc = str(VENV_BIN / "dvc")
    set_yaml_value(data_conf, "download", "true", "false")  # not read by preprocessing's outputs
    assert "preprocess" not in run([dvc, "status", "preprocess"], repo, env)
    set_yaml_value(data_conf, "val_size", "97", "98")
    status = run([dvc, "status", "preprocess"], repo, env)
    assert "modified:" in status and "val_size" in status
