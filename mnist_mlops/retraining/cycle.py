"""One guarded retrain cycle: lock -> recover -> trigger -> feedback -> train -> register -> gate.

The safety properties it keeps are listed in :mod:`mnist_mlops.retraining`.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_mlops.data.splits import load_split
from mnist_mlops.monitoring.report import DriftExit
from mnist_mlops.retraining.children import child_args, run_child
from mnist_mlops.retraining.feedback import (
    FeedbackSnapshot,
    collect_feedback,
    log_snapshot_inputs,
)
from mnist_mlops.retraining.lock import exclusive_lock
from mnist_mlops.retraining.settings import RegistrySettings, RetrainSettings
from mnist_mlops.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RETRAIN_TAG = "retrain_id"
DECISION_TAG = "promotion.decision"


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


def _read_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def should_retrain(settings: RetrainSettings, work_dir: Path) -> tuple[bool, str]:
    """Apply ``settings.trigger``; returns (go, why)."""
    trigger = settings.trigger  # one of settings.TRIGGERS, checked when the settings were built
    if trigger == "force":
        return True, "forced"
    reasons = []
    if trigger in ("schedule", "drift_or_schedule"):
        last = _read_state(Path(settings.state_path)).get("last_success")
        due = timedelta(hours=settings.schedule.every_h)
        if last is None or datetime.now(UTC) - datetime.fromisoformat(last) >= due:
            return True, f"schedule: last retrain {last or 'never'}, due every {due}"
        reasons.append(f"schedule: last retrain {last} is within {due}")
    if trigger in ("drift", "drift_or_schedule"):
        drift = settings.drift
        marker = Path(drift.alert_marker)
        if marker.is_file():
            return True, f"drift alert marker {marker}"
        if drift.check_now:
            args = child_args("mnist_mlops.drift", settings.children, *drift.overrides)
            print(f"drift check: log in {work_dir / 'drift.log'}", flush=True)
            rc = run_child(args, drift.timeout_s, work_dir / "drift.log", "[drift] ")
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


def _is_champion(client: MlflowClient, registry: RegistrySettings, version: str) -> bool:
    from mnist_mlops.tracking.registry import alias_version

    return alias_version(client, registry.model_name, registry.champion_alias) == version


def discard_version(
    client: MlflowClient, registry: RegistrySettings, version: str, why: str
) -> bool:
    """Delete ``version`` unless it is the champion (never touch what is being served)."""
    if _is_champion(client, registry, version):
        return False
    client.delete_model_version(registry.model_name, version)
    log.warning("deleted %s v%s: %s", registry.model_name, version, why)
    return True


def recover_interrupted(client: MlflowClient, registry: RegistrySettings) -> list[str]:
    """Delete versions a killed retrain registered but never decided on (SIGKILL case)."""
    removed = []
    for mv, retrain_id in _retrain_versions(client, str(registry.model_name)):
        if DECISION_TAG not in (mv.tags or {}) and discard_version(
            client,
            registry,
            str(mv.version),
            f"left undecided by interrupted retrain {retrain_id}",
        ):
            removed.append(str(mv.version))
    return removed


def train_challenger(
    settings: RetrainSettings, retrain_id: str, work_dir: Path, snapshot: FeedbackSnapshot | None
) -> str:
    """Train in a child process (``python -m mnist_mlops.train``); return its MLflow run id."""
    report_dir = work_dir / "train"
    extra_train_dir = snapshot.train_dir if snapshot else None
    feedback_tags = []
    if snapshot is not None and extra_train_dir is not None:
        # lineage: which feedback snapshot the challenger saw
        content_hash = snapshot.manifest["splits"]["train"]["content_hash"]
        feedback_tags.append(f"+logger.tags.feedback_train_hash={content_hash}")
    args = child_args(
        "mnist_mlops.train",
        settings.children,
        f"report_dir={report_dir}",
        f"hydra.run.dir={work_dir / 'train_hydra'}",
        f"+logger.tags.{RETRAIN_TAG}={retrain_id}",
        f"data.extra_train_dirs=[{extra_train_dir}]"
        if extra_train_dir
        else "data.extra_train_dirs=[]",
        # epoch lines without a bar: they go to a log file and to our console
        "callbacks=console",
        *feedback_tags,
        *settings.train.overrides,
    )
    log_path = work_dir / "train.log"
    print(f"training the challenger: log in {log_path}", flush=True)
    rc = run_child(args, settings.train.timeout_s, log_path, "[train] ")
    if rc != 0:
        raise RuntimeError(f"training failed (exit {rc}); see {log_path}")
    return str(json.loads((report_dir / "run.json").read_text())["run_id"])


def retrain(settings: RetrainSettings) -> RetrainOutcome:
    """One guarded retrain cycle (raises :class:`RetrainLocked` if another one runs).

    A refused retrain writes no report: the one holding the lock owns it (``running``).
    Any other failure is recorded as ``status=failed`` and re-raised.
    """
    with exclusive_lock(settings.lock_path, "retrain"):
        retrain_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        work_dir = Path(settings.work_dir) / retrain_id
        work_dir.mkdir(parents=True, exist_ok=True)
        outcome = RetrainOutcome(
            status="running",
            reason="started",
            retrain_id=retrain_id,
            trigger=settings.trigger,
            work_dir=str(work_dir),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_report(settings, outcome)
        steps = StepRecorder(work_dir, settings.drill.pause_before, settings.drill.pause_s)
        try:
            return _retrain_locked(settings, outcome, work_dir, steps)
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
            outcome.status = "failed"
            outcome.step = steps.step
            outcome.error = _describe(exc)
            outcome.reason = f"failed at step {steps.step}: {outcome.error}"
            _finish(settings, outcome, success=False)
            raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"interrupted (exit {exc.code}, e.g. SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    return "".join(traceback.format_exception_only(exc)).strip()


def _retrain_locked(
    settings: RetrainSettings, outcome: RetrainOutcome, work_dir: Path, steps: StepRecorder
) -> RetrainOutcome:
    from mnist_mlops.tracking.registry import promote_if_better, register_run_model, write_report
    from mnist_mlops.tracking.setup import configure_mlflow

    retrain_id = str(outcome.retrain_id)
    steps.enter("recover")
    registry = settings.registry
    client = configure_mlflow(registry.as_config())
    if removed := recover_interrupted(client, registry):
        log.warning("removed undecided versions %s left by an interrupted retrain", removed)

    steps.enter("trigger")
    go, why = should_retrain(settings, work_dir)
    outcome.reason = why
    if not go:
        log.info("no retrain needed: %s", why)
        outcome.status = "skipped"
        _finish(settings, outcome, success=False)
        return outcome

    steps.enter("feedback")
    snapshot = None
    feedback = settings.feedback
    if feedback.enabled:
        snapshot = collect_feedback(
            feedback.log_dir,
            feedback.dir,
            feedback.eval_fraction,
            feedback.min_eval,
            allow_untrusted=feedback.allow_untrusted,
            max_untrusted_fraction=feedback.max_untrusted_fraction,
        )
        if snapshot is not None:
            outcome.feedback = {**snapshot.manifest, "dir": str(snapshot.root)}

    steps.enter("train")
    outcome.train_log = str(work_dir / "train.log")
    outcome.run_id = train_challenger(settings, retrain_id, work_dir, snapshot)
    if snapshot is not None:
        log_snapshot_inputs(client, outcome.run_id, snapshot)

    steps.enter("register", run_id=outcome.run_id)
    version = None
    try:
        version = register_run_model(client, registry.model_name, outcome.run_id)
        outcome.version = version
        # the first set is the primary one (registry.GATE_RULE): the gate split
        eval_sets = {"gate": load_split(settings.gate.eval_split_dir)}
        recent = snapshot.eval_arrays() if snapshot else None
        if recent is not None:
            eval_sets["recent_feedback"] = recent
        steps.enter("gate", version=version, eval_sets=sorted(eval_sets))
        decision = promote_if_better(client, registry.as_config(), version, eval_sets)
    except BaseException:
        if version is not None:
            discard_version(
                client, registry, version, f"retrain {retrain_id} interrupted before a decision"
            )
        raise
    write_report(decision, work_dir / "promotion.json")
    outcome.decision = decision.to_dict()
    outcome.status = "promoted" if decision.promoted else "rejected"
    outcome.reason = f"{why}; {decision.reason}"
    steps.enter("finish", status=outcome.status)
    _finish(settings, outcome, success=True)
    return outcome


def _write_report(settings: RetrainSettings, outcome: RetrainOutcome) -> None:
    text = json.dumps(asdict(outcome), indent=2, default=str)
    atomic_write_text(Path(settings.report_path), text)


def _finish(settings: RetrainSettings, outcome: RetrainOutcome, success: bool) -> None:
    """Write the outcome; on a decision, record success and retire the drift marker."""
    outcome.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    _write_report(settings, outcome)
    if not success:
        return
    state_path = Path(settings.state_path)
    state = _read_state(state_path)
    state.update(
        {
            "last_success": outcome.finished_at,
            "last_status": outcome.status,
            "last_version": outcome.version,
        }
    )
    atomic_write_text(state_path, json.dumps(state, indent=2))
    marker = Path(settings.drift.alert_marker)
    if marker.is_file() and outcome.work_dir:
        marker.rename(Path(outcome.work_dir) / "handled_drift_alert.json")


def install_termination_handler() -> None:
    """Turn SIGTERM into SystemExit so cleanup (child kill, version discard) runs."""

    def _raise(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
