"""`dvc repro` for real, in a throwaway git repo: a copy of the project plus synthetic raw data.

The fresh clone holds what git tracks (no ``dvc.lock``: it records one machine's run and is
git-ignored), and the whole pipeline must leave ``git status`` clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from data_raw_fixtures import (
    SYNTHETIC_GATE_SIZE,
    SYNTHETIC_TEST_SIZE,
    SYNTHETIC_TRAIN_COUNTS,
    SYNTHETIC_VAL_SIZE,
)

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


def fresh_clone(repo: Path, raw_dir: Path, short_training: bool = False) -> dict[str, str]:
    """Copy the tracked project files a `dvc repro` needs into ``repo`` and commit them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("conf", "mnist_mlops", ".dvc", "dvc.yaml", ".dvcignore", ".gitignore"):
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
    set_yaml_value(data_conf, "val_size", "5000", str(SYNTHETIC_VAL_SIZE))
    set_yaml_value(data_conf, "gate_size", "5000", str(SYNTHETIC_GATE_SIZE))
    if short_training:  # committed like any config: the clone must start clean
        trainer_conf = repo / "conf" / "trainer" / "default.yaml"
        set_yaml_value(trainer_conf, "epochs", "15", "2")
        set_yaml_value(trainer_conf, "device", "auto", "cpu")
        set_yaml_value(trainer_conf, "limit_train_batches", "null", "3")
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_MLOPS_ROOT", "PYTHONPATH")}
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        MNIST_RAW_DIR=str(raw_dir),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "fresh clone"], repo, env)
    return env


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory, synthetic_raw_dir: Path):
    """A fresh 'clone' for the preprocess stage."""
    repo = tmp_path_factory.mktemp("dvc-repo")
    return repo, fresh_clone(repo, synthetic_raw_dir)


def test_dvc_repro_runs_then_is_a_no_op(dvc_repo) -> None:
    repo, env = dvc_repo
    first = run([str(VENV_BIN / "dvc"), "repro", "preprocess"], repo, env)
    assert "Running stage 'preprocess'" in first
    processed = repo / "data" / "processed"
    manifest = json.loads((processed / "manifest.json").read_text())
    assert {s: manifest["splits"][s]["rows"] for s in ("train", "val", "test")} == {
        "train": int(SYNTHETIC_TRAIN_COUNTS.sum()) - SYNTHETIC_VAL_SIZE - SYNTHETIC_GATE_SIZE,
        "val": SYNTHETIC_VAL_SIZE,
        "test": SYNTHETIC_TEST_SIZE,
    }
    assert (processed / "baseline.json").is_file()
    lock = (repo / "dvc.lock").read_text()
    assert "data/processed/train" in lock and f"val_size: {SYNTHETIC_VAL_SIZE}" in lock
    # no machine paths in the manifest: the same rows give the same file in every clone
    text = (processed / "manifest.json").read_text()
    assert str(repo) not in text and str(env["MNIST_RAW_DIR"]) not in text
    assert manifest["config"]["data"]["val_size"] == SYNTHETIC_VAL_SIZE

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
    set_yaml_value(data_conf, "val_size", str(SYNTHETIC_VAL_SIZE), str(SYNTHETIC_VAL_SIZE + 1))
    status = run([dvc, "status", "preprocess"], repo, env)
    assert "modified:" in status and "val_size" in status


@pytest.mark.slow
def test_full_pipeline_on_a_fresh_clone_reports_progress_and_leaves_git_clean(
    tmp_path: Path, synthetic_raw_dir: Path
) -> None:
    """What `make run` does before serving: every stage, per-epoch lines, a clean work tree."""
    repo = tmp_path / "clone"
    repo.mkdir()
    env = fresh_clone(repo, synthetic_raw_dir, short_training=True)
    dvc = str(VENV_BIN / "dvc")
    output = run([dvc, "repro"], repo, env)
    for stage in ("preprocess", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in output
    # the train stage tells the user where it is, one line per epoch
    epochs = re.findall(
        r"^epoch (\d)/2  train/loss=\S+ .* val/acc=\S+  time=\S+  ETA \S+$", output, flags=re.M
    )
    assert epochs == ["1", "2"], output[-3000:]
    assert json.loads((repo / "reports" / "train" / "run.json").read_text())["run_id"]
    assert (repo / "reports" / "promotion.json").is_file()
    # dvc.lock is this clone's record of its run: written, and ignored by git
    assert (repo / "dvc.lock").is_file()
    run(["git", "check-ignore", "-q", "dvc.lock"], repo, env)
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], repo, env)
    assert status == "", f"the pipeline dirtied the clone:\n{status}"
    # and a second repro has nothing to do
    again = run([dvc, "repro"], repo, env)
    assert "Running stage" not in again, again[-2000:]

    # The train stage's params are the composed config, so keys that no hand list named count:
    # a trainer.limit_* value, and an experiment chosen in conf/local (the user's overrides)
    trainer_conf = repo / "conf" / "trainer" / "default.yaml"
    set_yaml_value(trainer_conf, "limit_train_batches", "3", "2")
    assert "Running stage 'train_params'" in run([dvc, "repro", "train_params"], repo, env)
    status = run([dvc, "status", "train"], repo, env)
    assert "trainer.limit_train_batches" in status, status
    set_yaml_value(trainer_conf, "limit_train_batches", "2", "3")
    local = repo / "conf" / "local" / "default.yaml"
    local.parent.mkdir()
    local.write_text("# @package _global_\ndefaults:\n  - override /experiment: report\n")
    run([dvc, "repro", "train_params"], repo, env)
    status = run([dvc, "status", "train"], repo, env)
    assert "trainer.precision" in status, status  # experiment=report trains in float32
    local.unlink()
    # while a key training does not read leaves it up to date
    set_yaml_value(repo / "conf" / "eval.yaml", "batch_size", "2000", "1000")
    run([dvc, "repro", "train_params"], repo, env)
    assert "train:" not in run([dvc, "status", "train"], repo, env)
