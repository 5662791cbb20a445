"""``python -m mnist_mlops.drift``: is new data still like the data the model was trained on?

Compares a window (``source=parquet|idx|prediction_log``) with the training baseline and
exits with a code a scheduler can act on (see :class:`~mnist_mlops.monitoring.report.DriftExit`):
0 no drift, 10 warn, 20 drift alert, 30 not enough data; 1 means the check itself failed.

    python -m mnist_mlops.drift source=prediction_log source.last_n=2000
    python -m mnist_mlops.drift source=idx source.directory=/data/new_batch source.prefix=batch
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.monitoring.check import run_drift_check


@hydra.main(config_path=CONFIG_DIR, config_name="drift", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report = run_drift_check(cfg)
    print(f"drift status: {report.status} (exit {int(report.exit_code)}): {report.message}")
    sys.exit(int(report.exit_code))


if __name__ == "__main__":
    main()
