"""Structured config of the sweeper, registered as ``hydra/sweeper=mnist_optuna``.

No ``from __future__ import annotations`` here: Hydra loads plugin modules outside
``sys.modules`` and dataclasses then cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    study_name: str = "sweep"
    # an RDB URL (sqlite:///...) makes the study persistent: re-running the sweep resumes it
    storage: Any = None
    # maximize/minimize, or max/min (conf/hparams_search/optuna.yaml passes selection.mode)
    direction: str = "maximize"
    # total finished trials the study should reach (trials from earlier runs count)
    n_trials: int = 20
    # trials launched per batch (the launcher may run a batch in parallel)
    n_jobs: int = 1
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 42}
    )
    pruner: Any = field(
        default_factory=lambda: {
            "_target_": "optuna.pruners.MedianPruner",
            "n_startup_trials": 2,
            "n_warmup_steps": 1,
        }
    )
    # search space: Hydra sweep syntax per key, e.g. "tag(log, interval(1e-3, 1e-1))",
    # "choice(64, 128)", "range(1, 5)"; sweep overrides on the command line add to it
    params: Any = field(default_factory=dict)
    # config keys the sweeper sets in every trial (null to not set them)
    trial_number_key: Any = "optuna_trial.number"
    parent_run_key: Any = "logger.parent_run_id"


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="mnist_optuna",
    node=OptunaSweeperConf,
    provider="mnist_optuna_sweeper",
)
