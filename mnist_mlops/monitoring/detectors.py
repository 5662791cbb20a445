"""Drift detectors. Each is configured in ``conf/drift.yaml`` (``_target_``) and turns a
:class:`DriftContext` into :class:`Finding` rows.

Two kinds of finding:
- ``psi``: a distance compared with the warn/alert PSI thresholds right away;
- ``p_value``: a two-sample test whose p-value is corrected together with every other test
  of the run (see :func:`mnist_mlops.monitoring.check.classify`) before it gets a status.

Detectors that need what the window lacks (labels, a model) return a ``skipped`` finding
with the reason, so the report always says what was and was not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.data.features import image_features, pixel_histogram
from mnist_mlops.monitoring import stats
from mnist_mlops.monitoring.model_probe import ModelProbe
from mnist_mlops.monitoring.reference import Baseline, ModelReference
from mnist_mlops.monitoring.sources import Window


class Status(StrEnum):
    """Ordered severities; a run's status is the worst of its findings."""

    SKIPPED = "skipped"
    OK = "ok"
    WARN = "warn"
    ALERT = "alert"

    @property
    def rank(self) -> int:
        return {"skipped": 0, "ok": 1, "warn": 2, "alert": 3}[self.value]


@dataclass
class Finding:
    """One tested quantity. ``plot`` holds the baseline/current distributions for the HTML."""

    detector: str
    name: str
    kind: str  # "psi" | "p_value"
    statistic: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    min_effect: float = 0.0
    status: Status = Status.OK
    reason: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    plot: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "plot"}
        out["status"] = self.status.value
        return out


def skipped(detector: str, reason: str) -> Finding:
    return Finding(
        detector=detector, name=detector, kind="none", status=Status.SKIPPED, reason=reason
    )


@dataclass
class DriftContext:
    """The window, the references and everything derived from them, each computed once."""

    window: Window
    baseline: Baseline
    model_reference: ModelReference | None = None
    probe: ModelProbe | None = None
    seed: int = 0

    @cached_property
    def features(self) -> dict[str, np.ndarray]:
        """Per-image features on the same numeric grid as the baseline's reference sample."""
        raw = image_features(self.window.images)
        return {name: self.baseline.comparable(values) for name, values in raw.items()}

    @cached_property
    def pixel_fractions(self) -> np.ndarray:
        return pixel_histogram(self.window.images)

    @cached_property
    def _model_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.probe is not None
        return self.probe.predict(self.window.images)

    @property
    def probabilities(self) -> np.ndarray:
        """The model's probabilities on the window: logged ones when the window has them
        (they came from the served model) and no probe is loaded, else recomputed."""
        if self.probe is None and self.window.probabilities is not None:
            return self.window.probabilities
        return self._model_outputs[0]

    @property
    def embeddings(self) -> np.ndarray:
        return self._model_outputs[1]


class Detector(Protocol):
    name: str

    def evaluate(self, ctx: DriftContext) -> list[Finding]: ...


@dataclass
class PSIThresholds:
    """Warn/alert PSI cut-offs, raised to the sampling-noise floor for small samples."""

    psi_warn: float
    psi_alert: float
    noise_alpha: float | None = None

    def status(
        self, value: float, n_bins: int, n_current: int, n_reference: int
    ) -> tuple[Status, str]:
        floor = stats.psi_noise_floor(n_bins, n_current, n_reference, self.noise_alpha)
        alert = max(self.psi_alert, floor)
        warn = min(max(self.psi_warn, floor), alert)
        note = (
            f"alert threshold raised to noise floor {floor:.3f}" if floor > self.psi_alert else ""
        )
        if value >= alert:
            return Status.ALERT, note
        return (Status.WARN if value >= warn else Status.OK), note


def _psi_finding(
    detector: str,
    name: str,
    value: float,
    limits: PSIThresholds,
    n_bins: int,
    n_cur: int,
    n_ref: int,
    **kwargs: Any,
) -> Finding:
    status, note = limits.status(value, n_bins, n_cur, n_ref)
    return Finding(detector, name, "psi", statistic=value, status=status, reason=note, **kwargs)


