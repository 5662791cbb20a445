"""What "no drift" looks like: the training baseline and the model's own reference behaviour.

The input baseline (``baseline.json``) is written by preprocessing from the training split.
The model reference (prediction distribution, confidences, penultimate-layer embeddings on
the validation split) depends on which model is in production, so it is computed here and
cached per model version: a champion change must never be compared against its
predecessor's predictions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.data.baseline import BASELINE_SCHEMA_VERSION
from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.monitoring.model_probe import ModelProbe
from mnist_mlops.utils.atomic import atomic_open

log = logging.getLogger(__name__)

# schema -> decimals its reference samples were rounded to (None: full precision). Window
# features are rounded the same way, so both samples of a KS test are on the same grid.
SAMPLE_DECIMALS: dict[int, int | None] = {1: 4, 2: None}


class BaselineError(ValueError):
    """The baseline file is missing or does not follow the preprocessing contract."""


@dataclass(frozen=True)
class Baseline:
    """Training-set statistics in the form the detectors need (arrays, not JSON lists)."""

    label_fractions: np.ndarray
    pixel_bin_edges: np.ndarray
    pixel_fractions: np.ndarray
    feature_samples: dict[str, np.ndarray]
    feature_summaries: dict[str, dict[str, Any]]
    source: dict[str, Any]
    sample_decimals: int | None = None  # schema 1 baselines: 4

    def comparable(self, values: np.ndarray) -> np.ndarray:
        """Window feature values on the reference sample's grid (rounded as it was, if at all)."""
        values = np.asarray(values, dtype=np.float64)
        return values if self.sample_decimals is None else np.round(values, self.sample_decimals)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "<dict>") -> Baseline:
        version = raw.get("schema_version")
        if version not in SAMPLE_DECIMALS:
            raise BaselineError(
                f"{origin}: baseline schema_version {version!r} is not supported "
                f"(expected one of {sorted(SAMPLE_DECIMALS)}); re-run preprocessing"
            )
        if version != BASELINE_SCHEMA_VERSION:
            log.info(
                "%s: baseline schema_version %s (reference samples rounded to %s decimals); "
                "window features are rounded the same way. Re-run preprocessing to upgrade.",
                origin,
                version,
                SAMPLE_DECIMALS[version],
            )
        try:
            labels = np.asarray(raw["labels"]["fractions"], dtype=np.float64)
            edges = np.asarray(raw["pixel_histogram"]["bin_edges"], dtype=np.float64)
            pixel = np.asarray(raw["pixel_histogram"]["fractions"], dtype=np.float64)
            features = raw["features"]
            samples = {
                name: np.asarray(stats["reference_sample"], dtype=np.float64)
                for name, stats in features.items()
            }
        except (KeyError, TypeError) as exc:
            raise BaselineError(
                f"{origin}: baseline is missing {exc}; re-run preprocessing"
            ) from exc
        if labels.shape != (NUM_CLASSES,):
            raise BaselineError(f"{origin}: labels.fractions must have {NUM_CLASSES} entries")
        if len(edges) != len(pixel) + 1:
            raise BaselineError(
                f"{origin}: pixel_histogram has {len(edges)} edges for {len(pixel)} bins"
            )
        summaries = {
            name: {k: v for k, v in stats.items() if k != "reference_sample"}
            for name, stats in features.items()
        }
        source = dict(raw.get("source", {}))
        return cls(labels, edges, pixel, samples, summaries, source, SAMPLE_DECIMALS[version])

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        path = Path(path)
        if not path.is_file():
            raise BaselineError(
                f"drift baseline not found: {path} (run `python -m mnist_mlops.preprocess`, "
                "which writes it next to the Parquet splits)"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(raw, origin=str(path))


@dataclass(frozen=True)
class ModelReference:
    """The production model's behaviour on held-out in-distribution data (the val split)."""

    model_uri: str
    model_version: str
    probabilities: np.ndarray
    embeddings: np.ndarray

    @property
    def predicted_fractions(self) -> np.ndarray:
        counts = np.bincount(self.probabilities.argmax(axis=1), minlength=NUM_CLASSES)
        return counts / max(counts.sum(), 1)

    @property
    def confidences(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


def build_model_reference(
    probe: ModelProbe,
    reference_images: np.ndarray,
    cache_dir: str | Path | None,
    max_embeddings: int = 2000,
    seed: int = 0,
) -> ModelReference:
    """Predictions + embeddings of ``probe`` on the reference images, cached per model version.

    The cache key covers the model version and the reference images' bytes, so a new champion
    or a re-split val set never reuses stale numbers.
    """
    digest = hashlib.sha256(np.ascontiguousarray(reference_images).tobytes()).hexdigest()[:16]
    key = hashlib.sha256(f"{probe.uri}|{probe.version}|{digest}".encode()).hexdigest()[:20]
    cache_file = Path(cache_dir) / f"model_reference_{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        cached = np.load(cache_file)
        return ModelReference(
            probe.uri, probe.version, cached["probabilities"], cached["embeddings"]
        )
    probabilities, embeddings = probe.predict(reference_images)
    if len(embeddings) > max_embeddings:
        keep = np.random.default_rng(seed).choice(len(embeddings), max_embeddings, replace=False)
        embeddings = embeddings[np.sort(keep)]
    if cache_file is not None:
        with atomic_open(cache_file, "wb") as handle:
            np.savez(handle, probabilities=probabilities, embeddings=embeddings)
        log.info("cached model reference for %s v%s in %s", probe.uri, probe.version, cache_file)
    return ModelReference(probe.uri, probe.version, probabilities, embeddings)
