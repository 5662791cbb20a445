"""The drift report: one result object, written as JSON (for machines) and HTML (for people).

The HTML is a single self-contained file: plots are matplotlib PNGs embedded as base64, so
it can be attached to an alert or opened from an MLflow run without a server.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.exit_codes import ExitCode
from mnist_mlops.monitoring.detectors import Finding, Status
from mnist_mlops.utils.atomic import atomic_write_text


class DriftExit(IntEnum):
    """Exit codes of ``python -m mnist_mlops.drift``: rows of the one table (``exit_codes``)."""

    OK = ExitCode.OK
    WARN = ExitCode.DRIFT_WARN
    ALERT = ExitCode.DRIFT_ALERT
    NOT_ENOUGH_DATA = ExitCode.NOT_ENOUGH_DATA


NOT_ENOUGH_DATA = "not_enough_data"


@dataclass
class DriftReport:
    """Everything one drift check found, plus what it compared."""

    status: str  # ok | warn | alert | not_enough_data
    window: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    baseline_source: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    message: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def exit_code(self) -> DriftExit:
        return {
            Status.OK.value: DriftExit.OK,
            Status.WARN.value: DriftExit.WARN,
            Status.ALERT.value: DriftExit.ALERT,
            NOT_ENOUGH_DATA: DriftExit.NOT_ENOUGH_DATA,
        }[self.status]

    def detector_status(self, detector: str) -> Status:
        """Worst status among one detector's findings (``skipped`` if it had none)."""
        statuses = [f.status for f in self.findings if f.detector == detector]
        return max(statuses, key=lambda s: s.rank, default=Status.SKIPPED)

    def metrics(self) -> dict[str, float]:
        """Flat ``drift/...`` metrics for MLflow; skipped findings are left out."""
        out: dict[str, float] = {"drift/window_size": float(self.window.get("n_images", 0))}
        for f in self.findings:
            if f.status is Status.SKIPPED or f.statistic is None:
                continue
            out[f"drift/{f.name}"] = float(f.statistic)
            if f.p_adjusted is not None:
                out[f"drift/{f.name}_p_adj"] = float(f.p_adjusted)
            for key, value in f.extra.items():
                out[f"drift/{f.name}_{key}"] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": int(self.exit_code),
            "message": self.message,
            "created_at": self.created_at,
            "window": self.window,
            "baseline_source": self.baseline_source,
            "model": self.model,
            "thresholds": self.thresholds,
            "timings_s": self.timings_s,
            "findings": [f.to_dict() for f in self.findings],
        }


def write_json(report: DriftReport, path: Path) -> Path:
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, default=float))
    return path


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot_distribution(plot: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.8))
    baseline = np.asarray(plot["baseline"])
    current = np.asarray(plot["current"])
    if plot["type"] == "bars":
        x = np.arange(len(baseline))
        ax.bar(x - 0.2, baseline, width=0.4, label="baseline")
        ax.bar(x + 0.2, current, width=0.4, label="current")
        ax.set_xticks(x, plot["labels"], rotation=45 if len(x) > 10 else 0, fontsize=7)
    else:
        edges = np.asarray(plot["edges"])
        ax.stairs(baseline, edges, label="baseline", fill=True, alpha=0.4)
        ax.stairs(current, edges, label="current", linewidth=1.5)
    if plot.get("log"):
        ax.set_yscale("log")
    ax.set_title(plot["title"], fontsize=9)
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7)
    return _png(fig)


def _plot_psi(findings: list[Finding], thresholds: dict[str, Any]) -> str | None:
    import matplotlib.pyplot as plt

    psi = [f for f in findings if f.kind == "psi" and f.statistic is not None]
    if not psi:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(psi) + 1.2))
    colors = {Status.OK: "tab:green", Status.WARN: "tab:orange", Status.ALERT: "tab:red"}
    ax.barh(
        [f.name for f in psi],
        [f.statistic for f in psi],
        color=[colors.get(f.status, "grey") for f in psi],
    )
    for key, style in (("psi_warn", "--"), ("psi_alert", "-")):
        if key in thresholds:
            ax.axvline(
                float(thresholds[key]), color="black", linestyle=style, linewidth=1, label=key
            )
    ax.set_xlabel("PSI")
    ax.legend(fontsize=7)
    ax.invert_yaxis()
    return _png(fig)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


_CSS = """
body { font-family: sans-serif; margin: 2em; } table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; }
tr.alert { background: #fdd; } tr.warn { background: #ffe9c4; } tr.skipped { color: #888; }
figure { display: inline-block; margin: 0.5em; } .status { font-size: 1.4em; font-weight: bold; }
"""
_HEADER = ("test", "kind", "statistic", "p", "p (adjusted)", "status", "note")


def _img(alt: str, png: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png}'/>"


def _row(f: Finding) -> str:
    cells = (f.name, f.kind, _fmt(f.statistic), _fmt(f.p_value), _fmt(f.p_adjusted))
    cells += (f.status.value, f.reason)
    tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
    return f"<tr class='{f.status.value}'>{tds}</tr>"


def write_html(report: DriftReport, path: Path) -> Path:
    """A self-contained HTML page: summary, findings table, PSI chart, distribution plots."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    esc = html.escape
    header = "".join(f"<th>{h}</th>" for h in _HEADER)
    rows = "".join(_row(f) for f in report.findings)
    psi_png = _plot_psi(report.findings, report.thresholds)
    psi_section = f"<h2>PSI per test</h2>{_img('psi', psi_png)}" if psi_png else ""
    plots = "".join(
        f"<figure>{_img(f.name, _plot_distribution(f.plot))}"
        f"<figcaption>{esc(f.name)}: {f.status.value}</figcaption></figure>"
        for f in report.findings
        if f.plot is not None
    )
    window = report.window
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {esc(report.status)}</title>
<style>{_CSS}</style></head><body>
<h1>MNIST drift report</h1>
<p class="status" id="status">Status: {esc(report.status.upper())}</p>
<p>{esc(report.message)}</p>
<p>Window: {esc(str(window.get("description", "")))}, {window.get("n_images", 0)} images
({window.get("n_labelled", 0)} labelled). Baseline: {esc(json.dumps(report.baseline_source))}.
Model: {esc(json.dumps(report.model))}. Created {esc(report.created_at)}.</p>
<p>Thresholds: {esc(json.dumps(report.thresholds))}</p>
<h2>Findings</h2>
<table><tr>{header}</tr>{rows}</table>
{psi_section}
<h2>Baseline vs current</h2>
{plots}
</body></html>
"""
    atomic_write_text(path, page)
    return path
