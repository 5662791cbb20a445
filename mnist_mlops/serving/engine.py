"""Inference off the event loop, with concurrent single requests coalesced into one model call.

One dedicated thread owns the model calls. Requests put (images, future) on a queue; the
thread takes everything waiting (up to ``micro_batch_max`` images), runs ONE forward pass
and hands each request its rows. Under load this turns 16 concurrent 1-image requests into a
16-image call (far cheaper per image); when idle a request waits for nobody. The model
reference is read once per call, so a hot swap never splits a batch across two models.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import torch

from mnist_mlops.serving.loader import LoadedModel, as_model_input

_log = logging.getLogger(__name__)
_STOP = object()


class ModelNotReadyError(RuntimeError):
    """No model is loaded yet (the app is live but not ready)."""


class InferenceEngine:
    """Single inference thread fed by a queue; see the module docstring."""

    def __init__(
        self,
        micro_batch_max: int = 256,
        chunk: int = 2048,
        on_batch: Callable[[int], None] | None = None,
        max_threads: int = 1,
        parallel_min_images: int = 256,
    ) -> None:
        self.model: LoadedModel | None = None
        self.micro_batch_max = micro_batch_max
        self.chunk = chunk
        self.on_batch = on_batch  # observes the size of every model call (metrics)
        # Small calls run on one thread: spreading 16 images over two OpenMP threads costs
        # more in wake-ups (and spinning that steals the event loop's core) than it saves.
        self.max_threads = max_threads
        self.parallel_min_images = parallel_min_images
        self._threads = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def submit(self, images: np.ndarray) -> Future:
        """Queue float32 images (n, 28, 28) in [0, 1]; the future gives (probs (n, 10), model)."""
        future: Future = Future()
        self._queue.put((images, future))
        return future

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Blocking convenience for threads (batch endpoint, tests)."""
        return self.submit(images).result()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            items = [item]
            count = len(item[0])
            while count < self.micro_batch_max:
                try:
                    extra = self._queue.get_nowait()
                except queue.Empty:
                    break
                if extra is _STOP:
                    self._queue.put(_STOP)
                    break
                items.append(extra)
                count += len(extra[0])
            self._serve(items)

    def _serve(self, items: list[tuple[np.ndarray, Future]]) -> None:
        model = self.model  # one snapshot for the whole call (hot-swap safety)
        live = [(images, fut) for images, fut in items if fut.set_running_or_notify_cancel()]
        if not live:
            return
        if model is None:
            for _, fut in live:
                fut.set_exception(ModelNotReadyError("no model is loaded yet"))
            return
        try:
            stacked = live[0][0] if len(live) == 1 else np.concatenate([i for i, _ in live])
            probs = self._forward(model, stacked)
        except Exception as exc:  # a failed call fails its requests, never the thread
            _log.exception("inference failed")
            for _, fut in live:
                fut.set_exception(exc)
            return
        start = 0
        for images, fut in live:
            fut.set_result((probs[start : start + len(images)], model))
            start += len(images)

    def _use_threads(self, images: int) -> None:
        wanted = self.max_threads if images >= self.parallel_min_images else 1
        if wanted != self._threads:
            torch.set_num_threads(wanted)
            self._threads = wanted

    def _forward(self, model: LoadedModel, images: np.ndarray) -> np.ndarray:
        out = np.empty((len(images), 10), dtype=np.float32)
        self._use_threads(len(images))
        with torch.inference_mode():
            for start in range(0, len(images), self.chunk):
                part = torch.from_numpy(images[start : start + self.chunk])
                if self.on_batch is not None:
                    self.on_batch(len(part))
                log_probs = (model.runner or model.module)(as_model_input(part, model))
                out[start : start + len(part)] = log_probs.float().exp_().cpu().numpy()
        return out

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=5)


def saliency(model: LoadedModel, image: np.ndarray) -> np.ndarray:
    """|d log p(predicted) / d pixel| for one float32 (28, 28) image, scaled to [0, 1].

    Shows which pixels drove the prediction; computed outside the inference thread (it needs
    gradients, and it is rare: only the web UI asks for it).
    """
    x = as_model_input(torch.from_numpy(np.asarray(image, np.float32)[None]), model)
    x.requires_grad_(True)
    with torch.enable_grad():
        log_probs = model.module(x)
        log_probs[0, int(log_probs.argmax())].backward()
    grad = x.grad.detach().float().abs().reshape(28, 28).cpu().numpy()
    peak = float(grad.max())
    return grad / peak if peak > 0 else grad
