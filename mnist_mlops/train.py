"""The one training entrypoint: every experiment and every sweep trial is a config override.

    python -m mnist_mlops.train                                  # gap_v8, report-like defaults
    python -m mnist_mlops.train model=lenet_v1 experiment=report
    python -m mnist_mlops.train experiment=best seed=1 trainer.device=cuda
    python -m mnist_mlops.train debug=default                    # seconds-long smoke run
    python -m mnist_mlops.train -m hparams_search=optuna         # Optuna sweep (own plugin)

``train(cfg)`` runs in-process (tests, sweeps) and returns the final metrics plus ``run_id``;
``main()`` returns ``cfg.optimized_metric`` for sweepers. torch and MLflow are imported inside
the functions, so ``--help`` and ``--cfg`` answer before they load.
"""

from __future__ import annotations

import csv
import logging
import signal
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_mlops.config import CONFIG_DIR, resolved_once
from mnist_mlops.exit_codes import bad_input_exits, exit_with
from mnist_mlops.utils.atomic import atomic_open, atomic_write_json

if TYPE_CHECKING:
    from mnist_mlops.training.callbacks import Callback
    from mnist_mlops.training.datamodule import MnistDataModule

log = logging.getLogger(__name__)


def build_datamodule(data_cfg: DictConfig, seed: int) -> MnistDataModule:
    """The data module from the ``data`` group's loader keys."""
    from mnist_mlops.training.datamodule import MnistDataModule

    augmentation = instantiate(data_cfg.augmentation) if data_cfg.get("augmentation") else None
    if data_cfg.get("streaming"):  # opt-in: train split streamed in row groups (streaming.py)
        from mnist_mlops.training.streaming import StreamingDataModule

        return StreamingDataModule(
            processed_dir=data_cfg.processed_dir,
            batch_size=data_cfg.batch_size,
            eval_batch_size=data_cfg.eval_batch_size,
            augmentation=augmentation,
            extra_train_dirs=list(data_cfg.get("extra_train_dirs") or []),
            mean=data_cfg.mean,
            std=data_cfg.std,
            seed=seed,
            buffer_rows=int(data_cfg.get("stream_buffer_rows", 20_000)),
        )
    return MnistDataModule(
        processed_dir=data_cfg.processed_dir,
        batch_size=data_cfg.batch_size,
        eval_batch_size=data_cfg.eval_batch_size,
        num_workers=data_cfg.num_workers,
        augmentation=augmentation,
        keep_on_device=data_cfg.keep_on_device,
        extra_train_dirs=list(data_cfg.get("extra_train_dirs") or []),
        mean=data_cfg.mean,
        std=data_cfg.std,
        seed=seed,
    )


def _instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[Callback]:
    if not callbacks_cfg:
        return []
    return [instantiate(c) for c in callbacks_cfg.values() if c is not None]


def _check_model_config(cfg: DictConfig) -> None:
    if not isinstance(cfg.get("model"), DictConfig) or "_target_" not in cfg.model:
        raise ValueError("config has no model; choose one with model=<name> (see conf/model/)")


def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit, test once on the best-val weights, log everything; return the metrics and run id.

    ``callbacks`` are added to the configured ones (benchmarks, notebooks).
    """
    from mnist_mlops.training.trainer import seed_everything

    _check_model_config(cfg)
    seed_everything(int(cfg.seed))
    module = instantiate(cfg.model)
    datamodule = build_datamodule(cfg.data, int(cfg.seed))
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    hooks = [*_instantiate_callbacks(cfg.get("callbacks")), *callbacks]
    if logger is not None:  # first, so an epoch is recorded even when a pruner then stops the run
        hooks.insert(0, logger)
    trainer = instantiate(cfg.trainer, backend=instantiate(cfg.backend), callbacks=hooks)
    with logger.run_context(cfg) if logger is not None else nullcontext():
        trainer.fit(module, datamodule)
        test_metrics = trainer.test(module, datamodule)
        metrics: dict[str, Any] = {**trainer.history[-1], **test_metrics}
        metrics["best_epoch"] = trainer.best_epoch
        metrics["run_id"] = logger.run_id if logger is not None else None
        metrics["model_uri"] = logger.model_uri if logger is not None else None
        if cfg.get("report_dir"):
            write_reports(Path(cfg.report_dir), metrics, trainer.history)
    log.info(
        "test/acc=%.4f test/loss=%.4f run_id=%s",
        metrics["test/acc"],
        metrics["test/loss"],
        metrics["run_id"],
    )
    return metrics


def write_reports(
    report_dir: Path, metrics: dict[str, Any], history: list[dict[str, float]]
) -> None:
    """Files for DVC: final metrics (JSON), the learning curve (CSV) and which run made them."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    atomic_write_json(report_dir / "metrics.json", numeric, sort_keys=True)
    run = {"run_id": metrics["run_id"], "model_uri": metrics["model_uri"]}
    atomic_write_json(report_dir / "run.json", run)
    columns = ["epoch", *sorted({k for h in history for k in h})]
    with atomic_open(report_dir / "learning_curve.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for epoch, row in enumerate(history, start=1):
            writer.writerow({"epoch": epoch, **row})


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """The value a sweeper optimises; a wrong ``optimized_metric`` fails loudly."""
    if name not in metrics or metrics[name] is None:
        available = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        raise KeyError(f"optimized_metric {name!r} was not produced; available: {available}")
    return float(metrics[name])


_signalled: list[int] = []  # signals received by this process (a multirun runs many jobs)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """`kill`/a scheduler ending the job: unwind so the MLflow run is closed as KILLED."""
    from mnist_mlops.training.callbacks import TrainingInterrupted  # loaded by main() already

    _signalled.append(signum)
    raise TrainingInterrupted(f"stopped by signal {signum}")


def _single_run() -> bool:
    """True unless Hydra runs this job as one of a multirun (whose sweeper handles failures)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from mnist_mlops.training.callbacks import TrainingInterrupted

    if _signalled:  # Hydra's launcher goes on to the next job of a sweep; a kill means stop
        raise TrainingInterrupted(f"not started: this process got signal {_signalled[0]}")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    log.info("config:\n%s", OmegaConf.to_yaml(resolved_once(cfg)))  # each group once
    # a bad value: one line and exit 1 (a sweep's trials fail through Hydra instead)
    try:
        with bad_input_exits("train") if _single_run() else nullcontext():
            metrics = train(cfg)
    except TrainingInterrupted:
        if not _signalled:  # a pruned sweep trial: the sweeper records it
            raise
        # killed: the run is closed as KILLED; end the process (and any sweep) with 128 + N
        print(f"train: stopped by signal {_signalled[0]}", file=sys.stderr)
        exit_with(128 + _signalled[0])
    name = cfg.get("optimized_metric")
    return metric_value(metrics, name) if name else None


if __name__ == "__main__":
    main()
