"""``python -m mnist_mlops.serve``: the serving app under uvicorn, configured by conf/serve.yaml.

    python -m mnist_mlops.serve                                  # 127.0.0.1:8000, embedded store
    python -m mnist_mlops.serve registry=server server.port=8080 server.workers=2
    MNIST_ADMIN_TOKEN=... python -m mnist_mlops.serve            # enables POST /admin/reload

The resolved settings reach every worker as JSON in ``MNIST_SERVING_SETTINGS``.
"""

from __future__ import annotations

import json
import os
import tempfile

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning on the two cores
# the event loop and the inference thread need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.exit_codes import bad_input_exits


def serve(cfg: DictConfig) -> None:
    """Validate the serving settings, hand them to the workers, and run uvicorn until stopped."""
    import uvicorn  # the server stack loads after Hydra has read argv (--help stays quick)

    from mnist_mlops.serving.settings import SETTINGS_ENV_VAR, settings_from_mapping

    settings = settings_from_mapping(OmegaConf.to_container(cfg.serving, resolve=True))
    os.environ[SETTINGS_ENV_VAR] = json.dumps(settings.model_dump())
    workers = int(cfg.server.workers)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics must add up all workers, not show whichever one answered
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-metrics-")
    uvicorn.run(
        "mnist_mlops.serving.app:app",
        host=str(cfg.server.host),
        port=int(cfg.server.port),
        workers=workers,
        log_level=str(cfg.server.log_level),
        access_log=bool(cfg.server.access_log),
        # bounded connections per worker (past it: 503) and idle keep-alive; body sizes and
        # body-read time are enforced by the app itself (serving/limits.py)
        limit_concurrency=cfg.server.get("limit_concurrency"),
        timeout_keep_alive=int(cfg.server.get("timeout_keep_alive", 5)),
        loop="uvloop",
        http="httptools",
    )


@hydra.main(config_path=CONFIG_DIR, config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with bad_input_exits("serve"):  # a bad setting: named on one line, exit 1
        serve(cfg)


if __name__ == "__main__":
    main()
