"""Where a window of "current" data comes from. Each source is a YAML file in ``conf/source/``.

A source returns a :class:`Window`: images always; labels where known (-1 = unknown, as in
the prediction log's feedback join); the served probabilities where the data came through
the serving app. Adding a source is a new class and a new YAML file with its ``_target_``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from mnist_mlops.data.splits import load_split

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Window:
    """The data under test; ``labels`` is -1 where the true label is unknown."""

    images: np.ndarray
    labels: np.ndarray
    description: str
    probabilities: np.ndarray | None = None
    model_versions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def known_labels(self) -> np.ndarray:
        return self.labels[self.labels >= 0]

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray | None = None, description: str = "arrays"
    ) -> Window:
        labels = (
            np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        )
        return cls(images=np.asarray(images), labels=labels, description=description)


def _tail(
    images: np.ndarray, labels: np.ndarray, last_n: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if last_n is None:
        return images, labels
    if last_n <= 0:
        raise ValueError(f"last_n must be positive, got {last_n}")
    return images[-last_n:], labels[-last_n:]


@dataclass
class ParquetSource:
    """A Parquet split in the preprocessing layout (e.g. a freshly labelled batch)."""

    path: str
    last_n: int | None = None

    def load(self) -> Window:
        arrays = load_split(self.path)
        images, labels = _tail(arrays.images, arrays.labels, self.last_n)
        return Window(images, labels, description=f"parquet:{self.path}")


@dataclass
class IdxSource:
    """A directory of gzipped IDX files: ``<prefix>-images-idx3-ubyte.gz`` and, when present,
    ``<prefix>-labels-idx1-ubyte.gz`` (without it the window is unlabelled)."""

    directory: str
    prefix: str = "t10k"
    last_n: int | None = None

    def load(self) -> Window:
        from mnist_mlops.data.idx import IMAGES_MAGIC, LABELS_MAGIC, RawDataError, read_idx

        directory = Path(self.directory)
        images_path = directory / f"{self.prefix}-images-idx3-ubyte.gz"
        labels_path = directory / f"{self.prefix}-labels-idx1-ubyte.gz"
        if not images_path.is_file():
            raise FileNotFoundError(
                f"IDX source: no {images_path.name} in {directory} (prefix={self.prefix!r})"
            )
        images = read_idx(images_path, IMAGES_MAGIC)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise RawDataError(
                f"{images_path}: expected images of shape (N, 28, 28), got {images.shape}"
            )
        labels = np.full(len(images), -1, np.int64)
        if labels_path.is_file():
            labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
            if labels.shape != (len(images),):
                raise RawDataError(
                    f"{labels_path} holds {labels.shape} labels for {len(images)} images"
                )
        images, labels = _tail(images, labels, self.last_n)
        return Window(images, labels, description=f"idx:{images_path}")


def parse_since(since: str | None, now: datetime | None = None) -> datetime | None:
    """``"6h"``/``"30m"``/``"7d"`` (relative to now) or an ISO-8601 timestamp, as UTC."""
    if since in (None, ""):
        return None
    now = now or datetime.now(UTC)
    if match := _DURATION.match(str(since)):
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(str(since))
    except ValueError as exc:
        raise ValueError(
            f"since={since!r} is neither a duration like '6h'/'30m'/'7d' nor an ISO timestamp"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class PredictionLogSource:
    """The serving app's prediction log: the last N predictions and/or a time window."""

    log_dir: str
    last_n: int | None = 2000
    since: str | None = None

    def load(self) -> Window:
        from mnist_mlops.predictions import read_prediction_log

        if self.last_n is not None and self.last_n <= 0:
            raise ValueError(f"last_n must be positive, got {self.last_n}")
        logged = read_prediction_log(
            self.log_dir, last_n=self.last_n, since=parse_since(self.since)
        )
        scope = f"last_n={self.last_n}" + (f", since={self.since}" if self.since else "")
        if logged.damage.any:  # read past, never fatal: say so in every report
            damage = logged.damage
            scope += (
                f"; skipped damaged log data: {damage.bad_segments} segments, "
                f"{damage.corrupt_spans} corrupt spans, {damage.torn_tails} torn tails"
            )
        return Window(
            images=logged.images,
            labels=logged.labels,
            description=f"prediction_log:{self.log_dir} ({scope})",
            probabilities=logged.probabilities,
            model_versions=sorted(set(logged.model_versions.tolist())),
        )
