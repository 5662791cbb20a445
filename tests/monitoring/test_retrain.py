"""Retraining: triggers, feedback snapshots, the lock, interrupted-run recovery, and the whole
chain end to end on synthetic data with a real MLflow registry and real training processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from support.processes import free_port

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.splits import load_split
from mnist_mlops.data.synthetic import synthetic_digits
from mnist_mlops.predictions import PredictionLogWriter
from mnist_mlops.retraining.cycle import (
    DECISION_TAG,
    RETRAIN_TAG,
    recover_interrupted,
    retrain,
    should_retrain,
)
from mnist_mlops.retraining.feedback import collect_feedback
from mnist_mlops.retraining.lock import RetrainLocked, exclusive_lock
from mnist_mlops.retraining.settings import RetrainSettings
from mnist_mlops.tracking.registry import alias_version, register_run_model

MODEL = "mnist-classifier"
# a LeNet that learns the synthetic digits in seconds, and one that barely trains at all
GOOD_TRAINING = [
    "model=lenet_v1",
    "model/optimizer=adam",
    "model.optimizer.lr=0.003",
    "trainer.epochs=5",
    "callbacks=none",
    "trainer.device=cpu",
    "backend.num_threads=1",
    "data.batch_size=64",
]
BAD_TRAINING = [
    *GOOD_TRAINING[:2],
    "trainer.epochs=1",
    "trainer.limit_train_batches=1",
    *GOOD_TRAINING[4:],
]


def _overrides(root: Path, processed: Path, *extra: str) -> list[str]:
    return [
        f"paths.root_dir={root}",
        f"paths.processed_dir={processed}",
        f"data.processed_dir={processed}",
        f"registry.tracking_uri=sqlite:///{root}/mlruns/mlflow.db",
        f"registry.artifact_location={root}/mlruns/artifacts",
        *extra,
    ]


def _compose(root: Path, processed: Path, *extra: str) -> RetrainSettings:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "retrain", overrides=_overrides(root, processed, *extra), return_hydra_config=True
        )
    return RetrainSettings.from_config(cfg)


def _set_champion(client, run_id: str) -> str:
    version = register_run_model(client, MODEL, run_id)
    client.set_registered_model_alias(MODEL, "production", version)
    return version


def _quote_list(items: list[str]) -> str:
    return "[" + ",".join(f'"{item}"' for item in items) + "]"


def _log_predictions(log_dir: Path, n: int, n_labelled: int, seed: int = 0) -> list[str]:
    """``n`` predictions a second apart, the first ``n_labelled`` with feedback."""
    images, labels = synthetic_digits(n, seed=seed)
    writer = PredictionLogWriter(log_dir, flush_interval_s=0.05)
    ids = [f"{i:032x}" for i in range(n)]
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    probs = np.full((n, 10), 0.1, np.float32)
    for i in range(n):
        writer.log_predictions(
            [ids[i]], images[i : i + 1], probs[i : i + 1], "1", start + i * 10**6
        )
    for i in range(n_labelled):
        writer.log_feedback(ids[i], int(labels[i]), trusted=True)  # sent with its token
    writer.close()
    return ids


# --------------------------------------------------------------------------- fast unit tests


def test_feedback_snapshot_holds_out_the_newest_and_writes_a_manifest(tmp_path: Path) -> None:
    ids = _log_predictions(tmp_path / "log", n=120, n_labelled=100)
    snap = collect_feedback(tmp_path / "log", tmp_path / "feedback", eval_fraction=0.3, min_eval=20)
    assert snap is not None
    train, recent = load_split(snap.train_dir), snap.eval_arrays()
    assert (len(train), len(recent)) == (70, 30)
    # held out by time: every eval prediction is newer than every training one
    assert sorted(recent.image_ids) == ids[70:100] and sorted(train.image_ids) == ids[:70]
    manifest = json.loads((snap.root / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 70
    assert sum(manifest["splits"]["recent_eval"]["label_counts"]) == 30
    assert len(manifest["splits"]["train"]["content_hash"]) == 64
    # a different split of the feedback is a different snapshot, beside the first one
    again = collect_feedback(
        tmp_path / "log", tmp_path / "feedback", eval_fraction=0.5, min_eval=20
    )
    assert again is not None and len(again.eval_arrays()) == 50
    assert again.root != snap.root and snap.root.is_dir()
    # no staging dir is left behind, and latest.json names the newest snapshot
    assert sorted(p.name for p in (tmp_path / "feedback").iterdir()) == [
        "latest.json",
        "snapshots",
    ]
    latest = json.loads((tmp_path / "feedback" / "latest.json").read_text())
    assert latest == {"snapshot": str(again.root)}


def test_feedback_snapshot_is_content_addressed(tmp_path: Path) -> None:
    import hashlib

    _log_predictions(tmp_path / "log", n=60, n_labelled=40)
    snap = collect_feedback(tmp_path / "log", tmp_path / "fb", eval_fraction=0.25, min_eval=5)
    assert snap is not None
    assert snap.root == tmp_path / "fb" / "snapshots" / snap.snapshot_id[:16]
    assert len(snap.snapshot_id) == 64
    # the manifest pins every Parquet file by its sha256, and rows per split
    files = snap.manifest["files"]
    assert sorted(files) == ["recent_eval/part-00000.parquet", "train/part-00000.parquet"]
    for name, digest in files.items():
        assert hashlib.sha256((snap.root / name).read_bytes()).hexdigest() == digest
    assert {k: v["rows"] for k, v in snap.manifest["splits"].items()} == {
        "train": 30,
        "recent_eval": 10,
    }
    # the same feedback again: the same folder, left exactly as it was
    before = {p: p.stat().st_mtime_ns for p in snap.root.rglob("*")}
    same = collect_feedback(tmp_path / "log", tmp_path / "fb", eval_fraction=0.25, min_eval=5)
    assert same is not None and same.root == snap.root and same.manifest == snap.manifest
    assert {p: p.stat().st_mtime_ns for p in snap.root.rglob("*")} == before
    # one more label: new content, new id, new folder
    from mnist_mlops.predictions import PredictionLogWriter

    ids = [f"{i:032x}" for i in range(60)]
    writer = PredictionLogWriter(tmp_path / "log", flush_interval_s=0.05)
    writer.log_feedback(ids[50], 3, trusted=True)
    writer.close()
    grown = collect_feedback(tmp_path / "log", tmp_path / "fb", eval_fraction=0.25, min_eval=5)
    assert grown is not None and grown.snapshot_id != snap.snapshot_id
    assert len(list((tmp_path / "fb" / "snapshots").iterdir())) == 2


def test_snapshot_is_logged_to_the_run_as_mlflow_input_datasets(tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from mnist_mlops.retraining.feedback import log_snapshot_inputs

    _log_predictions(tmp_path / "log", n=60, n_labelled=40)
    snap = collect_feedback(tmp_path / "log", tmp_path / "fb", eval_fraction=0.25, min_eval=5)
    assert snap is not None
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    log_snapshot_inputs(client, run_id, snap)
    run = client.get_run(run_id)
    assert run.data.tags["feedback.snapshot"] == snap.snapshot_id
    assert run.data.tags["feedback.snapshot_dir"] == str(snap.root)
    logged = {
        d.dataset.name: (d.dataset, {t.key: t.value for t in d.tags})
        for d in run.inputs.dataset_inputs
    }
    assert sorted(logged) == ["feedback-recent_eval", "feedback-train"]
    train, train_tags = logged["feedback-train"]
    assert train.digest == snap.snapshot_id[:16]
    assert train_tags["mlflow.data.context"] == "training"
    assert logged["feedback-recent_eval"][1]["mlflow.data.context"] == "evaluation"
    assert json.loads(train.profile)["num_rows"] == 30
    assert json.loads(train.source)["uri"] == str(snap.root / "train")
    # the logged source resolves back to the snapshot's rows
    source = mlflow.data.get_source(logged["feedback-train"][0]).load()
    assert len(load_split(source)) == 30


def test_feedback_too_small_to_hold_out_all_goes_to_training(tmp_path: Path) -> None:
    _log_predictions(tmp_path / "log", n=30, n_labelled=20)
    snap = collect_feedback(tmp_path / "log", tmp_path / "fb", eval_fraction=0.3, min_eval=50)
    assert snap is not None and snap.eval_dir is None and len(load_split(snap.train_dir)) == 20
    assert collect_feedback(tmp_path / "empty", tmp_path / "fb2", 0.3, 50) is None


def test_triggers(tmp_path: Path, synthetic_processed_dir: Path) -> None:
    cfg = _compose(tmp_path, synthetic_processed_dir, "trigger=drift", "drift.check_now=false")
    assert should_retrain(cfg, tmp_path) == (False, "no drift alert marker")
    Path(cfg.drift.alert_marker).parent.mkdir(parents=True)
    Path(cfg.drift.alert_marker).write_text("{}")
    go, why = should_retrain(cfg, tmp_path)
    assert go and "marker" in why

    cfg = _compose(tmp_path, synthetic_processed_dir, "trigger=schedule", "schedule.every_h=24")
    assert should_retrain(cfg, tmp_path)[0]  # never retrained
    state = Path(cfg.state_path)
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"last_success": datetime.now(UTC).isoformat()}))
    assert not should_retrain(cfg, tmp_path)[0]
    old = datetime.now(UTC) - timedelta(hours=25)
    state.write_text(json.dumps({"last_success": old.isoformat()}))
    assert should_retrain(cfg, tmp_path)[0]

    with pytest.raises(ValueError, match="trigger='sometimes'"):
        should_retrain(_compose(tmp_path, synthetic_processed_dir, "trigger=sometimes"), tmp_path)


def test_children_get_the_retrains_overrides_of_the_shared_groups(
    tmp_path: Path, synthetic_processed_dir: Path
) -> None:
    from omegaconf.errors import ValidationError

    from mnist_mlops.retraining.children import child_args

    given = ["registry=server", "+data.note=x", "trigger=force", 'train.overrides=["model=a"]']
    settings = _compose(tmp_path, synthetic_processed_dir, *given)
    # paths.*, data.*, registry.* and the registry group choice pass on; retrain's own keys do not
    shared = [*_overrides(tmp_path, synthetic_processed_dir), *given[:2]]
    assert settings.children.overrides == shared
    assert settings.registry.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    # shared first, the child's own after them (Hydra: the later value of a key wins)
    assert child_args("m", settings.children, "data.x=1") == ["m", *shared, "data.x=1"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        bare = compose("retrain", overrides=_overrides(tmp_path, synthetic_processed_dir))
    with pytest.raises(ValueError, match="cannot tell which overrides"):
        RetrainSettings.from_config(bare)  # children would silently lose the paths
    with pytest.raises(ValidationError, match="schedule.every_h"):
        _compose(tmp_path, synthetic_processed_dir, "schedule.every_h=soon")


def test_second_retrain_is_refused_while_the_lock_is_held(
    tmp_path: Path, synthetic_processed_dir: Path
) -> None:
    cfg = _compose(tmp_path, synthetic_processed_dir, "trigger=force")
    with exclusive_lock(cfg.lock_path, "retrain"), pytest.raises(RetrainLocked) as refused:
        retrain(cfg)
    assert "another retrain is already running" in str(refused.value)
    assert f'"pid": {os.getpid()}' in str(refused.value)


def test_a_failed_retrain_replaces_the_last_outcome_with_the_error(
    tmp_path: Path, synthetic_processed_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_mlops.retrain import run_once

    cfg = _compose(
        tmp_path,
        synthetic_processed_dir,
        "trigger=force",
        'train.overrides=["model=no_such_model"]',  # the training child exits 1 at once
    )
    report = Path(cfg.report_path)
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"status": "promoted", "version": "3"}))  # an earlier run
    assert run_once(cfg) == 1
    outcome = json.loads(report.read_text())
    assert outcome["status"] == "failed" and outcome["step"] == "train"
    assert "training failed (exit 1)" in outcome["error"]
    assert outcome["version"] is None and outcome["finished_at"]
    train_log = Path(outcome["train_log"])
    assert "no_such_model" in train_log.read_text()
    out, err = capsys.readouterr()
    # the child's output reached the console too, and the CLI said where the log and report are
    assert f"training the challenger: log in {train_log}" in out
    assert "[train] " in out and "no_such_model" in out
    assert "retrain failed: training failed (exit 1)" in err and str(report) in err
    # a failure is not a success: the schedule still sees no successful retrain
    assert not Path(cfg.state_path).exists()


def test_a_training_timeout_is_recorded_as_failed(
    tmp_path: Path, synthetic_processed_dir: Path
) -> None:
    cfg = _compose(tmp_path, synthetic_processed_dir, "trigger=force", "train.timeout_s=0.5")
    with pytest.raises(RuntimeError, match="did not finish in 0.5s"):
        retrain(cfg)
    outcome = json.loads(Path(cfg.report_path).read_text())
    assert outcome["status"] == "failed" and outcome["step"] == "train"
    assert "did not finish in 0.5s" in outcome["error"]


def test_recovery_deletes_only_undecided_retrain_versions(tmp_path: Path, standin_store) -> None:
    from model_standins import client_for, registry_config

    store = standin_store.copy_to(tmp_path / "mlruns")
    client = client_for(store)
    registry = registry_config(store)
    champion = _set_champion(client, standin_store.good.run_id)
    client.set_tag(standin_store.bad.run_id, RETRAIN_TAG, "killed-run")
    orphan = register_run_model(client, MODEL, standin_store.bad.run_id)
    assert recover_interrupted(client, registry) == [orphan]
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == [champion]
    # a decided version (and the champion itself) is never touched
    client.set_tag(standin_store.good.run_id, RETRAIN_TAG, "finished-run")
    client.set_model_version_tag(MODEL, champion, DECISION_TAG, "promoted")
    assert recover_interrupted(client, registry) == []


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def project(tmp_path: Path, standin_store, synthetic_processed_dir: Path):
    """A project dir whose registry holds the good and bad stand-in runs, nothing registered."""
    from model_standins import client_for

    standin_store.copy_to(tmp_path / "mlruns")
    return tmp_path, client_for(tmp_path / "mlruns")


def _cli(root: Path, processed: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(Path(CONFIG_DIR).parent)}
    args = [sys.executable, "-m", "mnist_mlops.retrain", *_overrides(root, processed, *extra)]
    if not wait:
        return subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def serving(root: Path):
    """``python -m mnist_mlops.serve`` on a free port against this project's registry."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "mnist_mlops.serve",
        f"paths.root_dir={root}",
        f"registry.tracking_uri=sqlite:///{root}/mlruns/mlflow.db",
        f"server.port={port}",
        "serving.poll_interval_s=1",
        "serving.torch_threads=1",
        f"serving.prediction_log_dir={root}/serve_predictions",
    ]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_served(url: str, version: str, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/model", timeout=5)
            if response.status_code == 200 and response.json()["version"] == version:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))


