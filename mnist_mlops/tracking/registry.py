"""Model registry: pick the best run, register it once, and promote it only on evidence.

The champion/challenger protocol uses aliases only (``staging`` for the challenger,
``production`` for the champion; never the deprecated stages). The gate is a paired test, not a
difference of two accuracies: both models score the same images, and only the images on which
they disagree about correctness say anything about which is better (``b``: challenger right,
champion wrong; ``c``: the reverse). The rule (:data:`GATE_RULE`):

1. the PRIMARY eval set (the first one given: the ``gate`` split, held out by preprocessing and
   used for nothing else) must show the challenger better: exact one-sided McNemar p-value
   (``binomtest(b, b + c, 0.5, "greater")``) <= ``alpha`` AND accuracy gain >= ``min_effect``;
2. every SECONDARY set (recent trusted feedback, when the retrain has enough of it) must show
   no significant regression: the one-sided McNemar p-value for "champion better" > ``alpha``;
3. with no champion yet, the challenger must reach ``min_accuracy`` on the primary set.

Debug runs (tag ``debug=true``, from the ``debug/`` config group) are never selected,
registered or promoted. The production alias is moved by a single registry call after all
evaluation has succeeded, so a failure anywhere leaves the previous champion serving; the
versions that held it are tagged (``promotion.production_from`` / ``_until``) so serving can fall
back to the last gated champion and never to an ungated run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from mnist_mlops.data.splits import MnistArrays
from mnist_mlops.models.inference import MODEL_ARTIFACT
from mnist_mlops.models.scoring import score_images
from mnist_mlops.utils.atomic import atomic_write_json

_log = logging.getLogger(__name__)
TAG_PREFIX = "promotion."
# the run tag the debug/ config group sets; such runs never reach the registry
DEBUG_TAG = "debug"
# version tags recording who held the champion alias when (serving falls back along them)
PRODUCTION_FROM_TAG = TAG_PREFIX + "production_from"
PRODUCTION_UNTIL_TAG = TAG_PREFIX + "production_until"
GATE_RULE = (
    "promote iff [primary set] exact one-sided McNemar p <= alpha and accuracy gain >= "
    "min_effect, and [every secondary set] no significant regression (one-sided McNemar p for "
    "'champion better' > alpha); with no champion: primary accuracy >= min_accuracy"
)
SELECTION_MODES = ("max", "min")


@dataclass(frozen=True)
class GateRule:
    """The gate's thresholds (``registry.gate`` in ``conf/registry/*.yaml``)."""

    alpha: float = 0.05
    min_effect: float = 0.001
    min_accuracy: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"registry.gate.alpha={self.alpha} must be in (0, 1)")
        if not 0.0 <= self.min_effect < 1.0:
            raise ValueError(f"registry.gate.min_effect={self.min_effect} must be in [0, 1)")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"registry.gate.min_accuracy={self.min_accuracy} must be in [0, 1]")

    @classmethod
    def from_config(cls, registry_cfg: Any) -> GateRule:
        gate = registry_cfg.get("gate") if hasattr(registry_cfg, "get") else None
        if not gate:
            return cls()
        return cls(**{k: float(v) for k, v in dict(gate).items()})


@dataclass(frozen=True)
class PairedComparison:
    """Champion vs challenger on one eval set, image by image.

    ``b``: images only the challenger gets right; ``c``: images only the champion gets right.
    ``p_better``/``p_worse``: exact one-sided McNemar p-values for "challenger better" and
    "challenger worse" (the binomial test of ``b`` out of ``b + c`` against 1/2).
    """

    n: int
    challenger_acc: float
    champion_acc: float
    b: int
    c: int
    p_better: float
    p_worse: float

    @property
    def gain(self) -> float:
        return self.challenger_acc - self.champion_acc


def mcnemar_p(wins: int, losses: int) -> float:
    """Exact one-sided McNemar p-value for ``wins`` out of the ``wins + losses`` discordant
    images (1.0 when the models never disagree: no evidence either way)."""
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def compare_paired(
    challenger_correct: np.ndarray, champion_correct: np.ndarray
) -> PairedComparison:
    """Paired comparison from per-image correctness (same images, same order)."""
    new = np.asarray(challenger_correct, dtype=bool)
    old = np.asarray(champion_correct, dtype=bool)
    if new.shape != old.shape or new.ndim != 1:
        raise ValueError(f"paired vectors differ in shape: {new.shape} vs {old.shape}")
    n = int(new.size)
    b = int(np.count_nonzero(new & ~old))
    c = int(np.count_nonzero(old & ~new))
    return PairedComparison(
        n=n,
        challenger_acc=float(new.mean()) if n else 0.0,
        champion_acc=float(old.mean()) if n else 0.0,
        b=b,
        c=c,
        p_better=mcnemar_p(b, c),
        p_worse=mcnemar_p(c, b),
    )


