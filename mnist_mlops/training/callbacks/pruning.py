"""Trial-side half of the Optuna sweep: report the per-epoch selection metric, stop pruned trials.

Runs inside the training job as an ordinary trainer callback: ``conf/hparams_search/optuna.yaml``
names it by ``_target_``, so the sweeper plugin in ``hydra_plugins/`` never imports training.
It reaches the trial through the study storage (so it also works when a launcher runs trials
in other processes) and judges with the same pruner the sweeper uses.
"""

from __future__ import annotations

from typing import Any

import optuna

from mnist_mlops.training.callbacks.base import Callback, TrainingInterrupted


class PrunedTrial(TrainingInterrupted, optuna.TrialPruned):
    """Stops the run (marked KILLED in MLflow) and tells the sweeper the trial was pruned."""


class OptunaPruning(Callback):
    """Report ``monitor`` every epoch; raise :class:`PrunedTrial` when the pruner says so.

    ``monitor`` is ``selection.metric`` (conf/hparams_search/optuna.yaml), the metric the trainer
    selects epochs by; the study's direction is ``selection.mode``, so the pruner and the sweep
    agree on what "better" means. ``trial_number`` is null outside a sweep (a no-op then).
    """

    def __init__(
        self,
        storage: str | None,
        study_name: str,
        trial_number: int | None,
        pruner: optuna.pruners.BasePruner | None = None,
        monitor: str = "val/acc",
    ) -> None:
        self.monitor = monitor
        self.trial: optuna.Trial | None = None
        if trial_number is None:
            return
        if storage is None:
            raise ValueError("pruning needs a persistent study storage (hydra.sweeper.storage)")
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
        rdb = optuna.storages.get_storage(storage)
        study_id = rdb.get_study_id_from_name(study_name)
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, int(trial_number))
        self.trial = optuna.Trial(study, trial_id)

    def on_validation_epoch_end(self, trainer: Any, module: Any, metrics: dict[str, float]) -> None:
        if self.trial is None:
            return
        self.trial.report(metrics[self.monitor], step=trainer.current_epoch)
        if self.trial.should_prune():
            raise PrunedTrial(
                f"trial {self.trial.number} pruned at epoch {trainer.current_epoch + 1}: "
                f"{self.monitor}={metrics[self.monitor]:.4f}"
            )
