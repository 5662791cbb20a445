"""Safe automated retraining: trigger -> feedback snapshot -> challenger -> gate -> (promote).

Safety properties, and how they hold:
- Only one retrain at a time: an exclusive ``flock`` (:mod:`mnist_mlops.monitoring.lock`).
- The ``production`` alias moves in exactly one registry call, inside ``promote_if_better``,
  after every evaluation succeeded. Serving follows the alias, so until then it serves the
  old champion, whatever happens to this process.
- No half-registered version: a version registered by an interrupted retrain (SIGTERM/SIGINT
  -> cleanup here; SIGKILL -> cleanup by the next retrain, :func:`recover_interrupted`) is
  deleted unless it became the champion. Versions are recognised by the ``retrain_id`` tag
  on their training run.
- Feedback snapshots are content-addressed folders made by one rename, never rewritten
  (:mod:`mnist_mlops.monitoring.feedback`), and named on the challenger's MLflow run.
- Every outcome reaches ``report_path``: ``running`` as soon as the lock is held (the previous
  run's outcome never stays there), then ``skipped``/``promoted``/``rejected``, or ``failed``
  with the error (exceptions, a failing or timed-out child, SIGTERM).
- Training runs in a child process that dies with its parent (``PR_SET_PDEATHSIG``), so a
  killed retrain does not leave an orphan training job behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mnist_mlops.data.splits import load_split
from mnist_mlops.monitoring.feedback import (
    FeedbackSnapshot,
    collect_feedback,
    log_snapshot_inputs,
)
from mnist_mlops.monitoring.lock import exclusive_lock
from mnist_mlops.monitoring.report import DriftExit, atomic_write_text

log = logging.getLogger(__name__)

RETRAIN_TAG = "retrain_id"
DECISION_TAG = "promotion.decision"
TRIGGERS = ("force", "drift", "schedule", "drift_or_schedule")


@dataclass
class RetrainOutcome:
    """What one retrain did; also written as JSON to ``report_path``."""

    status: str  # running | skipped | promoted | rejected | failed
    reason: str
    retrain_id: str | None = None
    trigger: str | None = None
    run_id: str | None = None
    version: str | None = None
    decision: dict[str, Any] | None = None
    feedback: dict[str, Any] | None = None
    work_dir: str | None = None
    # the step that was running when it failed, and the error (type: message)
    step: str | None = None
    error: str | None = None
    # the training child's console output
    train_log: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class StepRecorder:
    """Writes the current step to ``status.json`` (for operators and kill drills)."""

    def __init__(self, work_dir: Path, pause_before: str | None, pause_s: float) -> None:
        self.work_dir = work_dir
        self.pause_before = pause_before
        self.pause_s = pause_s
        self.step: str | None = None

    def enter(self, step: str, **info: Any) -> None:
        self.step = step
        payload = {"step": step, "at": datetime.now(UTC).isoformat(timespec="seconds"), **info}
        atomic_write_text(self.work_dir / "status.json", json.dumps(payload))
        log.info("retrain step: %s", step)
        if step == self.pause_before and self.pause_s > 0:
            log.warning("drill: pausing %.0fs before %s", self.pause_s, step)
            time.sleep(self.pause_s)


def shared_overrides(cfg: DictConfig) -> list[str]:
    """Overrides that make a child entrypoint see the same paths, data and registry."""
    keys = (
        "paths.root_dir",
        "paths.data_dir",
        "paths.processed_dir",
        "paths.log_dir",
        "paths.mlflow_dir",
        "paths.reports_dir",
        "data.processed_dir",
        "registry.tracking_uri",
        "registry.artifact_location",
        "registry.experiment_name",
        "registry.model_name",
        "registry.champion_alias",
        "registry.challenger_alias",
    )
    return [f"{key}={OmegaConf.select(cfg, key)}" for key in keys]


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


def _read_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def should_retrain(cfg: DictConfig, work_dir: Path) -> tuple[bool, str]:
    """Apply ``cfg.trigger``; returns (go, why)."""
    trigger = str(cfg.trigger)
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger={trigger!r} is not one of {TRIGGERS}")
    if trigger == "force":
        return True, "forced"
    reasons = []
    if trigger in ("schedule", "drift_or_schedule"):
        last = _read_state(Path(cfg.state_path)).get("last_success")
        due = timedelta(hours=float(cfg.schedule.every_h))
        if last is None or datetime.now(UTC) - datetime.fromisoformat(last) >= due:
            return True, f"schedule: last retrain {last or 'never'}, due every {due}"
        reasons.append(f"schedule: last retrain {last} is within {due}")
    if trigger in ("drift", "drift_or_schedule"):
        marker = Path(cfg.drift.alert_marker)
        if marker.is_file():
            return True, f"drift alert marker {marker}"
        if cfg.drift.check_now:
            args = ["mnist_mlops.drift", *shared_overrides(cfg), *cfg.drift.overrides]
            print(f"drift check: log in {work_dir / 'drift.log'}", flush=True)
            rc = run_child(args, float(cfg.drift.timeout_s), work_dir / "drift.log", "[drift] ")
            if rc == DriftExit.ALERT:
                return True, "drift check alerted"
            if rc not in (DriftExit.OK, DriftExit.WARN, DriftExit.NOT_ENOUGH_DATA):
                raise RuntimeError(f"drift check failed (exit {rc}); see {work_dir / 'drift.log'}")
            reasons.append(f"drift check: {DriftExit(rc).name.lower()}")
        else:
            reasons.append("no drift alert marker")
    return False, "; ".join(reasons)


def _retrain_versions(client: MlflowClient, model_name: str) -> list[Any]:
    """Registered versions whose training run was started by a retrain."""
    out = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        try:
            tags = client.get_run(mv.run_id).data.tags if mv.run_id else {}
        except Exception:  # noqa: BLE001 - a deleted run cannot be one of ours to clean up
            continue
        if RETRAIN_TAG in tags:
            out.append((mv, tags[RETRAIN_TAG]))
    return out


def _is_champion(client: MlflowClient, registry_cfg: DictConfig, version: str) -> bool:
    from mnist_mlops.tracking.registry import alias_version

    return (
        alias_version(client, str(registry_cfg.model_name), str(registry_cfg.champion_alias))
        == version
    )


def discard_version(client: MlflowClient, registry_cfg: DictConfig, version: str, why: str) -> bool:
    """Delete ``version`` unless it is the champion (never touch what is being served)."""
    if _is_champion(client, registry_cfg, version):
        return False
    client.delete_model_version(str(registry_cfg.model_name), version)
    log.warning("deleted %s v%s: %s", registry_cfg.model_name, version, why)
    return True


def recover_interrupted(client: MlflowClient, registry_cfg: DictConfig) -> list[str]:
    """Delete versions a killed retrain registered but never decided on (SIGKILL case)."""
    removed = []
    for mv, retrain_id in _retrain_versions(client, str(registry_cfg.model_name)):
        if DECISION_TAG not in (mv.tags or {}) and discard_version(
            client,
            registry_cfg,
            str(mv.version),
            f"left undecided by interrupted retrain {retrain_id}",
        ):
            removed.append(str(mv.version))
    return removed


def train_challenger(
    cfg: DictConfig, retrain_id: str, work_dir: Path, snapshot: FeedbackSnapshot | None
) -> str:
    """Train in a child process (``python -m mnist_mlops.train``); return its MLflow run id."""
    report_dir = work_dir / "train"
    extra_train_dir = snapshot.train_dir if snapshot else None
    feedback_tags = []
    if snapshot is not None and extra_train_dir is not None:
        # lineage: which feedback snapshot the challenger saw
        content_hash = snapshot.manifest["splits"]["train"]["content_hash"]
        feedback_tags.append(f"+logger.tags.feedback_train_hash={content_hash}")
    args = [
        "mnist_mlops.train",
        *shared_overrides(cfg),
        f"report_dir={report_dir}",
        f"hydra.run.dir={work_dir / 'train_hydra'}",
        f"+logger.tags.{RETRAIN_TAG}={retrain_id}",
        f"data.extra_train_dirs=[{extra_train_dir}]"
        if extra_train_dir
        else "data.extra_train_dirs=[]",
        # epoch lines without a bar: they go to a log file and to our console
        "callbacks=console",
        *feedback_tags,
        *cfg.train.overrides,
    ]
    log_path = work_dir / "train.log"
    print(f"training the challenger: log in {log_path}", flush=True)
    rc = run_child(args, float(cfg.train.timeout_s), log_path, "[train] ")
    if rc != 0:
        raise RuntimeError(f"training failed (exit {rc}); see {log_path}")
    return str(json.loads((report_dir / "run.json").read_text())["run_id"])


def retrain(cfg: DictConfig) -> RetrainOutcome:
    """One guarded retrain cycle (raises :class:`RetrainLocked` if another one runs).

    A refused retrain writes no report: the one holding the lock owns it (``running``).
    Any other failure is recorded as ``status=failed`` and re-raised.
    """
    with exclusive_lock(cfg.lock_path, "retrain"):
        retrain_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        work_dir = Path(cfg.work_dir) / retrain_id
        work_dir.mkdir(parents=True, exist_ok=True)
        outcome = RetrainOutcome(
            status="running",
            reason="started",
            retrain_id=retrain_id,
            trigger=str(cfg.trigger),
            work_dir=str(work_dir),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_report(cfg, outcome)
        steps = StepRecorder(work_dir, cfg.drill.pause_before, float(cfg.drill.pause_s))
        try:
            return _retrain_locked(cfg, outcome, work_dir, steps)
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
            outcome.status = "failed"
            outcome.step = steps.step
            outcome.error = _describe(exc)
            outcome.reason = f"failed at step {steps.step}: {outcome.error}"
            _finish(cfg, outcome, success=False)
            raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"interrupted (exit {exc.code}, e.g. SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    return "".join(traceback.format_exception_only(exc)).strip()


def _retrain_locked(
    cfg: DictConfig, outcome: RetrainOutcome, work_dir: Path, steps: StepRecorder
) -> RetrainOutcome:
    from mnist_mlops.tracking.registry import promote_if_better, register_run_model, write_report
    from mnist_mlops.tracking.setup import configure_mlflow

    retrain_id = str(outcome.retrain_id)
    steps.enter("recover")
    client = configure_mlflow(cfg.registry)
    if removed := recover_interrupted(client, cfg.registry):
        log.warning("removed undecided versions %s left by an interrupted retrain", removed)

    steps.enter("trigger")
    go, why = should_retrain(cfg, work_dir)
    outcome.reason = why
    if not go:
        log.info("no retrain needed: %s", why)
        outcome.status = "skipped"
        _finish(cfg, outcome, success=False)
        return outcome

    steps.enter("feedback")
    snapshot = None
    if cfg.feedback.enabled:
        snapshot = collect_feedback(
            cfg.feedback.log_dir,
            cfg.feedback.dir,
            float(cfg.feedback.eval_fraction),
            int(cfg.feedback.min_eval),
            allow_untrusted=bool(cfg.feedback.get("allow_untrusted", False)),
            max_untrusted_fraction=float(cfg.feedback.get("max_untrusted_fraction", 0.0)),
        )
        if snapshot is not None:
            outcome.feedback = {**snapshot.manifest, "dir": str(snapshot.root)}

    steps.enter("train")
    outcome.train_log = str(work_dir / "train.log")
    outcome.run_id = train_challenger(cfg, retrain_id, work_dir, snapshot)
    if snapshot is not None:
        log_snapshot_inputs(client, outcome.run_id, snapshot)

    steps.enter("register", run_id=outcome.run_id)
    version = None
    try:
        version = register_run_model(client, str(cfg.registry.model_name), outcome.run_id)
        outcome.version = version
        # the first set is the primary one (registry.GATE_RULE): the gate split
        eval_sets = {"gate": load_split(cfg.gate.eval_split_dir)}
        recent = snapshot.eval_arrays() if snapshot else None
        if recent is not None:
            eval_sets["recent_feedback"] = recent
        steps.enter("gate", version=version, eval_sets=sorted(eval_sets))
        decision = promote_if_better(client, cfg.registry, version, eval_sets)
    except BaseException:
        if version is not None:
            discard_version(
                client, cfg.registry, version, f"retrain {retrain_id} interrupted before a decision"
            )
        raise
    write_report(decision, work_dir / "promotion.json")
    outcome.decision = decision.to_dict()
    outcome.status = "promoted" if decision.promoted else "rejected"
    outcome.reason = f"{why}; {decision.reason}"
    steps.enter("finish", status=outcome.status)
    _finish(cfg, outcome, success=True)
    return outcome


def _write_report(cfg: DictConfig, outcome: RetrainOutcome) -> None:
    atomic_write_text(Path(cfg.report_path), json.dumps(asdict(outcome), indent=2, default=str))


def _finish(cfg: DictConfig, outcome: RetrainOutcome, success: bool) -> None:
    """Write the outcome; on a decision, record success and retire the drift marker."""
    outcome.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    _write_report(cfg, outcome)
    if not success:
        return
    state_path = Path(cfg.state_path)
    state = _read_state(state_path)
    state.update(
        {
            "last_success": outcome.finished_at,
            "last_status": outcome.status,
            "last_version": outcome.version,
        }
    )
    atomic_write_text(state_path, json.dumps(state, indent=2))
    marker = Path(cfg.drift.alert_marker)
    if marker.is_file() and outcome.work_dir:
        marker.rename(Path(outcome.work_dir) / "handled_drift_alert.json")


def install_termination_handler() -> None:
    """Turn SIGTERM into SystemExit so cleanup (child kill, version discard) runs."""

    def _raise(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