def gate_decision(comparisons: Mapping[str, PairedComparison], rule: GateRule) -> tuple[bool, str]:
    """Apply :data:`GATE_RULE` to a challenger with a champion; the first set is primary."""
    if not comparisons:
        raise ValueError("the gate needs at least one evaluation set")
    (primary_name, primary), *secondary = comparisons.items()
    summary = (
        f"{primary_name}: {primary.challenger_acc:.4f} vs {primary.champion_acc:.4f}, "
        f"b={primary.b} c={primary.c}, p={primary.p_better:.4g}"
    )
    if primary.p_better > rule.alpha:
        return False, f"no significant improvement on {summary} > alpha={rule.alpha}"
    if primary.gain < rule.min_effect:
        return False, (
            f"improvement on {primary_name} of {primary.gain:.4f} is below "
            f"min_effect={rule.min_effect} ({summary})"
        )
    regressions = [
        f"{name}: {comp.challenger_acc:.4f} vs {comp.champion_acc:.4f}, b={comp.b} c={comp.c}, "
        f"p(worse)={comp.p_worse:.4g} <= alpha={rule.alpha}"
        for name, comp in secondary
        if comp.p_worse <= rule.alpha
    ]
    if regressions:
        return False, "significantly worse on " + "; ".join(regressions)
    checked = "".join(f"; no regression on {name}" for name, _ in secondary)
    return True, f"significantly better on {summary} <= alpha={rule.alpha}{checked}"


