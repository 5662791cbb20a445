"""Serving settings: one typed object built from ``conf/serve.yaml`` (or its JSON in the env).

``python -m mnist_mlops.serve`` composes the Hydra config and hands it to every uvicorn worker
through ``MNIST_SERVING_SETTINGS``; ``uvicorn mnist_mlops.serving.app:app`` run directly composes
the same YAML, so both ways of starting the app agree.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SETTINGS_ENV_VAR = "MNIST_SERVING_SETTINGS"


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str = "mnist-classifier"
    model_alias: str = "production"
    tracking_uri: str
    # the registry may live elsewhere than the runs (MLflow allows both); default: the same
    registry_uri: str | None = None
    experiment_name: str = "mnist"
    # seconds between checks of the alias (0 disables polling; /admin/reload still works)
    poll_interval_s: float = Field(default=10.0, ge=0)
    registry_timeout_s: float = Field(default=5.0, gt=0)
    # empty: the admin endpoints answer 403
    admin_token: str = ""
    prediction_log_dir: str
    prediction_log_max_segment_bytes: int = Field(default=16 * 1024**2, gt=0)
    prediction_log_max_total_bytes: int = Field(default=512 * 1024**2, gt=0)
    prediction_log_max_feedback_bytes: int = Field(default=32 * 1024**2, gt=0)
    prediction_log_flush_interval_s: float = Field(default=0.5, gt=0)
    # /feedback trust: signing secret (empty: generated per log folder), per-IP token bucket
    # (rate 0 disables it), and whether feedback without its prediction's token is refused
    feedback_secret: str = ""
    feedback_rate_per_s: float = Field(default=2.0, ge=0)
    feedback_burst: int = Field(default=30, gt=0)
    feedback_require_token: bool = False
    # Request bodies (enforced while streaming, for every framing: see limits.py). The limit
    # depends on route and Content-Type; max_body_bytes is also the ceiling for all of them.
    max_body_bytes: int = Field(default=64 * 1024**2, gt=0)  # raw uint8 batches
    max_image_bytes: int = Field(default=16 * 1024**2, gt=0)  # a picture, raw or multipart
    max_json_bytes: int = Field(default=1024**2, gt=0)  # /predict JSON (one image: ~3-20 kB)
    # JSON batches: parsing holds the GIL ~25 ms per MiB, so big batches go as raw uint8
    max_batch_json_bytes: int = Field(default=8 * 1024**2, gt=0)
    max_other_body_bytes: int = Field(default=16 * 1024, gt=0)  # /feedback, /admin, the rest
    # all bodies held at once by one worker (past it: 503 + Retry-After); >= max_body_bytes
    max_inflight_body_bytes: int = Field(default=256 * 1024**2, gt=0)
    # the whole body must arrive within this time (else 408 and the connection is closed)
    body_read_timeout_s: float = Field(default=15.0, gt=0)
    # a picture's header may declare at most this many pixels (checked before decoding)
    max_image_pixels: int = Field(default=4096 * 4096, gt=0)
    # picture decodes / large JSON parses / batches at once per worker; past that a request
    # waits up to heavy_wait_s for a slot, then gets 503 with Retry-After
    max_concurrent_heavy: int = Field(default=2, gt=0)
    heavy_wait_s: float = Field(default=2.0, ge=0)
    max_batch_images: int = Field(default=50_000, gt=0)
    # concurrent single requests are coalesced into model calls of at most this many images
    micro_batch_max: int = Field(default=256, gt=0)
    # big batches run as model calls of this many images (256: ~2.5x the images per CPU-second
    # of 2048 for gap_v8 in bf16, the activations stay in cache)
    inference_chunk: int = Field(default=256, gt=0)
    torch_threads: int = Field(default=2, gt=0)
    # bfloat16 runs ~5x more images per CPU-second where oneDNN has bf16 kernels (AMX /
    # AVX512-BF16) and silently stays float32 elsewhere; float32 reproduces the gate exactly
    precision: Literal["float32", "bfloat16"] = "float32"
    # run a frozen TorchScript graph of the model (see loader.freeze_graph)
    freeze_graph: bool = True
    # auto: CUDA when the container got a GPU (docker run --gpus all), else CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri


def settings_from_mapping(values: dict[str, Any]) -> ServingSettings:
    return ServingSettings.model_validate(values)


def settings_from_environment() -> ServingSettings:
    """Settings handed over by ``mnist_mlops.serve``, else the composed ``conf/serve.yaml``."""
    if raw := os.environ.get(SETTINGS_ENV_VAR):
        return ServingSettings.model_validate(json.loads(raw))
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mnist_mlops.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="serve")
    return ServingSettings.model_validate(OmegaConf.to_container(cfg.serving, resolve=True))