def _test_finding(
    detector: str, name: str, result: stats.TestResult, min_effect: float, **kwargs: Any
) -> Finding:
    """A ``p_value`` finding: its status is set later, after the run-wide correction."""
    return Finding(
        detector,
        name,
        "p_value",
        statistic=result.statistic,
        p_value=result.p_value,
        min_effect=min_effect,
        **kwargs,
    )


_DIGIT_LABELS = [str(k) for k in range(NUM_CLASSES)]


def _bar_plot(
    title: str, labels: list[str], baseline: np.ndarray, current: np.ndarray
) -> dict[str, Any]:
    return {
        "type": "bars",
        "title": title,
        "labels": labels,
        "baseline": np.asarray(baseline, float).tolist(),
        "current": np.asarray(current, float).tolist(),
    }


@dataclass
class LabelPSI:
    """Label-distribution PSI: only for windows with known labels (splits, IDX, feedback)."""

    thresholds: PSIThresholds
    min_labelled: int = 50
    name: str = "label_psi"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        labels = ctx.window.known_labels
        if len(labels) < self.min_labelled:
            return [
                skipped(
                    self.name, f"{len(labels)} labelled images < min_labelled={self.min_labelled}"
                )
            ]
        current = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
        value = stats.psi(ctx.baseline.label_fractions, current)
        n_ref = int(ctx.baseline.source.get("n_images", 0))
        return [
            _psi_finding(
                self.name,
                self.name,
                value,
                self.thresholds,
                NUM_CLASSES,
                len(labels),
                n_ref,
                extra={"n_labelled": float(len(labels))},
                plot=_bar_plot(
                    "label distribution", _DIGIT_LABELS, ctx.baseline.label_fractions, current
                ),
            )
        ]


