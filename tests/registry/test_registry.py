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
from mnist_mlops.tracking.registry import (
    GATE_RULE,
    PRODUCTION_FROM_TAG,
    PRODUCTION_UNTIL_TAG,
    alias_version,
    production_history,
    promote_if_better,
    register_run_model,
)

# the stand-ins are small MLPs (~0.88 on the synthetic gate split); the shipped floor (0.95) is
# tested on its own below, the other tests lower it so a stand-in may become the first champion
FLOOR = "registry.gate.min_accuracy=0.5"


def test_first_registration_promotes_best_run_and_rerun_is_idempotent(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports", FLOOR)
    first = register(cfg)
    client = client_for(store)
    assert first.promoted and first.champion_version is None
    assert first.challenger_run_id == standin_store.good.run_id  # best val/acc_selected
    gate_acc = first.challenger_scores["gate"]
    assert gate_acc > 0.5 and "clears min_accuracy=0.5" in first.reason
    assert alias_version(client, "mnist-classifier", "production") == first.challenger_version
    assert alias_version(client, "mnist-classifier", "staging") == first.challenger_version
    tags = client.get_model_version("mnist-classifier", first.challenger_version).tags
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.challenger_acc.gate"]) == pytest.approx(gate_acc, abs=1e-6)
    assert tags["promotion.rule"] == GATE_RULE and tags["promotion.min_accuracy"] == "0.5"
    assert PRODUCTION_FROM_TAG in tags
    report = json.loads((tmp_path / "reports" / "promotion.json").read_text())
    assert report["promoted"] and report["challenger_version"] == first.challenger_version
    assert report["rule"] == GATE_RULE and report["alpha"] == 0.05

    again = register(cfg)
    assert again.challenger_version == first.challenger_version
    assert not again.promoted and "already the champion" in again.reason
    assert len(client.search_model_versions("name='mnist-classifier'")) == 1
    # re-gating the champion leaves its promotion record alone
    tags = client.get_model_version("mnist-classifier", first.challenger_version).tags
    assert tags["promotion.decision"] == "promoted"


def test_first_champion_must_clear_the_shipped_accuracy_floor(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports")
    assert cfg.registry.gate.min_accuracy == 0.95
    decision = register(cfg)
    assert decision.challenger_scores["gate"] < 0.95  # the MLP stand-in is not good enough
    assert not decision.promoted and "below the floor" in decision.reason
    assert alias_version(client_for(store), "mnist-classifier", "production") is None


def test_gate_refuses_a_worse_challenger_and_records_the_test(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports", FLOOR)
    champion = register(cfg)
    decision = register(cfg, run_id=standin_store.bad.run_id)
    client = client_for(store)
    assert not decision.promoted
    assert decision.champion_version == champion.challenger_version
    assert decision.challenger_scores["gate"] < decision.champion_scores["gate"]
    assert "no significant improvement" in decision.reason
    comp = decision.comparisons["gate"]
    assert comp["n"] == 200 and comp["c"] > comp["b"] and comp["p_better"] > 0.05
    # accuracies follow from the discordant counts: acc_new - acc_old = (b - c) / n
    assert comp["gain"] == pytest.approx((comp["b"] - comp["c"]) / comp["n"])
    assert alias_version(client, "mnist-classifier", "production") == champion.challenger_version
    assert alias_version(client, "mnist-classifier", "staging") == decision.challenger_version
    tags = client.get_model_version("mnist-classifier", decision.challenger_version).tags
    assert tags["promotion.decision"] == "rejected"
    assert float(tags["promotion.champion_acc.gate"]) > float(tags["promotion.challenger_acc.gate"])
    assert int(tags["promotion.b.gate"]) == comp["b"] and int(tags["promotion.c.gate"]) == comp["c"]
    assert float(tags["promotion.p_better.gate"]) == pytest.approx(comp["p_better"], rel=1e-5)
    report = json.loads((tmp_path / "reports" / "promotion.json").read_text())
    assert report["comparisons"]["gate"]["b"] == comp["b"] and report["min_effect"] == 0.001


def test_better_challenger_replaces_champion_and_min_effect_counts(
    store, standin_store, synthetic_processed_dir
):
    client = client_for(store)
    reg = registry_config(store)
    gate = {"gate": load_split(synthetic_processed_dir / "gate")}
    worse = register_run_model(client, reg.model_name, standin_store.bad.run_id)
    better = register_run_model(client, reg.model_name, standin_store.good.run_id)
    assert promote_if_better(client, reg, worse, gate).promoted  # no champion, floor 0 here

    strict = registry_config(store)
    strict.gate.min_effect = 0.9  # significantly better, but not by 90 points
    refused = promote_if_better(client, strict, better, gate)
    assert not refused.promoted and "below min_effect=0.9" in refused.reason
    assert refused.comparisons["gate"]["p_better"] <= 0.05
    assert alias_version(client, reg.model_name, "production") == worse

    accepted = promote_if_better(client, reg, better, gate)
    assert accepted.promoted and accepted.champion_version == worse
    assert "significantly better" in accepted.reason
    assert alias_version(client, reg.model_name, "production") == better
    # the alias history: both held production, the newest first; the old one has an end
    assert production_history(client, reg.model_name) == [better, worse]
    assert PRODUCTION_UNTIL_TAG in client.get_model_version(reg.model_name, worse).tags


def test_secondary_set_must_not_regress(store, standin_store, synthetic_processed_dir):
    """Retraining adds recent trusted feedback as a second eval set; a regression there blocks."""
    client = client_for(store)
    reg = registry_config(store)
    gate = load_split(synthetic_processed_dir / "gate")
    champion = register_run_model(client, reg.model_name, standin_store.bad.run_id)
    challenger = register_run_model(client, reg.model_name, standin_store.good.run_id)
    promote_if_better(client, reg, champion, {"gate": gate})
    # "Recent" data on which the labels disagree with the good model: it cannot win there.
    good_model = mlflow.pytorch.load_model(f"models:/{reg.model_name}/{challenger}")
    with torch.inference_mode():
        predicted = good_model(torch.from_numpy(gate.images).float().unsqueeze(1) / 255).argmax(1)
    adversarial = MnistArrays(gate.images, (predicted.numpy() + 1) % 10, gate.image_ids)
    decision = promote_if_better(
        client, reg, challenger, {"gate": gate, "recent_feedback": adversarial}
    )
    assert not decision.promoted and "significantly worse on recent_feedback" in decision.reason
    assert decision.challenger_scores["recent_feedback"] == 0.0
    assert decision.comparisons["gate"]["p_better"] <= 0.05  # it did pass the primary set
    assert alias_version(client, reg.model_name, "production") == champion


def test_failed_evaluation_leaves_the_champion_untouched(
    store, standin_store, synthetic_processed_dir
):
    client = client_for(store)
    reg = registry_config(store)
    champion = register_run_model(client, reg.model_name, standin_store.bad.run_id)
    challenger = register_run_model(client, reg.model_name, standin_store.good.run_id)
    promote_if_better(client, reg, champion, {"gate": load_split(synthetic_processed_dir / "gate")})
    broken = MnistArrays(np.zeros((4, 27, 27), np.uint8), np.zeros(4, np.int64), np.arange(4))
    with pytest.raises(RuntimeError):
        promote_if_better(client, reg, challenger, {"gate": broken})
    assert alias_version(client, reg.model_name, "production") == champion
    tags = client.get_model_version(reg.model_name, challenger).tags
    assert "promotion.decision" not in tags


def _debug_run(client, synthetic_processed_dir) -> str:
    """A run as `train debug=default` logs it: tagged debug=true, best metric, loadable model."""
    from model_standins import train_standin

    experiment = client.get_experiment_by_name("mnist")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="smoke") as run:
        mlflow.set_tag("debug", "true")
        mlflow.log_metric("val/acc_selected", 1.0)
        mlflow.pytorch.log_model(
            train_standin(synthetic_processed_dir, steps=60),
            name="model",
            input_example=np.zeros((2, 1, 28, 28), np.float32),
            serialization_format="pickle",
            pip_requirements=[],
        )
    return run.info.run_id


def test_debug_runs_are_never_selected_registered_or_promoted(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    client = client_for(store)
    debug_run = _debug_run(client, synthetic_processed_dir)
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports", FLOOR)
    assert register(cfg).challenger_run_id == standin_store.good.run_id  # skipped, not chosen
    with pytest.raises(ValueError, match=f"run {debug_run} is a debug run"):
        register(cfg, run_id=debug_run)
    with pytest.raises(ValueError, match="debug runs are never registered"):
        register_run_model(client, "mnist-classifier", debug_run)
    versions = client.search_model_versions("name='mnist-classifier'")
    assert [v.run_id for v in versions] == [standin_store.good.run_id]
    # even a version registered behind the registry's back is refused by the gate
    sneaked = mlflow.register_model(f"runs:/{debug_run}/model", "mnist-classifier").version
    gate = {"gate": load_split(synthetic_processed_dir / "gate")}
    with pytest.raises(ValueError, match="debug run"):
        promote_if_better(client, registry_config(store), sneaked, gate)
    assert alias_version(client, "mnist-classifier", "staging") != str(sneaked)


def test_register_cli_names_a_refused_run(store, synthetic_processed_dir, tmp_path):
    import subprocess
    import sys

    client = client_for(store)
    debug_run = _debug_run(client, synthetic_processed_dir)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_mlops.register",
            f"run_id={debug_run}",
            f"registry.tracking_uri=sqlite:///{store}/mlflow.db",
            f"registry.artifact_location={store}/artifacts",
            f"data.processed_dir={synthetic_processed_dir}",
            f"paths.reports_dir={tmp_path}/reports",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert f"register: run {debug_run} is a debug run" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "reports" / "promotion.json").exists()


def test_runs_without_a_loadable_model_are_skipped(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    client = client_for(store)
    experiment = client.get_experiment_by_name("mnist")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="no-model"):
        mlflow.log_metric("val/acc_selected", 1.0)  # best metric, but nothing to serve
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports", FLOOR)
    assert register(cfg).challenger_run_id == standin_store.good.run_id


def test_selection_mode_min_ranks_by_lowest_loss(
    store, standin_store, synthetic_processed_dir, tmp_path
):
    """`selection=val_loss`: the registry ranks by the re-validated val/loss, lowest first."""
    cfg = register_config(
        store, synthetic_processed_dir, tmp_path / "reports", FLOOR, "selection=val_loss"
    )
    assert (cfg.selection.selected, cfg.selection.mode) == ("val/loss_selected", "min")
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
        mlflow.log_metric("val/acc_selected", 1.0)
        mlflow.pytorch.log_model(
            train_standin(synthetic_processed_dir, steps=1),
            name="model",
            input_example=np.zeros((1, 1, 28, 28), np.float32),
            serialization_format="pt2",
            pip_requirements=[],
        )
    cfg = register_config(store, synthetic_processed_dir, tmp_path / "reports", FLOOR)
    assert register(cfg).challenger_run_id == standin_store.good.run_id