def first_champion_decision(primary_name: str, accuracy: float, rule: GateRule) -> tuple[bool, str]:
    """No champion yet: the challenger must clear the configured accuracy floor."""
    if accuracy < rule.min_accuracy:
        return False, (
            f"no champion, and the challenger's {primary_name} accuracy {accuracy:.4f} is below "
            f"the floor registry.gate.min_accuracy={rule.min_accuracy}"
        )
    return True, (
        f"no champion: the challenger's {primary_name} accuracy {accuracy:.4f} clears "
        f"min_accuracy={rule.min_accuracy}"
    )


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why; written as version tags and as a JSON report."""

    promoted: bool
    reason: str
    model_name: str
    challenger_version: str
    champion_version: str | None
    challenger_scores: dict[str, float]
    champion_scores: dict[str, float]
    comparisons: dict[str, dict[str, float]]
    alpha: float
    min_effect: float
    min_accuracy: float
    rule: str = GATE_RULE
    challenger_run_id: str | None = None
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_logged_model(model_uri: str) -> torch.nn.Module:
    """Load an ``InferenceModel`` on CPU in eval mode and prove it takes a batch.

    A model that loads but cannot predict a batch of (N, 1, 28, 28) (e.g. exported with a
    fixed batch size) is as useless to serving as one that does not load, so both raise.
    """
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu").eval()
    probe = torch.zeros(3, 1, 28, 28)
    with torch.inference_mode():
        out = model(probe)
    if tuple(out.shape) != (3, 10):
        raise ValueError(f"{model_uri} returned shape {tuple(out.shape)} for 3 images, not (3, 10)")
    return model


def predict_correct(
    model: torch.nn.Module, arrays: MnistArrays, batch_size: int = 2048
) -> tuple[np.ndarray, float]:
    """Per-image correctness (bool, in ``arrays`` order) and summed NLL of a served model."""
    scores = score_images(model, arrays.images, batch_size, labels=arrays.labels)
    return scores.predicted == np.asarray(arrays.labels), float(scores.nll_sum or 0.0)


def score_model(model: torch.nn.Module, arrays: MnistArrays, batch_size: int = 2048) -> dict:
    """Accuracy and mean NLL of a served-contract model on uint8 images."""
    correct, loss_sum = predict_correct(model, arrays, batch_size)
    n = max(len(arrays), 1)
    return {"acc": float(correct.sum()) / n, "loss": loss_sum / n, "n": len(arrays)}


def _experiment_ids(client: MlflowClient, registry_cfg: Any) -> list[str]:
    experiment = client.get_experiment_by_name(str(registry_cfg.experiment_name))
    if experiment is None:
        raise LookupError(f"MLflow experiment {registry_cfg.experiment_name!r} does not exist")
    return [experiment.experiment_id]


def finished_runs(client: MlflowClient, registry_cfg: Any, order_by: list[str]) -> list[Run]:
    """FINISHED runs of the configured experiment in the given order (one place for the query)."""
    return client.search_runs(
        _experiment_ids(client, registry_cfg),
        filter_string="attributes.status = 'FINISHED'",
        order_by=order_by,
        max_results=200,
    )


def is_debug_run(run: Run) -> bool:
    """A run made with the ``debug/`` config group (a smoke run, not a model)."""
    return str(run.data.tags.get(DEBUG_TAG, "")).lower() == "true"


def refuse_debug_run(run: Run) -> None:
    """Raise the one clear message for an attempt to register or promote a debug run."""
    if is_debug_run(run):
        raise ValueError(
            f"run {run.info.run_id} is a debug run (tag {DEBUG_TAG}=true, trained with the "
            "debug/ config group): debug runs are never registered or promoted"
        )


def select_best_run(
    client: MlflowClient, registry_cfg: Any, metric: str, mode: str = "max"
) -> tuple[Run, str]:
    """The FINISHED, non-debug run with the best logged ``metric`` (``mode`` max or min) whose
    logged model loads and batches. Returns the run and its model URI; runs without the metric
    (e.g. logged before the selected model was re-validated) are never candidates."""
    if mode not in SELECTION_MODES:
        raise ValueError(f"selection.mode must be one of {SELECTION_MODES}, got {mode!r}")
    direction = "DESC" if mode == "max" else "ASC"
    runs = finished_runs(client, registry_cfg, [f"metrics.`{metric}` {direction}"])
    candidates = [r for r in runs if metric in r.data.metrics and not is_debug_run(r)]
    if not candidates:
        skipped = sum(1 for r in runs if is_debug_run(r))
        raise LookupError(
            f"no FINISHED non-debug run in {registry_cfg.experiment_name!r} logged {metric!r}"
            + (f" ({skipped} debug runs skipped)" if skipped else "")
        )
    problems = []
    for run in candidates:
        uri = f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}"
        try:
            load_logged_model(uri)
        except Exception as exc:  # any reason a model cannot serve disqualifies the run
            problems.append(f"{run.info.run_id}: {exc}")
            _log.warning("skipping run %s: its model does not load: %s", run.info.run_id, exc)
            continue
        return run, uri
    raise LookupError("no candidate run has a loadable model:\n" + "\n".join(problems))


def register_run_model(client: MlflowClient, model_name: str, run_id: str) -> str:
    """The registered version for the run's model, creating it only if none exists (idempotent).

    Debug runs are refused (:func:`refuse_debug_run`)."""
    refuse_debug_run(client.get_run(run_id))
    existing = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if existing:
        return str(min(int(v.version) for v in existing))
    version = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT}", model_name)
    return str(version.version)


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        # A missing model is RESOURCE_DOES_NOT_EXIST; a missing alias is reported by the
        # SQL store as INVALID_PARAMETER_VALUE "... alias X not found." (REST: same code).
        missing_alias = exc.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and (
            "not found" in exc.message
        )
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) or missing_alias:
            return None
        raise


def production_history(client: MlflowClient, model_name: str) -> list[str]:
    """Versions that ever held the champion alias through the gate, most recent first."""
    held = [
        (v.tags[PRODUCTION_FROM_TAG], int(v.version))
        for v in client.search_model_versions(f"name='{model_name}'")
        if PRODUCTION_FROM_TAG in (v.tags or {})
    ]
    return [str(version) for _, version in sorted(held, reverse=True)]


def promote_if_better(
    client: MlflowClient,
    registry_cfg: Any,
    version: str,
    eval_sets: Mapping[str, MnistArrays],
) -> PromotionDecision:
    """Stage ``version`` as challenger, compare it with the champion, move production if it wins.

    ``eval_sets``: the FIRST is the primary gate set (the ``gate`` split), the others secondary
    (recent trusted feedback); see :data:`GATE_RULE`. All evaluation happens before any alias
    moves; the production alias then changes in one registry call (no half-promotion).
    """
    if not eval_sets:
        raise ValueError("promote_if_better needs at least one evaluation set")
    rule = GateRule.from_config(registry_cfg)
    name = str(registry_cfg.model_name)
    version = str(version)
    challenger_mv = client.get_model_version(name, version)
    if challenger_mv.run_id:
        refuse_debug_run(client.get_run(challenger_mv.run_id))
    client.set_registered_model_alias(name, str(registry_cfg.challenger_alias), version)
    champion_version = alias_version(client, name, str(registry_cfg.champion_alias))

    challenger_model = load_logged_model(f"models:/{name}/{version}")
    new_correct = {k: predict_correct(challenger_model, v)[0] for k, v in eval_sets.items()}
    challenger_scores = {k: float(v.mean()) if v.size else 0.0 for k, v in new_correct.items()}
    champion_scores: dict[str, float] = {}
    comparisons: dict[str, PairedComparison] = {}
    primary = next(iter(eval_sets))
    if champion_version == version:
        promoted, reason = False, f"version {version} is already the champion"
        champion_scores = dict(challenger_scores)
    elif champion_version is None:
        promoted, reason = first_champion_decision(primary, challenger_scores[primary], rule)
    else:
        champion_model = load_logged_model(f"models:/{name}/{champion_version}")
        for set_name, arrays in eval_sets.items():
            old_correct = predict_correct(champion_model, arrays)[0]
            comparisons[set_name] = compare_paired(new_correct[set_name], old_correct)
            champion_scores[set_name] = comparisons[set_name].champion_acc
        promoted, reason = gate_decision(comparisons, rule)

    decision = PromotionDecision(
        promoted=promoted,
        reason=reason,
        model_name=name,
        challenger_version=version,
        champion_version=champion_version,
        challenger_scores=challenger_scores,
        champion_scores=champion_scores,
        comparisons={k: {**asdict(v), "gain": v.gain} for k, v in comparisons.items()},
        alpha=rule.alpha,
        min_effect=rule.min_effect,
        min_accuracy=rule.min_accuracy,
        challenger_run_id=challenger_mv.run_id,
    )
    if champion_version != version:  # re-gating the champion must not overwrite its record
        _write_decision_tags(client, decision)
    if promoted:
        client.set_model_version_tag(name, version, PRODUCTION_FROM_TAG, decision.decided_at)
        client.set_registered_model_alias(name, str(registry_cfg.champion_alias), version)
        if champion_version is not None:
            client.set_model_version_tag(
                name, champion_version, PRODUCTION_UNTIL_TAG, decision.decided_at
            )
    _log.info("promotion decision for %s v%s: %s (%s)", name, version, promoted, reason)
    return decision


def _write_decision_tags(client: MlflowClient, decision: PromotionDecision) -> None:
    """Record the decision on the challenger version (written before the alias can move)."""
    tags = {
        "decision": "promoted" if decision.promoted else "rejected",
        "reason": decision.reason[:4000],
        "champion_version": decision.champion_version or "none",
        "rule": decision.rule,
        "alpha": str(decision.alpha),
        "min_effect": str(decision.min_effect),
        "min_accuracy": str(decision.min_accuracy),
        "decided_at": decision.decided_at,
    }
    for set_name, score in decision.challenger_scores.items():
        tags[f"challenger_acc.{set_name}"] = f"{score:.6f}"
    for set_name, score in decision.champion_scores.items():
        tags[f"champion_acc.{set_name}"] = f"{score:.6f}"
    for set_name, comp in decision.comparisons.items():
        tags[f"n.{set_name}"] = str(comp["n"])
        tags[f"b.{set_name}"] = str(comp["b"])
        tags[f"c.{set_name}"] = str(comp["c"])
        tags[f"p_better.{set_name}"] = f"{comp['p_better']:.6g}"
        tags[f"p_worse.{set_name}"] = f"{comp['p_worse']:.6g}"
    for key, value in tags.items():
        client.set_model_version_tag(
            decision.model_name, decision.challenger_version, TAG_PREFIX + key, value
        )


def write_report(decision: PromotionDecision, path: str | Path) -> Path:
    """Write the decision as JSON atomically (a reader never sees half a report)."""
    return atomic_write_json(path, decision.to_dict(), sort_keys=True)
