"""A Hydra sweeper driving an Optuna study: ``mnist_mlops.train -m hparams_search=optuna``.

Why our own: hydra-optuna-sweeper 1.3.x pins optuna<3, its SQLite storage breaks on SQLAlchemy 2
and it cannot prune. This one uses Optuna's ask/tell API (Optuna 5), so:

- the sampler and pruner are ``_target_`` configs (seeded TPE by default);
- with an RDB ``storage`` the study persists, and re-running the same command resumes it until
  ``n_trials`` trials have finished (trials left RUNNING by a killed sweep are marked FAIL);
- each trial gets its trial number (``trial_number_key``) so the job's pruning callback
  (``mnist_mlops.training.callbacks.pruning``, named by ``_target_`` in
  ``conf/hparams_search/optuna.yaml``; this plugin imports nothing from training) can report
  per-epoch values and be pruned; a pruned job is told PRUNED;
- with MLflow configured (``registry`` + ``logger``), one parent run per study, and every trial's
  run is nested under it (``parent_run_key``); the parent gets the best value and params.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

log = logging.getLogger(__name__)
# ``selection.mode`` (max/min) is the project's one spelling of the direction; Optuna's is accepted
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PARENT_RUN_ATTR = "mlflow_parent_run_id"


def distribution_from_override(override: Override) -> BaseDistribution:
    """Optuna distribution for a Hydra sweep override (choice / range / interval, ``tag(log)``)."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = [x for x in override.sweep_iterator(transformer=Transformer.encode)]
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        if value.shuffle:
            raise ValueError(f"{override.input_line}: shuffle is not supported")
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(
        f"{override.input_line}: define a search space with choice(), range() or interval()"
    )


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: optuna.samplers.BaseSampler | None,
        pruner: optuna.pruners.BasePruner | None,
        params: dict[str, str] | None,
        trial_number_key: str | None,
        parent_run_key: str | None,
    ) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"n_trials and n_jobs must be >= 1, got {n_trials} and {n_jobs}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        self.study_name = study_name
        self.storage = storage
        self.direction = DIRECTIONS[direction]
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler = sampler
        self.pruner = pruner
        self.params = dict(params or {})
        self.trial_number_key = trial_number_key
        self.parent_run_key = parent_run_key
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = config.hydra.sweep.dir

    # --- search space -----------------------------------------------------------------------
    def _search_space(
        self, arguments: Sequence[str]
    ) -> tuple[dict[str, BaseDistribution], list[str]]:
        parser = OverridesParser.create()
        space = {
            key: distribution_from_override(parser.parse_override(f"{key}={value}"))
            for key, value in self.params.items()
        }
        fixed: list[str] = []
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution_from_override(override)
            else:
                fixed.append(override.input_line)
        if not space:
            raise ValueError(
                "empty search space: set hydra.sweeper.params or pass choice(...) etc."
            )
        return space, fixed

    # --- MLflow parent run ------------------------------------------------------------------
    def _parent_run(self, study: optuna.Study) -> tuple[Any, str] | None:
        """The sweep's MLflow parent run (created once per study, reopened on resume)."""
        assert self.config is not None
        if not self.parent_run_key or OmegaConf.select(self.config, "logger") is None:
            return None
        from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment

        client = configure_mlflow(self.config.registry)
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id is None:
            run = client.create_run(
                ensure_experiment(self.config.registry),
                run_name=f"sweep:{self.study_name}",
                tags={"sweep": "optuna", "optuna.study_name": self.study_name},
            )
            run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN_ATTR, run_id)
            sweep_params = {
                "sweep.n_trials": self.n_trials,
                "sweep.direction": self.direction,
                "sweep.sampler": type(self.sampler).__name__,
                "sweep.pruner": type(self.pruner).__name__,
                "sweep.storage": str(self.storage),
            }
            for key, value in sweep_params.items():
                client.log_param(run_id, key, value)
        else:
            client.update_run(run_id, status="RUNNING")
        return client, run_id

    # --- the sweep --------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> optuna.Study:
        assert self.config is not None and self.launcher is not None
        space, fixed = self._search_space(arguments)
        if self.storage and str(self.storage).startswith("sqlite:///"):
            Path(str(self.storage).removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.warning(
                "trial %d was left RUNNING by an interrupted sweep; marking it FAIL", stale.number
            )
            study._storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
        done = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        log.info(
            "study %r: %d of %d trials finished; storage=%s",
            self.study_name,
            done,
            self.n_trials,
            self.storage,
        )
        parent = self._parent_run(study)
        self.job_idx = len(study.trials)
        status = "FAILED"
        try:
            while done < self.n_trials:
                batch = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
                overrides = [self._trial_overrides(trial, fixed, parent) for trial in batch]
                self.validate_batch_is_legal(overrides)
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(batch)
                for trial, ret in zip(batch, returns, strict=True):
                    self._tell(study, trial, ret)
                done += len(batch)
            status = "FINISHED"
        finally:
            self._finish(study, parent, status)
        return study

    def _trial_overrides(
        self, trial: optuna.Trial, fixed: list[str], parent: tuple[Any, str] | None
    ) -> tuple[str, ...]:
        overrides = [*fixed, *(f"{key}={value}" for key, value in trial.params.items())]
        if self.trial_number_key:
            overrides.append(f"++{self.trial_number_key}={trial.number}")
        if parent is not None:
            overrides.append(f"++{self.parent_run_key}={parent[1]}")
        return tuple(overrides)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> None:
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
            if value is None:
                raise ValueError("the task returned None: set optimized_metric for the sweep")
            study.tell(trial, float(value))
            log.info("trial %d: %s -> %.5f", trial.number, trial.params, float(value))
        elif isinstance(ret._return_value, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned: %s", trial.number, ret._return_value)
        else:
            study.tell(trial, state=TrialState.FAIL)
            log.error("trial %d failed: %r", trial.number, ret._return_value)

    def _finish(self, study: optuna.Study, parent: tuple[Any, str] | None, status: str) -> None:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {"name": "optuna", "n_trials": len(study.trials)}
        if completed:
            results["best_value"] = study.best_value
            results["best_params"] = study.best_params
            results["best_trial"] = study.best_trial.number
            log.info(
                "best trial %d: %s = %.5f",
                study.best_trial.number,
                study.best_params,
                study.best_value,
            )
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(
            OmegaConf.create(results), Path(self.sweep_dir) / "optimization_results.yaml"
        )
        if parent is None:
            return
        client, run_id = parent
        if completed:
            client.log_metric(run_id, "best_value", study.best_value)
            client.set_tag(run_id, "best_params", str(study.best_params))
            client.set_tag(run_id, "best_trial", str(study.best_trial.number))
        client.log_artifact(run_id, str(Path(self.sweep_dir) / "optimization_results.yaml"))
        client.set_terminated(run_id, status=status)
