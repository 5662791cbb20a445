"""Model registry: pick the best run, register it once, and promote it only when proven better.

The champion/challenger protocol uses aliases only (``staging`` for the challenger,
``production`` for the champion; never the deprecated stages). A challenger replaces the
champion only if it beats it by ``promotion_margin`` accuracy on EVERY evaluation set the caller
supplies (the held-out test split, and for retraining also recent labelled traffic), or if
there is no champion. The production alias is moved by a single registry call after all
evaluation has succeeded, so a failure anywhere leaves the previous champion serving.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
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

from mnist_mlops.data.splits import MnistArrays

_log = logging.getLogger(__name__)
MODEL_ARTIFACT = "model"
TAG_PREFIX = "promotion."


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
    margin: float
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


def score_model(model: torch.nn.Module, arrays: MnistArrays, batch_size: int = 2048) -> dict:
    """Accuracy and mean NLL of a served-contract model on uint8 images."""
    correct, loss_sum = 0, 0.0
    labels = torch.from_numpy(np.asarray(arrays.labels, dtype=np.int64))
    with torch.inference_mode():
        for start in range(0, len(arrays), batch_size):
            chunk = torch.from_numpy(arrays.images[start : start + batch_size]).float() / 255.0
            log_probs = model(chunk.unsqueeze(1))
            target = labels[start : start + batch_size]
            correct += int((log_probs.argmax(dim=1) == target).sum())
            loss_sum += float(torch.nn.functional.nll_loss(log_probs, target, reduction="sum"))
    n = max(len(arrays), 1)
    return {"acc": correct / n, "loss": loss_sum / n, "n": len(arrays)}


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


def select_best_run(client: MlflowClient, registry_cfg: Any, metric: str) -> tuple[Run, str]:
    """The FINISHED run with the highest logged ``metric`` whose logged model loads and batches.

    Returns the run and its model URI; runs without the metric are never candidates.
    """
    candidates = [
        run
        for run in finished_runs(client, registry_cfg, [f"metrics.`{metric}` DESC"])
        if metric in run.data.metrics
    ]
    if not candidates:
        raise LookupError(f"no FINISHED run in {registry_cfg.experiment_name!r} logged {metric!r}")
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
    """The registered version for the run's model, creating it only if none exists (idempotent)."""
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


def _decide(
    challenger: Mapping[str, float], champion: Mapping[str, float] | None, margin: float
) -> tuple[bool, str]:
    if champion is None:
        return True, "no champion: the first model with a loadable artifact becomes production"
    losing = [
        f"{name}: {challenger[name]:.4f} < {champion[name]:.4f} + {margin}"
        for name in challenger
        if challenger[name] < champion[name] + margin
    ]
    if losing:
        return False, "challenger does not beat the champion by the margin on " + "; ".join(losing)
    wins = ", ".join(f"{n} {challenger[n]:.4f} vs {champion[n]:.4f}" for n in challenger)
    return True, f"challenger beats the champion by >= {margin} on every eval set ({wins})"


def promote_if_better(
    client: MlflowClient,
    registry_cfg: Any,
    version: str,
    eval_sets: Mapping[str, MnistArrays],
) -> PromotionDecision:
    """Stage ``version`` as challenger, compare it with the champion, move production if it wins.

    Scores are accuracies per eval set. All evaluation happens before any alias moves; the
    production alias then changes in one registry call, so there is never a half-promotion.
    """
    if not eval_sets:
        raise ValueError("promote_if_better needs at least one evaluation set")
    name = str(registry_cfg.model_name)
    margin = float(registry_cfg.promotion_margin)
    version = str(version)
    challenger_mv = client.get_model_version(name, version)
    client.set_registered_model_alias(name, str(registry_cfg.challenger_alias), version)
    champion_version = alias_version(client, name, str(registry_cfg.champion_alias))

    challenger_model = load_logged_model(f"models:/{name}/{version}")
    challenger_scores = {k: score_model(challenger_model, v)["acc"] for k, v in eval_sets.items()}
    champion_scores: dict[str, float] = {}
    if champion_version == version:
        promoted, reason = False, f"version {version} is already the champion"
        champion_scores = dict(challenger_scores)
    elif champion_version is None:
        promoted, reason = _decide(challenger_scores, None, margin)
    else:
        champion_model = load_logged_model(f"models:/{name}/{champion_version}")
        champion_scores = {k: score_model(champion_model, v)["acc"] for k, v in eval_sets.items()}
        promoted, reason = _decide(challenger_scores, champion_scores, margin)

    decision = PromotionDecision(
        promoted=promoted,
        reason=reason,
        model_name=name,
        challenger_version=version,
        champion_version=champion_version,
        challenger_scores=challenger_scores,
        champion_scores=champion_scores,
        margin=margin,
        challenger_run_id=challenger_mv.run_id,
    )
    _write_decision_tags(client, decision)
    if promoted:
        client.set_registered_model_alias(name, str(registry_cfg.champion_alias), version)
    _log.info("promotion decision for %s v%s: %s (%s)", name, version, promoted, reason)
    return decision


def _write_decision_tags(client: MlflowClient, decision: PromotionDecision) -> None:
    """Record the decision on the challenger version (written before the alias can move)."""
    tags = {
        "decision": "promoted" if decision.promoted else "rejected",
        "reason": decision.reason[:4000],
        "champion_version": decision.champion_version or "none",
        "margin": str(decision.margin),
        "decided_at": decision.decided_at,
    }
    for set_name, score in decision.challenger_scores.items():
        tags[f"challenger_acc.{set_name}"] = f"{score:.6f}"
    for set_name, score in decision.champion_scores.items():
        tags[f"champion_acc.{set_name}"] = f"{score:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(
            decision.model_name, decision.challenger_version, TAG_PREFIX + key, value
        )


def write_report(decision: PromotionDecision, path: str | Path) -> Path:
    """Write the decision as JSON atomically (a reader never sees half a report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(decision.to_dict(), handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return path
