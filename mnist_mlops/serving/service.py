"""The prediction service: model watcher + inference engine + prediction log, with no HTTP.

Endpoints stay thin: they parse input (``inputs``), await :meth:`PredictionService.predict`
and serialise. Everything stateful lives here, so tests and the app share one object.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from mnist_mlops.predictions import PredictionLogWriter
from mnist_mlops.serving import metrics
from mnist_mlops.serving.engine import InferenceEngine, ModelNotReadyError
from mnist_mlops.serving.feedback_trust import (
    FeedbackDesk,
    FeedbackSigner,
    RateLimiter,
    load_or_create_secret,
)
from mnist_mlops.serving.loader import LoadedModel, ModelResolver, ModelWatcher
from mnist_mlops.serving.settings import ServingSettings

_log = logging.getLogger(__name__)
RECENT_IDS = 200_000  # ids remembered in memory so feedback rarely needs the disk


@dataclass(frozen=True)
class Prediction:
    ids: list[str]
    probabilities: np.ndarray  # float32 (n, 10)
    predicted: np.ndarray  # int64 (n,)
    model: LoadedModel


def new_ids(count: int) -> list[str]:
    """``count`` random 32-hex-digit prediction ids from one urandom call."""
    raw = os.urandom(16 * count).hex()
    return [raw[i : i + 32] for i in range(0, 32 * count, 32)]


class PredictionService:
    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.engine = InferenceEngine(
            micro_batch_max=settings.micro_batch_max,
            chunk=settings.inference_chunk,
            on_batch=metrics.MODEL_CALL_SIZE.observe,
            max_threads=settings.torch_threads,
        )
        self.log = PredictionLogWriter(
            settings.prediction_log_dir,
            max_segment_bytes=settings.prediction_log_max_segment_bytes,
            max_total_bytes=settings.prediction_log_max_total_bytes,
            max_feedback_bytes=settings.prediction_log_max_feedback_bytes,
            flush_interval_s=settings.prediction_log_flush_interval_s,
            on_event=metrics.log_event,
        )
        self.feedback = FeedbackDesk(
            self.log,
            FeedbackSigner(
                load_or_create_secret(settings.prediction_log_dir, settings.feedback_secret)
            ),
            RateLimiter(settings.feedback_rate_per_s, settings.feedback_burst),
            require_token=settings.feedback_require_token,
        )
        self.watcher = ModelWatcher(ModelResolver(settings), on_change=self._on_model_change)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_lock = threading.Lock()

    def start(self) -> None:
        """Load the model (or the fallback, or nothing) and start polling the alias."""
        torch.set_num_threads(self.settings.torch_threads)  # loading/warm-up; the engine adapts
        try:
            self.watcher.refresh()
        except Exception:  # never crash at startup: stay live and report not-ready
            _log.exception("initial model load failed")
        self.watcher.start_polling(self.settings.poll_interval_s)
        # Everything allocated so far (torch, mlflow, the model) lives for the whole process:
        # keep it out of the garbage collector's scans, which otherwise add tail latency.
        gc.freeze()

    def stop(self) -> None:
        self.watcher.stop()
        self.engine.stop()
        self.log.close()

    def _on_model_change(self, model: LoadedModel) -> None:
        self.engine.model = model
        metrics.set_model(model.name, model.version, model.source)

    @property
    def model(self) -> LoadedModel | None:
        return self.engine.model

    async def predict(self, images: np.ndarray) -> Prediction:
        """Classify float32 (n, 28, 28) images in [0, 1] and log every prediction."""
        if self.engine.model is None:
            raise ModelNotReadyError("no model is loaded yet")
        probabilities, model = await asyncio.wrap_future(self.engine.submit(images))
        return self._record(images, probabilities, model)

    def predict_blocking(self, images: np.ndarray) -> Prediction:
        """Same as :meth:`predict` for callers on a worker thread (large batches)."""
        if self.engine.model is None:
            raise ModelNotReadyError("no model is loaded yet")
        probabilities, model = self.engine.predict(images)
        return self._record(images, probabilities, model)

    def _record(
        self, images: np.ndarray, probabilities: np.ndarray, model: LoadedModel
    ) -> Prediction:
        ids = new_ids(len(images))
        predicted = probabilities.argmax(axis=1)
        pixels = np.rint(images * 255.0).astype(np.uint8)
        self.log.log_predictions(ids, pixels, probabilities, model.label)
        metrics.count_predictions(np.bincount(predicted, minlength=10))
        with self._recent_lock:
            for prediction_id in ids[-RECENT_IDS:]:
                self._recent[prediction_id] = None
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        return Prediction(ids, probabilities, predicted, model)

    def knows(self, prediction_id: str) -> bool:
        """Whether the id was served (memory first; then the log's incremental id index)."""
        with self._recent_lock:
            if prediction_id in self._recent:
                return True
        return self.log.contains(prediction_id)

    def reload(self) -> LoadedModel | None:
        return self.watcher.refresh()
