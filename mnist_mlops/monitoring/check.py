"""One drift check: window + references -> findings -> corrected statuses -> report, run, marker.

:func:`evaluate_window` is the pure part (used by the CLI, the retrain trigger and the power
benchmark alike, so what is benchmarked is what runs); :func:`run_drift_check` adds the I/O.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_mlops.monitoring.detectors import Detector, DriftContext, Finding, Status
from mnist_mlops.monitoring.reference import Baseline, ModelReference, build_model_reference
from mnist_mlops.monitoring.report import (
    NOT_ENOUGH_DATA,
    DriftReport,
    write_html,
    write_json,
)
from mnist_mlops.monitoring.sources import Window
from mnist_mlops.monitoring.stats import adjust_p_values
from mnist_mlops.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)


def classify(findings: list[Finding], thresholds: Mapping[str, Any]) -> None:
    """Correct every p-value of the run as one family, then give each test its status.

    A test alerts when its adjusted p-value is below ``alpha_alert`` and its effect
    (statistic) is at least its ``min_effect``; warns below ``alpha_warn``.
    """
    tests = [f for f in findings if f.kind == "p_value" and f.p_value is not None]
    adjusted = adjust_p_values(np.array([f.p_value for f in tests]), str(thresholds["correction"]))
    for finding, p_adj in zip(tests, adjusted, strict=True):
        finding.p_adjusted = float(p_adj)
        big_enough = (finding.statistic or 0.0) >= finding.min_effect
        if p_adj < float(thresholds["alpha_alert"]) and big_enough:
            finding.status = Status.ALERT
        elif p_adj < float(thresholds["alpha_warn"]) and big_enough:
            finding.status = Status.WARN
        else:
            finding.status = Status.OK
        if not big_enough and p_adj < float(thresholds["alpha_warn"]):
            finding.reason = (
                f"significant but effect {finding.statistic:.3g} < min_effect {finding.min_effect}"
            )


def evaluate_window(
    window: Window,
    baseline: Baseline,
    detectors: Mapping[str, Detector] | list[Detector],
    thresholds: Mapping[str, Any],
    min_window_size: int,
    model_reference: ModelReference | None = None,
    probe: Any = None,
    seed: int = 0,
) -> DriftReport:
    """Run every detector on ``window`` and summarise; tiny windows are "not enough data"."""
    started = time.perf_counter()
    n_labelled = int((window.labels >= 0).sum())
    window_info = {
        "description": window.description,
        "n_images": len(window),
        "n_labelled": n_labelled,
    }
    if window.model_versions:
        window_info["served_model_versions"] = list(window.model_versions)
    report = DriftReport(
        status=Status.OK.value,
        window=window_info,
        thresholds=dict(thresholds),
        baseline_source=baseline.source,
        model=None
        if model_reference is None
        else {"uri": model_reference.model_uri, "version": model_reference.model_version},
    )
    if len(window) < min_window_size:
        report.status = NOT_ENOUGH_DATA
        report.message = (
            f"not enough data: the window has {len(window)} images, fewer than "
            f"min_window_size={min_window_size}; no drift decision was made"
        )
        return report
    ctx = DriftContext(
        window=window, baseline=baseline, model_reference=model_reference, probe=probe, seed=seed
    )
    items = detectors.values() if isinstance(detectors, Mapping) else detectors
    for detector in items:
        t0 = time.perf_counter()
        report.findings.extend(detector.evaluate(ctx))
        report.timings_s[detector.name] = round(time.perf_counter() - t0, 4)
    classify(report.findings, thresholds)
    worst = max((f.status for f in report.findings), key=lambda s: s.rank, default=Status.OK)
    report.status = Status.OK.value if worst is Status.SKIPPED else worst.value
    alerts = [f.name for f in report.findings if f.status is Status.ALERT]
    warns = [f.name for f in report.findings if f.status is Status.WARN]
    parts = [f"alert on {', '.join(alerts)}"] if alerts else []
    parts += [f"warn on {', '.join(warns)}"] if warns else []
    report.message = f"{report.status}: " + ("; ".join(parts) or "no test flagged drift")
    report.timings_s["total"] = round(time.perf_counter() - started, 4)
    return report


def build_detectors(cfg: DictConfig) -> dict[str, Detector]:
    """Instantiate ``cfg.detectors``; a detector set to null is switched off."""
    return {name: instantiate(spec) for name, spec in cfg.detectors.items() if spec is not None}


def load_model_reference(cfg: DictConfig, client: Any) -> tuple[Any, ModelReference | None]:
    """The production model and its val-split reference, or (None, None) when unavailable.

    A missing champion only skips the model-based detectors (a fresh deployment still gets
    input drift checks) unless ``model.required`` is set.
    """
    if not cfg.model.enabled:
        return None, None
    from mlflow.exceptions import MlflowException

    from mnist_mlops.data.splits import load_split
    from mnist_mlops.monitoring.model_probe import ModelContractError, load_registered_model

    try:
        probe = load_registered_model(str(cfg.model.uri), client)
    except (MlflowException, ModelContractError) as exc:
        if cfg.model.required:
            raise
        log.warning("model-based detectors skipped: cannot load %s (%s)", cfg.model.uri, exc)
        return None, None
    reference = load_split(cfg.model.reference_split_dir)
    return probe, build_model_reference(
        probe, reference.images, cfg.model.cache_dir, seed=int(cfg.seed)
    )


def _log_to_mlflow(cfg: DictConfig, report: DriftReport, artifacts: list[Path]) -> str:
    import mlflow

    from mnist_mlops.tracking.setup import ensure_experiment

    experiment_id = ensure_experiment(cfg.registry, str(cfg.mlflow.experiment_name))
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-{report.status}") as run:
        mlflow.set_tags(
            {"drift.status": report.status, "drift.source": report.window["description"][:250]}
        )
        mlflow.log_params(
            {
                "window_size": report.window["n_images"],
                "correction": report.thresholds.get("correction"),
                "model_version": (report.model or {}).get("version", "none"),
            }
        )
        mlflow.log_metrics(report.metrics())
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def run_drift_check(cfg: DictConfig) -> DriftReport:
    """Load, evaluate, write JSON + HTML, log an MLflow run, and raise the alert marker."""
    from mnist_mlops.tracking.setup import configure_mlflow

    client = configure_mlflow(cfg.registry)
    baseline = Baseline.load(cfg.baseline_path)
    window = instantiate(cfg.source).load()
    probe, model_reference = (
        load_model_reference(cfg, client) if len(window) >= cfg.min_window_size else (None, None)
    )
    thresholds = OmegaConf.to_container(cfg.thresholds, resolve=True)
    report = evaluate_window(
        window,
        baseline,
        build_detectors(cfg),
        thresholds,
        int(cfg.min_window_size),
        model_reference=model_reference,
        probe=probe,
        seed=int(cfg.seed),
    )
    out_dir = Path(cfg.report.dir)
    artifacts = [
        write_json(report, out_dir / "drift_report.json"),
        write_html(report, out_dir / "drift_report.html"),
    ]
    if cfg.mlflow.enabled:
        report.window["mlflow_run_id"] = _log_to_mlflow(cfg, report, artifacts)
        write_json(report, out_dir / "drift_report.json")
    if report.status == Status.ALERT.value:
        raise_alert_marker(Path(cfg.report.alert_marker), report, artifacts[0])
    log.info("drift check: %s (%s); report in %s", report.status, report.message, out_dir)
    return report


def raise_alert_marker(marker: Path, report: DriftReport, report_path: Path) -> None:
    """Leave a marker for schedulers/retraining; it stays until a retrain consumes it."""
    payload = {
        "status": report.status,
        "created_at": report.created_at,
        "message": report.message,
        "report": str(report_path),
        "window": report.window,
    }
    atomic_write_text(marker, json.dumps(payload, indent=2))
