"""``python -m mnist_mlops.drift`` end to end: files written, MLflow run, marker, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.idx import write_idx_gz
from mnist_mlops.data.splits import arrays_to_table
from mnist_mlops.data.synthetic import synthetic_digits
from mnist_mlops.monitoring.check import run_drift_check
from mnist_mlops.monitoring.report import DriftExit
from mnist_mlops.tracking.mlflow_logger import log_inference_model


def _write_split(root: Path, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    ids = [f"{name}-{i:05d}" for i in range(len(labels))]
    pq.write_table(arrays_to_table(images, labels, ids), root / name / "part-00000.parquet")
    return root / name


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, baseline_payload, fresh_digits) -> Path:
    """A processed dir (baseline + val + clean and inverted windows) and a place for outputs."""
    root = tmp_path_factory.mktemp("drift_project")
    processed = root / "processed"
    processed.mkdir()
    (processed / "baseline.json").write_text(json.dumps(baseline_payload))
    images, labels = fresh_digits
    _write_split(processed, "val", images[:600], labels[:600])
    _write_split(processed, "test", images[600:1100], labels[600:1100])
    _write_split(processed, "inverted", 255 - images[1100:1400], labels[1100:1400])
    return root


def _overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"paths.root_dir={root}",
        f"paths.processed_dir={root}/processed",
        f"registry.tracking_uri=sqlite:///{root}/mlruns/mlflow.db",
        f"registry.artifact_location={root}/mlruns/artifacts",
        *extra,
    ]


def _compose(root: Path, *extra: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("drift", overrides=_overrides(root, *extra))


def test_clean_window_writes_reports_and_an_mlflow_run(project: Path) -> None:
    cfg = _compose(project, "model.enabled=false", "report.dir=${paths.root_dir}/clean")
    report = run_drift_check(cfg)
    assert report.status in ("ok", "warn") and report.exit_code in (DriftExit.OK, DriftExit.WARN)
    saved = json.loads((project / "clean" / "drift_report.json").read_text())
    assert saved["status"] == report.status and saved["window"]["n_images"] == 500
    assert {f["detector"] for f in saved["findings"]} >= {"pixel_psi", "feature_ks", "label_psi"}
    html = (project / "clean" / "drift_report.html").read_text()
    assert "data:image/png;base64," in html and "feature_ks/com_row" in html
    assert not Path(cfg.report.alert_marker).exists()
    run = mlflow.get_run(saved["window"]["mlflow_run_id"])
    assert run.data.tags["drift.status"] == report.status
    assert run.data.metrics["drift/window_size"] == 500
    assert (
        "drift/pixel_psi" in run.data.metrics
        and "drift/feature_ks/mean_intensity_p_adj" in run.data.metrics
    )
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == "mnist-drift"


def test_registered_model_drives_the_label_free_detectors(
    project: Path, tiny_model, fresh_digits
) -> None:
    cfg = _compose(
        project,
        "source.path=${paths.processed_dir}/inverted",
        "report.dir=${paths.root_dir}/model_run",
        "model.required=true",
    )
    from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment

    client = configure_mlflow(cfg.registry)
    with mlflow.start_run(experiment_id=ensure_experiment(cfg.registry)):
        # logged exactly as training logs every model (the served InferenceModel contract)
        uri = log_inference_model(tiny_model.net, torch.from_numpy(fresh_digits[0][:4]))
    version = mlflow.register_model(uri, cfg.registry.model_name)
    client.set_registered_model_alias(cfg.registry.model_name, "production", version.version)

    report = run_drift_check(cfg)
    assert report.model == {
        "uri": "models:/mnist-classifier@production",
        "version": str(version.version),
    }
    for detector in ("prediction_psi", "confidence_ks", "embedding_mmd", "pixel_psi"):
        assert report.detector_status(detector).value == "alert", detector
    marker = json.loads(Path(cfg.report.alert_marker).read_text())
    assert marker["status"] == "alert" and marker["report"].endswith("drift_report.json")
    # the val-split reference was cached for this model version
    assert list(Path(cfg.model.cache_dir).glob("model_reference_*.npz"))


def _cli(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(CONFIG_DIR).parent)}
    args = [sys.executable, "-m", "mnist_mlops.drift", *_overrides(root, *extra)]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=180)


def test_cli_exit_codes_alert_and_bad_input(project: Path) -> None:
    # IDX source: an inverted batch as a scanner might deliver it, unlabelled
    images, _ = synthetic_digits(300, seed=5)
    write_idx_gz(project / "batch" / "scan-images-idx3-ubyte.gz", 255 - images)
    alert = _cli(
        project,
        "source=idx",
        f"source.directory={project}/batch",
        "source.prefix=scan",
        "model.enabled=false",
        "mlflow.enabled=false",
        "report.dir=${paths.root_dir}/cli",
    )
    assert alert.returncode == DriftExit.ALERT, alert.stderr[-2000:]
    assert "drift status: alert" in alert.stdout

    missing = _cli(project, "source.path=/nonexistent/split", "mlflow.enabled=false")
    assert missing.returncode == 1
    assert "/nonexistent/split" in missing.stderr


def test_tiny_window_reports_not_enough_data_without_alerting(project: Path) -> None:
    cfg = _compose(
        project, "source.last_n=20", "mlflow.enabled=false", "report.dir=${paths.root_dir}/tiny"
    )
    report = run_drift_check(cfg)
    assert report.exit_code == DriftExit.NOT_ENOUGH_DATA
    saved = json.loads((project / "tiny" / "drift_report.json").read_text())
    assert saved["status"] == "not_enough_data" and "20 images" in saved["message"]


def test_prediction_log_source_last_n_and_time_window(project: Path, fresh_digits) -> None:
    from datetime import UTC, datetime, timedelta

    from mnist_mlops.predictions import PredictionLogWriter

    images, _ = fresh_digits
    log_dir = project / "served"
    writer = PredictionLogWriter(log_dir, flush_interval_s=0.05)
    day_ago = int((datetime.now(UTC) - timedelta(days=1)).timestamp() * 1e6)
    probs = np.full((300, 10), 0.1, np.float32)
    # yesterday: ordinary digits; in the last minutes: 120 inverted ones
    writer.log_predictions([f"{i:032x}" for i in range(300)], images[:300], probs, "1", day_ago)
    writer.log_predictions(
        [f"{i:032x}" for i in range(300, 420)], 255 - images[300:420], probs[:120], "2"
    )
    writer.close()
    common = (
        "source=prediction_log",
        f"source.log_dir={log_dir}",
        "model.enabled=false",
        "mlflow.enabled=false",
    )
    recent = run_drift_check(_compose(project, *common, "source.last_n=null", "source.since=1h"))
    assert recent.status == "alert" and recent.window["n_images"] == 120
    assert recent.window["served_model_versions"] == ["2"]
    older = run_drift_check(_compose(project, *common, "source.last_n=100", "source.since=null"))
    assert older.window["n_images"] == 100 and older.status == "alert"  # newest 100 = inverted
    stale = run_drift_check(
        _compose(project, *common, "source.last_n=null", "source.since=2026-01-01T00:00:00")
    )
    assert stale.window["n_images"] == 420
    with pytest.raises(ValueError, match="since='yesterday'"):
        run_drift_check(_compose(project, *common, "source.since=yesterday"))


def _train_gap_v8(images: np.ndarray, labels: np.ndarray, steps: int = 5) -> torch.nn.Module:
    """The default design (ends in a 1x1 conv, no Linear layer), trained for a few steps (its
    accuracy is beside the point here; its BN statistics and weights are real)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mnist_mlops.models.inference import InferenceModel

    torch.manual_seed(0)
    net = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "model" / "gap_v8.yaml").net)
    model = InferenceModel(net)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(model(x), y).backward()
        optimizer.step()
    return net.eval()


