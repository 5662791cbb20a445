"""Registration and the champion/challenger gate against real MLflow stores."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from model_standins import client_for, registry_config
from registry_helpers import register_config

from mnist_mlops.data.splits import MnistArrays, load_split
from mnist_mlops.register import register
from mnist_mlops.tracking.registry import alias_version, promote_if_better, register_run_model


def test_first_registration_promotes_best_run_and_rerun_is_idempotent(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports")
    first = register(cfg)
    client = client_for(store)
    assert first.promoted and first.champion_version is None
    assert first.challenger_run_id == standin_store.good.run_id  # the best val/acc_best run
    assert first.challenger_scores["test"] == pytest.approx(standin_store.good.test_acc)
    assert alias_version(client, "mnist-classifier", "production") == first.challenger_version
    assert alias_version(client, "mnist-classifier", "staging") == first.challenger_version
    tags = client.get_model_version("mnist-classifier", first.challenger_version).tags
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.challenger_acc.test"]) == pytest.approx(
        standin_store.good.test_acc, abs=1e-6
    )
    report = json.loads((tmp_path / "reports" / "promotion.json").read_text())
    assert report["promoted"] and report["challenger_version"] == first.challenger_version

    again = register(cfg)
    assert again.challenger_version == first.challenger_version
    assert not again.promoted and "already the champion" in again.reason
    assert len(client.search_model_versions("name='mnist-classifier'")) == 1


def test_gate_refuses_a_worse_challenger(store, standin_store, synthetic_processed_dir, tmp_path):
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports")
    champion = register(cfg)
    decision = register(cfg, run_id=standin_store.bad.run_id)
    client = client_for(store)
    assert not decision.promoted
    assert decision.champion_version == champion.challenger_version
    assert decision.challenger_scores["test"] < decision.champion_scores["test"]
    assert "does not beat" in decision.reason
    assert alias_version(client, "mnist-classifier", "production") == champion.challenger_version
    assert alias_version(client, "mnist-classifier", "staging") == decision.challenger_version
    tags = client.get_model_version("mnist-classifier", decision.challenger_version).tags
    assert tags["promotion.decision"] == "rejected"
    assert float(tags["promotion.champion_acc.test"]) > float(tags["promotion.challenger_acc.test"])


def test_better_challenger_replaces_champion_and_margin_counts(
    store, standin_store, synthetic_processed_dir
):
    client = client_for(store)
    reg = registry_config(store)
    test_split = {"test": load_split(synthetic_processed_dir / "test")}
    worse = register_run_model(client, reg.model_name, standin_store.bad.run_id)
    better = register_run_model(client, reg.model_name, standin_store.good.run_id)
    assert promote_if_better(client, reg, worse, test_split).promoted  # no champion yet

    gap = standin_store.good.test_acc - standin_store.bad.test_acc
    strict = registry_config(store)
    strict.promotion_margin = gap + 0.01  # better, but not by enough
    refused = promote_if_better(client, strict, better, test_split)
    assert not refused.promoted
    assert alias_version(client, reg.model_name, "production") == worse

    accepted = promote_if_better(client, reg, better, test_split)
    assert accepted.promoted and accepted.champion_version == worse
    assert alias_version(client, reg.model_name, "production") == better


def test_every_eval_set_must_be_won(store, standin_store, synthetic_processed_dir):
    """Retraining adds recent labelled traffic as a second eval set; losing there blocks."""
    client = client_for(store)
    reg = registry_config(store)
    test = load_split(synthetic_processed_dir / "test")
    champion = register_run_model(client, reg.model_name, standin_store.bad.run_id)
    challenger = register_run_model(client, reg.model_name, standin_store.good.run_id)
    promote_if_better(client, reg, champion, {"test": test})
    # "Recent" data on which the labels disagree with the good model: it cannot win there.
    good_model = mlflow.pytorch.load_model(f"models:/{reg.model_name}/{challenger}")
    with torch.inference_mode():
        predicted = good_model(torch.from_numpy(test.images).float().unsqueeze(1) / 255).argmax(1)
    adversarial = MnistArrays(test.images, (predicted.numpy() + 1) % 10, test.image_ids)
    decision = promote_if_better(client, reg, challenger, {"test": test, "recent": adversarial})
    assert not decision.promoted and "recent" in decision.reason
    assert decision.challenger_scores["recent"] == 0.0
    assert alias_version(client, reg.model_name, "production") == champion


def test_failed_evaluation_leaves_the_champion_untouched(
    store, standin_store, synthetic_processed_dir
):
    client = client_for(store)
    reg = registry_config(store)
    champion = register_run_model(client, reg.model_name, standin_store.bad.run_id)
    challenger = register_run_model(client, reg.model_name, standin_store.good.run_id)
    promote_if_better(client, reg, champion, {"test": load_split(synthetic_processed_dir / "test")})
    broken = MnistArrays(np.zeros((4, 27, 27), np.uint8), np.zeros(4, np.int64), np.arange(4))
    with pytest.raises(RuntimeError):
        promote_if_better(client, reg, challenger, {"test": broken})
    assert alias_version(client, reg.model_name, "production") == champion
    tags = client.get_model_version(reg.model_name, challenger).tags
    assert "promotion.decision" not in tags


def test_runs_without_a_loadable_model_are_skipped(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    client = client_for(store)
    experiment = client.get_experiment_by_name("mnist")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="no-model"):
        mlflow.log_metric("val/acc_best", 1.0)  # best metric, but nothing to serve
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports")
    assert register(cfg).challenger_run_id == standin_store.good.run_id


def test_unfinished_or_unknown_run_id_is_refused(store, synthetic_processed_dir, tmp_path):
    client = client_for(store)
    experiment = client.get_experiment_by_name("mnist")
    running = client.create_run(experiment.experiment_id)  # never terminated: RUNNING
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports")
    with pytest.raises(ValueError, match="RUNNING"):
        register(cfg, run_id=running.info.run_id)
    assert client.search_model_versions("name='mnist-classifier'") == []


def test_a_model_that_cannot_take_a_batch_is_not_servable(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    """MLflow's default 'pt2' export traced on one image only accepts batches of one: such a
    run must lose to a servable one even with a better validation metric."""
    from model_standins import train_standin

    client = client_for(store)
    experiment = client.get_experiment_by_name("mnist")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="batch-of-one"):
        mlflow.log_metric("val/acc_best", 1.0)
        mlflow.pytorch.log_model(
            train_standin(synthetic_processed_dir, steps=1),
            name="model",
            input_example=np.zeros((1, 1, 28, 28), np.float32),
            serialization_format="pt2",
            pip_requirements=[],
        )
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports")
    assert register(cfg).challenger_run_id == standin_store.good.run_id