@dataclass
class PixelHistogramPSI:
    """PSI of the pixel-intensity histogram (background share and ink-intensity bins)."""

    thresholds: PSIThresholds
    name: str = "pixel_psi"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        value = stats.psi(ctx.baseline.pixel_fractions, ctx.pixel_fractions)
        edges = ctx.baseline.pixel_bin_edges
        bin_labels = [
            "0 (bg)" if hi * 255 <= 1 else f"{lo:.1f}-{min(hi, 1.0):.1f}"
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
        # pixels within an image are correlated, so count images, not pixels, as the sample
        n_ref = int(ctx.baseline.source.get("n_images", 0))
        return [
            _psi_finding(
                self.name,
                self.name,
                value,
                self.thresholds,
                len(bin_labels),
                len(ctx.window),
                n_ref,
                plot={
                    **_bar_plot(
                        "pixel intensity histogram (log scale)",
                        bin_labels,
                        ctx.baseline.pixel_fractions,
                        ctx.pixel_fractions,
                    ),
                    "log": True,
                },
            )
        ]


def _feature_plot(name: str, reference: np.ndarray, current: np.ndarray) -> dict[str, Any]:
    lo = float(min(reference.min(), current.min()))
    hi = float(max(reference.max(), current.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    ref, _ = np.histogram(reference, edges)
    cur, _ = np.histogram(current, edges)
    return {
        "type": "hist",
        "title": name,
        "edges": edges.tolist(),
        "baseline": (ref / max(ref.sum(), 1)).tolist(),
        "current": (cur / max(cur.sum(), 1)).tolist(),
    }


def _feature_pairs(ctx: DriftContext, names: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(feature, baseline reference sample, window values) for each named feature."""
    missing = [n for n in names if n not in ctx.baseline.feature_samples]
    if missing:
        raise ValueError(f"baseline has no reference sample for feature(s) {missing}")
    return [(n, ctx.baseline.feature_samples[n], ctx.features[n]) for n in names]


@dataclass
class FeaturePSI:
    """PSI per image feature on reference-quantile bins (the "PSI per feature" view)."""

    features: list[str]
    thresholds: PSIThresholds
    n_bins: int = 10
    name: str = "feature_psi"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        out = []
        for feature, reference, current in _feature_pairs(ctx, list(self.features)):
            value, edges, *_ = stats.sample_psi(reference, current, self.n_bins)
            out.append(
                _psi_finding(
                    self.name,
                    f"{self.name}/{feature}",
                    value,
                    self.thresholds,
                    len(edges) - 1,
                    len(ctx.window),
                    len(reference),
                )
            )
        return out


@dataclass
class FeatureKS:
    """Two-sample KS per image feature against the baseline's reference sample.

    ``min_effect`` is a floor on the KS distance: with thousands of images KS finds
    differences too small to matter (e.g. MNIST's own train/test gap), so an alert needs
    both significance and a visible effect.
    """

    features: list[str]
    min_effect: float = 0.0
    name: str = "feature_ks"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        out = []
        for feature, reference, current in _feature_pairs(ctx, list(self.features)):
            result = stats.ks_test(reference, current)
            out.append(
                _test_finding(
                    self.name,
                    f"{self.name}/{feature}",
                    result,
                    self.min_effect,
                    extra={
                        "baseline_mean": float(reference.mean()),
                        "current_mean": float(current.mean()),
                    },
                    plot=_feature_plot(feature, reference, current),
                )
            )
        return out


def _needs_model(name: str, ctx: DriftContext) -> Finding | None:
    if ctx.model_reference is None:
        return skipped(
            name, "no production model available (model.enabled=false or none registered)"
        )
    return None


@dataclass
class PredictionPSI:
    """PSI of the predicted-class distribution vs the model's own predictions on val."""

    thresholds: PSIThresholds
    name: str = "prediction_psi"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        if (missing := _needs_model(self.name, ctx)) is not None:
            return [missing]
        assert ctx.model_reference is not None
        baseline = ctx.model_reference.predicted_fractions
        current = np.bincount(ctx.probabilities.argmax(axis=1), minlength=NUM_CLASSES) / len(
            ctx.window
        )
        value = stats.psi(baseline, current)
        n_ref = len(ctx.model_reference.probabilities)
        return [
            _psi_finding(
                self.name,
                self.name,
                value,
                self.thresholds,
                NUM_CLASSES,
                len(ctx.window),
                n_ref,
                plot=_bar_plot("predicted class distribution", _DIGIT_LABELS, baseline, current),
            )
        ]


@dataclass
class ConfidenceShift:
    """KS test on the top-class probability: unfamiliar inputs get less confident predictions."""

    min_effect: float = 0.0
    name: str = "confidence_ks"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        if (missing := _needs_model(self.name, ctx)) is not None:
            return [missing]
        assert ctx.model_reference is not None
        reference = ctx.model_reference.confidences
        current = ctx.probabilities.max(axis=1)
        result = stats.ks_test(reference, current)
        return [
            _test_finding(
                self.name,
                self.name,
                result,
                self.min_effect,
                extra={
                    "baseline_mean_confidence": float(reference.mean()),
                    "current_mean_confidence": float(current.mean()),
                    "mean_confidence_shift": float(current.mean() - reference.mean()),
                },
                plot=_feature_plot("top-class probability", reference, current),
            )
        ]


def _subsample(rows: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_rows`` rows drawn without replacement (all of them when there are fewer)."""
    if len(rows) <= max_rows:
        return rows
    return rows[rng.choice(len(rows), max_rows, replace=False)]


@dataclass
class EmbeddingMMD:
    """MMD permutation test on the model's penultimate-layer embeddings (optional; costs a
    forward pass plus an (n+m)^2 kernel, so both samples are capped at ``max_samples``)."""

    max_samples: int = 500
    n_permutations: int = 200
    min_effect: float = 0.0
    name: str = "embedding_mmd"

    def evaluate(self, ctx: DriftContext) -> list[Finding]:
        if ctx.probe is None or ctx.model_reference is None:
            return [skipped(self.name, "needs the production model loaded (model.enabled=true)")]
        rng = np.random.default_rng(ctx.seed)
        reference = _subsample(ctx.model_reference.embeddings, self.max_samples, rng)
        current = _subsample(ctx.embeddings, self.max_samples, rng)
        result = stats.mmd_permutation_test(reference, current, self.n_permutations, seed=ctx.seed)
        return [
            _test_finding(
                self.name,
                self.name,
                result,
                self.min_effect,
                extra={"n_reference": float(len(reference)), "n_current": float(len(current))},
            )
        ]
