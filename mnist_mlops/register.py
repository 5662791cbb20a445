"""``python -m mnist_mlops.register``: put the best finished run in front of the promotion gate.

    python -m mnist_mlops.register                      # embedded SQLite store
    python -m mnist_mlops.register registry=server      # an MLflow tracking server
    python -m mnist_mlops.register run_id=<run>         # a specific run instead of the best
    python -m mnist_mlops.register run_file=reports/train/run.json   # the run DVC trained

Re-running is safe: a run is registered once, and an unchanged champion is not re-promoted.
Debug runs (tag ``debug=true``) are skipped when selecting and refused when named.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.exit_codes import bad_input_exits

if TYPE_CHECKING:  # MLflow loads inside register(): --help answers without it
    from mnist_mlops.tracking.registry import PromotionDecision

_log = logging.getLogger(__name__)


def _run_id_from_file(path: str | None) -> str | None:
    if not path:
        return None
    run_id = json.loads(Path(path).read_text()).get("run_id")
    if not run_id:
        raise ValueError(f"run_file={path} names no run_id")
    return str(run_id)


def register(cfg: DictConfig, run_id: str | None = None) -> PromotionDecision:
    """Register the chosen run's model, stage it, gate it, and write the decision report."""
    from mnist_mlops.data.splits import load_split
    from mnist_mlops.models.inference import MODEL_ARTIFACT
    from mnist_mlops.tracking.registry import (
        load_logged_model,
        promote_if_better,
        refuse_debug_run,
        register_run_model,
        select_best_run,
        write_report,
    )
    from mnist_mlops.tracking.setup import configure_mlflow

    client = configure_mlflow(cfg.registry)
    run_id = run_id or cfg.get("run_id") or _run_id_from_file(cfg.get("run_file"))
    if run_id:
        # An explicitly named run must still be finished and have a model that serves.
        run = client.get_run(run_id)
        if run.info.status != "FINISHED":
            raise ValueError(f"run_id={run_id} is {run.info.status}, not FINISHED")
        refuse_debug_run(run)
        load_logged_model(f"runs:/{run_id}/{MODEL_ARTIFACT}")
    else:
        selection = cfg.selection
        run, _ = select_best_run(client, cfg.registry, str(selection.selected), str(selection.mode))
        run_id = run.info.run_id
    version = register_run_model(client, str(cfg.registry.model_name), run_id)
    _log.info("run %s is %s version %s", run_id, cfg.registry.model_name, version)
    eval_sets = {str(cfg.eval_split): load_split(cfg.eval_split_dir)}
    decision = promote_if_better(client, cfg.registry, version, eval_sets)
    write_report(decision, cfg.report_path)
    return decision


@hydra.main(config_path=CONFIG_DIR, config_name="register", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with bad_input_exits("register"):  # a refused or missing run: say why, no traceback
        decision = register(cfg)
    verdict = "PROMOTED to production" if decision.promoted else "not promoted"
    print(
        f"{decision.model_name} v{decision.challenger_version}: {verdict}: {decision.reason}"
        f" (report: {cfg.report_path})"
    )


if __name__ == "__main__":
    main()
