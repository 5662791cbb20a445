"""Results without MLflow: the ``logger=json`` run record, ``scripts/gpu_results.py`` and the
page ``reproduce_results.py --records`` builds from the records."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mnist_mlops.config import PROJECT_ROOT
from mnist_mlops.models.convnet import count_parameters
from mnist_mlops.train import train

SCRIPTS = PROJECT_ROOT / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _json_logger(cfg: DictConfig, path: Path) -> None:
    with open_dict(cfg):
        cfg.logger = {
            "_target_": "mnist_mlops.tracking.file_logger.JsonFileLogger",
            "path": str(path),
            "run_name": "${model.name}",
            "tags": {"results_id": "t"},
        }


def test_json_logger_records_what_the_results_page_needs(
    cfg_train: DictConfig, tmp_path: Path
) -> None:
    record_path = tmp_path / "run.json"
    _json_logger(cfg_train, record_path)
    with open_dict(cfg_train):
        cfg_train.trainer.epochs = 2
        cfg_train.trainer.recalibrate_bn = True
    metrics = train(cfg_train)

    record = json.loads(record_path.read_text())
    assert record["status"] == "FINISHED" and record["run_id"] == metrics["run_id"]
    net = instantiate(cfg_train.model).net
    assert record["params_total"] == count_parameters(net)["total"]
    assert record["model"] == cfg_train.model.name and record["seed"] == cfg_train.seed
    assert len(record["history"]) == 2 and all("epoch_time_s" in h for h in record["history"])
    for key in ("test/acc", "test/loss", "val/acc_selected", "val/loss_selected"):
        assert record["metrics"][key] == pytest.approx(metrics[key])
    assert record["best_epoch"] == metrics["best_epoch"]
    assert record["device"] == "cpu" and "cores" in record["hardware"]
    assert record["tags"] == {"results_id": "t"}
    # locations stay as written (records are committed under docs/): no machine's paths
    assert record["config"]["paths"]["root_dir"] == "${project_root:}"
    assert record["config"]["paths"]["data_dir"] == "${paths.root_dir}/data"

    row = _script("reproduce_results").summarise_record(record)
    best = record["best_epoch"]
    assert row["best_epoch"] == best + 1 and row["epochs"] == 2
    assert row["val_acc_best"] == record["history"][best]["val/acc"]
    assert row["val_acc_selected"] == record["metrics"]["val/acc_selected"]
    assert row["epoch_time_s"] == statistics.mean(h["epoch_time_s"] for h in record["history"])
    assert row["status"] == "FINISHED"


def test_a_crashed_run_is_recorded_failed(cfg_train: DictConfig, tmp_path: Path) -> None:
    record_path = tmp_path / "run.json"
    _json_logger(cfg_train, record_path)
    with open_dict(cfg_train):
        cfg_train.trainer.monitor = "val/no_such_metric"
    with pytest.raises(KeyError, match="no_such_metric"):
        train(cfg_train)
    record = json.loads(record_path.read_text())
    assert record["status"] == "FAILED" and record["metrics"] == {}


def _record(experiment: str, seed: int, test_acc: float, best_epoch: int = 2) -> dict:
    history = [
        {"val/acc": 0.99 + i / 1000, "val/loss": 0.05 - i / 100, "epoch_time_s": 2.0 + i}
        for i in range(3)
    ]
    return {
        "run_id": f"{experiment}{seed}0123456789",
        "status": "FINISHED",
        "model": "gap_v8",
        "seed": seed,
        "config_tags": [experiment],
        "params_total": 13808,
        "history": history,
        "best_epoch": best_epoch,
        "metrics": {"test/acc": test_acc, "test/loss": 0.02, "val/acc_selected": 0.9931},
        "hardware": "NVIDIA H200 (CUDA 13.0)",
        "device": "cuda",
        "precision": "bf16-mixed",
    }


def test_records_render_a_page_with_intervals_and_no_distilled_numbers(tmp_path: Path) -> None:
    records = [_record("report", 42, 0.9941, best_epoch=1)]
    records += [_record("best", s, a) for s, a in ((1, 0.9958), (2, 0.9951), (3, 0.9949))]
    unfinished = {**_record("best", 4, 0.5), "status": "KILLED"}
    gathered = {
        "results_id": "gpu-t",
        "test_size": 10_000,
        "parallel_runs": 5,
        "threads_per_run": 1,
        "wall_s": 321.0,
        "git_commit": "abcdef1234567890",
        "machine": {"gpu": "NVIDIA H200", "cpu_count": 16, "python": "3.12", "torch": "2.11"},
        "records": [*records, unfinished],
    }
    source = tmp_path / "records.json"
    source.write_text(json.dumps(gathered))
    page, rows = tmp_path / "results.md", tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPTS / "reproduce_results.py")]
    subprocess.run(
        [*command, f"--records={source}", f"--output={page}", f"--save-rows={rows}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    text = page.read_text()
    script = _script("reproduce_results")
    summary = script.seed_summary([0.9958, 0.9951, 0.9949])
    assert f"t-interval over seeds {100 * summary.low:.2f}-{100 * summary.high:.2f}" in text
    assert "Mean test accuracy over 3 seed(s)" in text  # the KILLED run is left out
    assert "`best4012`" not in text and "`best1012`" in text
    assert "5 processes sharing one NVIDIA H200" in text and "321.0 s" in text
    assert "Not re-run under the current protocol" in text and "Welch" not in text
    assert "selected epochs seed 1 3/3, seed 2 3/3, seed 3 3/3" in text
    # the saved rows re-render to the same page (what docs/results.md is checked against)
    again = tmp_path / "again.md"
    subprocess.run(
        [*command, f"--snapshot={rows}", f"--output={again}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert again.read_text() == text


@pytest.mark.slow
def test_gpu_results_trains_every_run_without_mlflow(
    synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    """The driver end to end on CPU, with MLflow, Optuna and Spark made unimportable."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('mlflow', 'optuna', 'pyspark', 'fastapi'):\n"
        "    sys.modules[name] = None\n"
    )
    out = tmp_path / "out"
    tiny = [
        "trainer.epochs=2",
        "trainer.limit_train_batches=2",
        "data.batch_size=64",
        "data.eval_batch_size=100",
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "gpu_results.py"),
            f"--out={out}",
            "--device=cpu",
            f"--processed-dir={synthetic_processed_dir}",
            "--models",
            "lenet_v1",
            "--seeds",
            "1",
            *(f"--override={o}" for o in tiny),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(blocker)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    gathered = json.loads((out / "results_records.json").read_text())
    assert gathered["parallel_runs"] == 2 and (out / "run_logs.tar.gz").is_file()
    by_name = {r["job"]["name"]: r for r in gathered["records"]}
    assert set(by_name) == {"report-lenet_v1", "best-gap_v8-seed1"}
    for record in by_name.values():
        assert record["status"] == "FINISHED" and len(record["history"]) == 2
        assert {"test/acc", "val/acc_selected"} <= set(record["metrics"])
    assert by_name["best-gap_v8-seed1"]["seed"] == 1
    assert by_name["best-gap_v8-seed1"]["config"]["trainer"]["recalibrate_bn"] is True


def test_time_to_accuracy_note_reads_the_benchmark(tmp_path: Path) -> None:
    curve = [[6.0, 0.97], [8.5, 0.98], [11.0, 0.9941]]
    bench = tmp_path / "tta.json"
    bench.write_text(
        json.dumps(
            {
                "time_to_accuracy": {
                    "device": "NVIDIA H200",
                    "target": 0.994,
                    "seconds_to_target": 11.0,
                    "epochs": 3,
                    "curve": curve,
                }
            }
        )
    )
    rows = [{"experiment": "best", "epoch_time_s": t} for t in (6.0, 7.0)]
    note = _script("reproduce_results").time_to_accuracy_note(bench, rows)
    assert "reached 99.40% test accuracy after 3 epochs, 11.0 s" in note
    assert "about 2.5 s per epoch after the first, against 6.5 s/epoch" in note