@pytest.mark.slow
def test_worse_challenger_is_not_promoted(
    project, standin_store, synthetic_processed_dir: Path
) -> None:
    root, client = project
    champion = _set_champion(client, standin_store.good.run_id)
    done = _cli(
        root,
        synthetic_processed_dir,
        "trigger=force",
        f"train.overrides={_quote_list(BAD_TRAINING)}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "retrain rejected" in done.stdout
    assert alias_version(client, MODEL, "production") == champion
    outcome = json.loads((root / "reports" / "retrain" / "last_retrain.json").read_text())
    assert outcome["status"] == "rejected"
    assert (
        outcome["decision"]["challenger_scores"]["gate"]
        < outcome["decision"]["champion_scores"]["gate"]
    )
    # the rejected challenger stays registered with its decision (an audit trail), not served
    tags = client.get_model_version(MODEL, outcome["version"]).tags
    assert tags[DECISION_TAG] == "rejected"


@pytest.mark.slow
def test_better_challenger_with_feedback_is_promoted_and_marker_retired(
    project, standin_store, synthetic_processed_dir: Path
) -> None:
    root, client = project
    champion = _set_champion(client, standin_store.bad.run_id)
    cfg = _compose(root, synthetic_processed_dir, f"train.overrides={_quote_list(GOOD_TRAINING)}")
    _log_predictions(Path(cfg.feedback.log_dir), n=200, n_labelled=180, seed=7)
    marker = root / "reports" / "drift" / "DRIFT_ALERT.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"status": "alert"}))
    with serving(root) as url:
        assert _wait_for_served(url, champion)
        outcome = retrain(cfg)  # trigger=drift, satisfied by the waiting marker
        assert outcome.status == "promoted", outcome.reason
        assert alias_version(client, MODEL, "production") == outcome.version != champion
        # the running server picks up the new champion by polling the alias, no restart
        assert _wait_for_served(url, outcome.version), "server kept serving the old champion"
    # gated on the gate split AND the held-out newest feedback
    assert set(outcome.decision["challenger_scores"]) == {"gate", "recent_feedback"}
    assert outcome.feedback["splits"]["train"]["rows"] == 126
    # the challenger really trained on the feedback: its run's extra_train_dirs name the snapshot
    params = client.get_run(outcome.run_id).data.params
    snapshot_dir = Path(outcome.feedback["dir"])
    assert snapshot_dir.parent == root / "data" / "feedback" / "snapshots"
    assert str(snapshot_dir / "train") in params["data.extra_train_dirs"]
    run = client.get_run(outcome.run_id)
    assert (
        run.data.tags["feedback_train_hash"] == outcome.feedback["splits"]["train"]["content_hash"]
    )
    assert run.data.tags["feedback.snapshot"] == outcome.feedback["snapshot_id"]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {"feedback-train"}
    assert not marker.exists() and (Path(outcome.work_dir) / "handled_drift_alert.json").exists()
    # and the next drift-triggered run has nothing to do
    assert (
        retrain(_compose(root, synthetic_processed_dir, "drift.check_now=false")).status
        == "skipped"
    )


def _start_paused(root: Path, processed: Path, step: str, pause_s: int = 300) -> subprocess.Popen:
    """A real retrain (CLI) that sleeps ``pause_s`` before ``step``; returns once it is there."""
    proc = _cli(
        root,
        processed,
        "trigger=force",
        f"train.overrides={_quote_list(GOOD_TRAINING)}",
        f"drill.pause_before={step}",
        f"drill.pause_s={pause_s}",
        wait=False,
    )
    deadline = time.time() + 400
    while time.time() < deadline:
        statuses = (root / "outputs" / "retrain").glob("*/status.json")
        if any(json.loads(p.read_text())["step"] == step for p in statuses):
            return proc
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"retrain never reached {step}")


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_sigterm_before_the_gate_changes_nothing_and_a_second_run_is_refused(
    project, standin_store, synthetic_processed_dir: Path
) -> None:
    root, client = project
    champion = _set_champion(client, standin_store.bad.run_id)
    before = _versions(client)
    first = _start_paused(root, synthetic_processed_dir, "gate")
    try:
        # paused right before the gate: the challenger is registered but undecided
        assert len(_versions(client)) == len(before) + 1
        report = root / "reports" / "retrain" / "last_retrain.json"
        assert json.loads(report.read_text())["status"] == "running"
        second = _cli(root, synthetic_processed_dir, "trigger=force")
        assert second.returncode == 75, second.stderr[-2000:]
        assert "another retrain is already running" in second.stderr
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert alias_version(client, MODEL, "production") == champion
    assert _versions(client) == before  # the half-way challenger was removed
    outcome = json.loads(report.read_text())
    assert outcome["status"] == "failed" and outcome["step"] == "gate"
    assert "interrupted" in outcome["error"]