def test_cli_with_a_gap_v8_champion(project: Path, train_digits, fresh_digits) -> None:
    """`python -m mnist_mlops.drift` with the default design as champion: the model-based
    detectors run on its declared embedding (the 16-wide GAP output) instead of exiting 1."""
    root = project / "gap_v8"
    (root / "processed").mkdir(parents=True)
    for name in ("val", "test", "inverted"):
        (root / "processed" / name).symlink_to(project / "processed" / name)
    (root / "processed" / "baseline.json").symlink_to(project / "processed" / "baseline.json")
    cfg = _compose(root, "model.required=true")
    from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment

    client = configure_mlflow(cfg.registry)
    net = _train_gap_v8(train_digits[0][:256], train_digits[1][:256])
    with mlflow.start_run(experiment_id=ensure_experiment(cfg.registry)):
        uri = log_inference_model(net, torch.from_numpy(fresh_digits[0][:4]))
    version = mlflow.register_model(uri, cfg.registry.model_name)
    client.set_registered_model_alias(cfg.registry.model_name, "production", version.version)

    common = ("model.required=true", "mlflow.enabled=false")
    clean = _cli(root, *common, "report.dir=${paths.root_dir}/clean")
    assert clean.returncode in (DriftExit.OK, DriftExit.WARN), clean.stderr[-3000:]
    saved = json.loads((root / "clean" / "drift_report.json").read_text())
    assert saved["model"]["version"] == str(version.version)
    mmd = next(f for f in saved["findings"] if f["detector"] == "embedding_mmd")
    assert mmd["status"] in ("ok", "warn") and mmd["p_value"] is not None
    for detector in ("prediction_psi", "confidence_ks"):
        assert any(
            f["detector"] == detector and f["status"] != "skipped" for f in saved["findings"]
        )

    inverted = run_drift_check(
        _compose(root, *common, "source.path=${paths.processed_dir}/inverted")
    )
    assert inverted.exit_code == DriftExit.ALERT
    assert inverted.detector_status("embedding_mmd").value == "alert"


DESIGNS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


@pytest.mark.slow  # eight MLflow logs + drift checks: ~2 min on 2 shared cores
@pytest.mark.parametrize("design", DESIGNS)
def test_every_design_works_as_the_champion(project: Path, fresh_digits, design: str) -> None:
    """The drift check with each conf/model/*.yaml as the registered champion (untrained
    weights: the point is that the declared embedding reaches the detectors, for GAP heads,
    1x1-conv heads and Linear heads alike)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mnist_mlops.tracking.setup import configure_mlflow, ensure_experiment

    root = project / "designs"
    cfg = _compose(
        project,
        "model.required=true",
        "mlflow.enabled=false",
        f"registry.tracking_uri=sqlite:///{root}/mlflow.db",
        f"registry.artifact_location={root}/artifacts",
        f"report.dir={root}/{design}",
        f"model.cache_dir={root}/cache",
    )
    client = configure_mlflow(cfg.registry)
    torch.manual_seed(0)
    net = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{design}.yaml").net).eval()
    with mlflow.start_run(experiment_id=ensure_experiment(cfg.registry)):
        uri = log_inference_model(net, torch.from_numpy(fresh_digits[0][:4]))
    version = mlflow.register_model(uri, cfg.registry.model_name)
    client.set_registered_model_alias(cfg.registry.model_name, "production", version.version)

    report = run_drift_check(cfg)
    assert report.model["version"] == str(version.version)
    mmd = next(f for f in report.findings if f.detector == "embedding_mmd")
    assert mmd.p_value is not None and mmd.status.value != "skipped", design
