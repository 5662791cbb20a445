"""``python -m mnist_mlops.retrain``: retrain when drift, a schedule or an operator says so.

    python -m mnist_mlops.retrain                        # only if drift is detected
    python -m mnist_mlops.retrain trigger=force          # now
    python -m mnist_mlops.retrain trigger=schedule schedule.every_h=24
    python -m mnist_mlops.retrain watch.enabled=true watch.interval_s=3600   # interval mode

Exit codes (:class:`~mnist_mlops.exit_codes.ExitCode`): 0 done (promoted, rejected or nothing
to do), 1 failed, 75 another retrain holds the lock, 143 stopped by SIGTERM.
Every outcome, failures included, is written to ``report_path``
(reports/retrain/last_retrain.json). Watch mode keeps going after a failed or refused cycle.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.exit_codes import ExitCode, bad_input_exits, exit_with

if TYPE_CHECKING:
    from mnist_mlops.retraining.settings import RetrainSettings

log = logging.getLogger(__name__)
EXIT_LOCKED = ExitCode.LOCKED  # EX_TEMPFAIL: try again later


def run_once(settings: RetrainSettings) -> ExitCode:
    """One retrain cycle; every failure is recorded in the report and becomes ``FAILED``."""
    from mnist_mlops.retraining.cycle import retrain  # torch/MLflow: after argv is read
    from mnist_mlops.retraining.lock import RetrainLocked

    try:
        outcome = retrain(settings)
    except RetrainLocked as exc:
        print(f"retrain refused: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the CLI says where
        log.exception("retrain failed")
        print(f"retrain failed: {exc} (outcome in {settings.report_path})", file=sys.stderr)
        return ExitCode.FAILED
    version = f" v{outcome.version}" if outcome.version else ""
    print(f"retrain {outcome.status}{version}: {outcome.reason}")
    return ExitCode.OK


def watch(settings: RetrainSettings) -> ExitCode:
    """Interval mode: a cycle every ``watch.interval_s``; a failed cycle does not stop it."""
    every = settings.watch
    cycles = 0
    while every.max_cycles is None or cycles < every.max_cycles:
        cycles += 1
        try:
            run_once(settings)
        except Exception:  # noqa: BLE001 - one failed cycle must not stop the watcher
            log.exception("retrain cycle %d failed; next try in %ss", cycles, every.interval_s)
        if every.max_cycles is None or cycles < every.max_cycles:
            time.sleep(every.interval_s)
    return ExitCode.OK


@hydra.main(config_path=CONFIG_DIR, config_name="retrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mnist_mlops.retraining.cycle import install_termination_handler
    from mnist_mlops.retraining.settings import RetrainSettings

    install_termination_handler()  # SIGTERM -> SystemExit(128 + 15): cleanup runs
    with bad_input_exits("retrain"):  # a bad setting; a cycle's errors are recorded
        settings = RetrainSettings.from_config(cfg)  # the one read of the raw config
        code = watch(settings) if settings.watch.enabled else run_once(settings)
    exit_with(code)


if __name__ == "__main__":
    main()