@pytest.mark.slow
def test_sigkill_mid_training_leaves_no_orphan_and_changes_nothing(
    project, standin_store, synthetic_processed_dir: Path
) -> None:
    root, client = project
    champion = _set_champion(client, standin_store.bad.run_id)
    before = _versions(client)
    retrain_proc = _start_paused(root, synthetic_processed_dir, "train", pause_s=0)
    work_dir = next((root / "outputs" / "retrain").glob("2*")).name
    deadline = time.time() + 60
    while len(_processes_mentioning(work_dir)) < 1 and time.time() < deadline:
        time.sleep(0.2)  # the training child names the work dir in its arguments
    children = _processes_mentioning(work_dir)
    assert children, "training child never started"
    retrain_proc.kill()  # SIGKILL: no cleanup code runs in the retrain itself
    retrain_proc.wait(timeout=30)
    # well before the training could finish by itself (it has only just started)
    deadline = time.time() + 5
    while _processes_mentioning(work_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(work_dir) == [], "training child outlived the killed retrain"
    assert alias_version(client, MODEL, "production") == champion
    assert _versions(client) == before
    # the kernel released the lock: the next retrain runs (and has nothing to do)
    outcome = retrain(_compose(root, synthetic_processed_dir, "drift.check_now=false"))
    assert outcome.status == "skipped"


@pytest.mark.slow
def test_sigkill_before_the_gate_is_cleaned_up_by_the_next_retrain(
    project, standin_store, synthetic_processed_dir: Path
) -> None:
    root, client = project
    champion = _set_champion(client, standin_store.bad.run_id)
    before = _versions(client)
    killed = _start_paused(root, synthetic_processed_dir, "gate")
    killed.kill()
    killed.wait(timeout=30)
    assert alias_version(client, MODEL, "production") == champion  # never served
    assert len(_versions(client)) == len(before) + 1  # undecided, until the next retrain
    retrain(_compose(root, synthetic_processed_dir, "drift.check_now=false"))
    assert _versions(client) == before
    assert alias_version(client, MODEL, "production") == champion


def test_watch_mode_runs_cycles_and_survives_a_refused_one(
    tmp_path: Path, synthetic_processed_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_mlops.retrain import EXIT_LOCKED, run_once, watch

    cfg = _compose(
        tmp_path,
        synthetic_processed_dir,
        "drift.check_now=false",
        "watch.enabled=true",
        "watch.interval_s=0",
        "watch.max_cycles=2",
    )
    assert watch(cfg) == 0
    assert capsys.readouterr().out.count("retrain skipped: no drift alert marker") == 2
    with exclusive_lock(cfg.lock_path, "retrain"):
        assert run_once(cfg) == EXIT_LOCKED
        assert watch(cfg) == 0  # a refused cycle is reported, the watcher carries on
    assert capsys.readouterr().err.count("retrain refused: another retrain") == 3


def test_drift_trigger_runs_a_drift_check_and_acts_on_its_exit_code(
    tmp_path: Path, synthetic_processed_dir: Path, baseline_payload
) -> None:
    import shutil

    import pyarrow.parquet as pq

    from mnist_mlops.data.splits import arrays_to_table

    processed = tmp_path / "processed"
    shutil.copytree(synthetic_processed_dir, processed)
    (processed / "baseline.json").write_text(json.dumps(baseline_payload))
    test = load_split(processed / "test")
    (processed / "inverted").mkdir()
    table = arrays_to_table(255 - test.images, test.labels, list(test.image_ids))
    pq.write_table(table, processed / "inverted" / "part-00000.parquet")
    checks = '["model.enabled=false","mlflow.enabled=false","source=parquet","source.path='
    clean = _compose(tmp_path, processed, f'drift.overrides={checks}{processed}/test"]')
    go, why = should_retrain(clean, tmp_path)
    assert not go and why in ("drift check: ok", "drift check: warn"), why
    shifted = _compose(tmp_path, processed, f'drift.overrides={checks}{processed}/inverted"]')
    assert should_retrain(shifted, tmp_path) == (True, "drift check alerted")
