"""scripts/reproduce_results.py: the statistics it states, the page it renders, and the whole
reproduction end to end on tiny data (teachers, distilled students, table)."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from scipy import stats

from mnist_mlops.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "reproduce_results.py"


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _row(experiment: str, seed: int, test_acc: float, **extra) -> dict:
    return {
        "model": "gap_v8",
        "experiment": experiment,
        "seed": str(seed),
        "params": 13808,
        "epochs": 15,
        "val_acc_best": 0.993,
        "val_acc_selected": extra.get("val_acc_selected"),
        "test_acc": test_acc,
        "test_loss": 0.015,
        "final_val_acc": None,
        "best_epoch": 15,
        "epoch_time_s": 7.5,
        "hardware": "cpu model",
        "device": "cpu",
        "run_id": f"{experiment[:4]}{seed}abcdef",
        "status": "FINISHED",
        "git_commit": "?",
    }


def test_seed_interval_and_standard_error_are_the_textbook_ones() -> None:
    script = _script()
    accs = [0.9962, 0.9953, 0.9946]
    summary = script.seed_summary(accs)
    low, high = stats.t.interval(0.95, len(accs) - 1, loc=summary.mean, scale=stats.sem(accs))
    assert (summary.low, summary.high) == (pytest.approx(low), pytest.approx(high))
    assert summary.sd == pytest.approx(stats.tstd(accs))
    assert script.binomial_se(0.995, 10_000) == pytest.approx(math.sqrt(0.995 * 0.005 / 1e4))
    other = [0.9949, 0.9951, 0.9950]
    expected = stats.ttest_ind(accs, other, equal_var=False).pvalue
    assert script.welch_p(accs, other) == pytest.approx(expected)
    assert script.welch_p(accs, [0.99]) is None  # one seed: no test
    assert script.seed_summary([0.99]).low is None and script.seed_summary([]) is None


@pytest.mark.parametrize(
    ("accs", "verdict"),
    [
        ([0.9962, 0.9953, 0.9946], "neither that it is met nor that it is missed"),  # contains
        ([0.9970, 0.9971, 0.9972], "interval [99.69, 99.73]: met"),
        ([0.9930, 0.9931, 0.9932], "interval [99.29, 99.33]: not met"),
    ],
)
def test_target_wording_follows_the_interval(accs: list[float], verdict: str) -> None:
    script = _script()
    text = script.target_wording(script.seed_summary(accs), 0.9955)
    assert text.endswith(verdict), text


def test_the_page_states_intervals_and_the_protocol(tmp_path: Path) -> None:
    rows = [_row("best", s, a, val_acc_selected=0.994) for s, a in ((1, 0.9962), (2, 0.9953))]
    rows += [_row("best_distilled", s, 0.995 + s / 1e4) for s in (1, 2, 3)]
    snapshot = tmp_path / "rows.json"
    snapshot.write_text(
        json.dumps({"results_id": "t", "test_size": 10_000, "rows": rows, "banner": ["OLD"]})
    )
    output = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), f"--snapshot={snapshot}", f"--output={output}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = output.read_text()
    assert page.startswith("# Results\n\nOLD\n")
    best = stats.t.interval(0.95, 1, loc=(0.9962 + 0.9953) / 2, scale=stats.sem([0.9962, 0.9953]))
    assert f"t-interval over seeds {100 * best[0]:.2f}-{100 * best[1]:.2f}" in page
    assert "Mean test accuracy over 2 seed(s)" in page and "Mean test accuracy over 3" in page
    assert "binomial standard error of one test accuracy on 10,000 images" in page
    assert "Welch t-test" in page and "made on test feedback" in page
    assert "| 99.40 |" in page  # the selected model's re-validated val acc is a column


def test_docs_results_is_what_the_script_renders(tmp_path: Path) -> None:
    """docs/results.md is generated, not hand-edited: re-rendering its saved rows reproduces it."""
    output = tmp_path / "results.md"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"--snapshot={PROJECT_ROOT / 'docs' / 'results_rows.json'}",
            f"--output={output}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert output.read_text() == (PROJECT_ROOT / "docs" / "results.md").read_text()


@pytest.mark.slow
def test_best_then_distilled_from_their_ensemble_then_the_table(
    synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        f"data.processed_dir={synthetic_processed_dir}",
        f"paths.mlflow_dir={tmp_path / 'mlruns'}",
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "data.eval_batch_size=100",
        "backend.num_threads=1",
    ]
    output = tmp_path / "results.md"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "reproduce_results.py"),
        "--only=best",
        "--results-id=tiny",
        f"--output={output}",
        f"--sweep-root={tmp_path / 'sweeps'}",
        f"--save-rows={tmp_path / 'rows.json'}",
        *(f"--override={o}" for o in overrides),
    ]
    # mlflow.set_tracking_uri() in earlier in-process tests exports MLFLOW_TRACKING_URI, which
    # would win over paths.mlflow_dir in the child; this run must use its own store
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns'}/mlflow.db")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.results_id = 'tiny'"
    )
    teachers = sorted(r.info.run_id for r in runs if "distilled" not in r.data.params["tags"])
    students = [r for r in runs if "distilled" in r.data.params["tags"]]
    assert len(teachers) == 3 and len(students) == 3
    assert {r.data.params["seed"] for r in students} == {"1", "2", "3"}
    for student in students:  # every student learned from the ensemble of all three teachers
        assert student.data.params["model.loss._target_"].endswith("DistillationLoss")
        uris = ast.literal_eval(student.data.params["model.loss.teacher.model_uri"])
        assert sorted(uri.split("/")[1] for uri in uris) == teachers
        assert student.data.params["trainer.recalibrate_bn"] == "True"

    table = output.read_text()
    assert "`experiment=best`, per seed" in table and "`experiment=best_distilled`" in table
    assert table.count("Mean test accuracy over 3 seed(s)") == 2
    assert table.count("t-interval over seeds") == 2
    # every run logged its kept model's re-validated score, and the saved rows carry it
    saved = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert len(saved) == 6 and all(r["val_acc_selected"] is not None for r in saved)
    for run in runs:
        assert f"`{run.info.run_id[:8]}`" in table
