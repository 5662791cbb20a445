"""Each key of every entrypoint's config has one home: no group is copied into another.

A constructor that needs another group gets a reference to it (``logger.registry: ${registry}``,
``backend.spark: ${spark}``), never a copy; the MLflow params and the printed config keep the
reference instead of resolving it into a second copy of the group's keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_mlops.config import CONFIG_DIR, resolved_once

# every entrypoint's primary config, plus the train variants that pull in more groups
CONFIGS = [
    ("preprocess", []),
    ("generate", []),
    ("train", []),
    ("train", ["experiment=best_distilled", "backend=orca"]),
    ("train", ["backend=spark_ddp", "spark=cluster", "spark.master=spark://head:7077"]),
    ("train", ["hparams_search=optuna"]),
    ("eval", []),
    ("register", []),
    ("serve", []),
    ("drift", []),
    ("retrain", []),
]


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)  # paths.output_dir reads hydra:runtime.output_dir
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _subtrees(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping]]:
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield f"{path}{key}", value
            yield from _subtrees(value, f"{path}{key}.")


def copies(container: Mapping[str, Any]) -> list[list[str]]:
    """Groups of paths whose mappings (2+ keys) are identical: a group copied into another."""
    seen: dict[str, list[str]] = defaultdict(list)
    for path, node in _subtrees(container):
        if len(node) >= 2:
            seen[repr(sorted(node.items(), key=repr))].append(path)
    return [paths for paths in seen.values() if len(paths) > 1]


@pytest.mark.parametrize(("name", "overrides"), CONFIGS, ids=lambda x: str(x))
def test_no_group_is_copied_into_another(name: str, overrides: list[str]) -> None:
    cfg = _compose(name, overrides)
    # as written (what --cfg job prints) and as logged/printed resolved (references kept)
    assert copies(OmegaConf.to_container(cfg, resolve=False)) == []
    assert copies(resolved_once(cfg)) == []


def test_the_check_finds_the_copies_a_plain_resolve_makes() -> None:
    """The detector works: resolving the references naively copies registry and spark."""
    cfg = _compose("train", ["experiment=best_distilled", "backend=spark_ddp"])
    found = copies(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    assert any(
        {"registry", "logger.registry", "model.loss.teacher.registry"} <= set(paths)
        for paths in found
    )
    assert any({"spark", "backend.spark"} <= set(paths) for paths in found)


def test_mlflow_params_log_each_key_once() -> None:
    from mnist_mlops.tracking.mlflow_logger import flatten_config

    cfg = _compose("train", ["experiment=best_distilled", "backend=spark_ddp"])
    params = flatten_config(cfg)
    tracking_uri = str(cfg.registry.tracking_uri)
    assert [k for k, v in params.items() if v == tracking_uri] == ["registry.tracking_uri"]
    assert [k for k, v in params.items() if v == str(cfg.spark.master)] == ["spark.master"]
    assert params["logger.registry"] == "${registry}"
    assert params["model.loss.teacher.registry"] == "${registry}"
    assert params["backend.spark"] == "${spark}"
    assert not [k for k in params if k.startswith(("logger.registry.", "backend.spark."))]
    # the values the run trains with are still there, resolved
    assert params["model.loss.teacher.mean"] == str(cfg.data.mean)
    assert params["trainer.monitor"] == str(cfg.selection.metric)


def test_train_params_for_dvc_are_the_composed_config() -> None:
    """What the train stage's params file holds: every key of the trained groups, flat."""
    from mnist_mlops.config import PROJECT_ROOT
    from mnist_mlops.stage_params import stage_params

    keys = ["seed", "data", "model", "trainer", "selection", "backend", "spark"]
    base = stage_params("train", ["report_dir=reports/train"], keys)
    lines = base.splitlines()
    assert "trainer.limit_train_batches: null" in lines and "seed: 42" in lines
    assert "spark.master: local[*]" not in lines  # only a Spark backend composes spark
    assert str(PROJECT_ROOT) not in base  # locations stay symbolic: the same in every clone
    assert "data.processed_dir: ${paths.processed_dir}" in lines
    # keys no hand list had: a batch limit, an experiment, a location that is not a setting
    limited = stage_params("train", ["trainer.limit_train_batches=2"], keys)
    assert "trainer.limit_train_batches: 2" in limited.splitlines()
    report = stage_params("train", ["experiment=report"], keys)
    assert "trainer.precision: 32-true" in report.splitlines()
    assert stage_params("train", ["paths.log_dir=/elsewhere"], keys) == base
    spark = stage_params("train", ["backend=spark_ddp"], keys).splitlines()
    assert "backend.spark: ${spark}" in spark and "spark.master: local[*]" in spark
    with pytest.raises(ValueError, match="registri"):
        stage_params("train", [], ["registri"])
