"""``python -m mnist_mlops.retrain``: retrain when drift, a schedule or an operator says so.

    python -m mnist_mlops.retrain                        # only if drift is detected
    python -m mnist_mlops.retrain trigger=force          # now
    python -m mnist_mlops.retrain trigger=schedule schedule.every_h=24
    python -m mnist_mlops.retrain watch.enabled=true watch.interval_s=3600   # interval mode

Exit codes: 0 done (promoted, rejected or nothing to do), 1 failed, 75 another retrain holds
the lock. Every outcome, failures included, is written to ``report_path``
(reports/retrain/last_retrain.json). Watch mode keeps going after a failed or refused cycle.
"""

from __future__ import annotations

import logging
import sys
import time

import hydra
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.monitoring.lock import RetrainLocked
from mnist_mlops.monitoring.retraining import install_termination_handler, retrain

log = logging.getLogger(__name__)
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later


def run_once(cfg: DictConfig) -> int:
    try:
        outcome = retrain(cfg)
    except RetrainLocked as exc:
        print(f"retrain refused: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the CLI says where
        log.exception("retrain failed")
        print(f"retrain failed: {exc} (outcome in {cfg.report_path})", file=sys.stderr)
        return 1
    version = f" v{outcome.version}" if outcome.version else ""
    print(f"retrain {outcome.status}{version}: {outcome.reason}")
    return 0


def watch(cfg: DictConfig) -> int:
    cycles = 0
    while cfg.watch.max_cycles is None or cycles < int(cfg.watch.max_cycles):
        cycles += 1
        try:
            run_once(cfg)
        except Exception:  # noqa: BLE001 - one failed cycle must not stop the watcher
            log.exception("retrain cycle %d failed; next try in %ss", cycles, cfg.watch.interval_s)
        if cfg.watch.max_cycles is None or cycles < int(cfg.watch.max_cycles):
            time.sleep(float(cfg.watch.interval_s))
    return 0


@hydra.main(config_path=CONFIG_DIR, config_name="retrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    install_termination_handler()
    sys.exit(watch(cfg) if cfg.watch.enabled else run_once(cfg))


if __name__ == "__main__":
    main()
