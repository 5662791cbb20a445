"""``python -m mnist_mlops.drift``: is new data still like the data the model was trained on?

Compares a window (``source=parquet|idx|prediction_log``) with the training baseline and
exits with a code a scheduler can act on (:class:`~mnist_mlops.exit_codes.ExitCode`):
0 no drift, 10 warn, 20 drift alert, 30 not enough data; 1 means the check itself failed.

    python -m mnist_mlops.drift source=prediction_log source.last_n=2000
    python -m mnist_mlops.drift source=idx source.directory=/data/new_batch source.prefix=batch
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.exit_codes import ExitCode, run_entry


def check(cfg: DictConfig) -> ExitCode:
    """Run one drift check, print its one-line verdict, and return its exit code."""
    from mnist_mlops.monitoring.check import run_drift_check  # torch: after argv is read

    report = run_drift_check(cfg)
    code = ExitCode(int(report.exit_code))
    print(f"drift status: {report.status} (exit {int(code)}): {report.message}")
    return code


@hydra.main(config_path=CONFIG_DIR, config_name="drift", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry("drift", lambda: check(cfg))


if __name__ == "__main__":
    main()
