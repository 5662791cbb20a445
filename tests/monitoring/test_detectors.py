"""Each detector on synthetic shifts: no shift -> no alert; a strong shift -> alert."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from support.shifts import IMAGE_SHIFTS, label_subset_indices

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.monitoring.check import build_detectors, evaluate_window
from mnist_mlops.monitoring.detectors import Status
from mnist_mlops.monitoring.reference import Baseline, BaselineError
from mnist_mlops.monitoring.report import DriftExit
from mnist_mlops.monitoring.sources import Window

WINDOW = 500


@pytest.fixture(scope="module")
def drift_cfg():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("drift")


@pytest.fixture(scope="module")
def run(drift_cfg, baseline, probe_and_reference):
    detectors = build_detectors(drift_cfg)
    thresholds = OmegaConf.to_container(drift_cfg.thresholds)
    probe, reference = probe_and_reference

    def _run(images: np.ndarray, labels: np.ndarray | None = None, with_model: bool = True):
        window = Window.from_arrays(images, labels, "test")
        return evaluate_window(
            window,
            baseline,
            detectors,
            thresholds,
            int(drift_cfg.min_window_size),
            model_reference=reference if with_model else None,
            probe=probe if with_model else None,
        )

    return _run


def test_no_shift_no_alert_from_any_detector(run, fresh_digits) -> None:
    images, labels = fresh_digits
    for start in (0, WINDOW, 2 * WINDOW):
        report = run(images[start : start + WINDOW], labels[start : start + WINDOW])
        alerts = [f.name for f in report.findings if f.status is Status.ALERT]
        assert alerts == [], alerts
        assert report.exit_code in (DriftExit.OK, DriftExit.WARN)
        # every configured detector ran (nothing silently skipped when labels + model exist)
        assert not [f.name for f in report.findings if f.status is Status.SKIPPED]


# Which detector must catch which shift (what it measures, not just "something fired").
EXPECTED = {
    "rotation_45": ["prediction_psi", "confidence_ks", "embedding_mmd"],
    "gaussian_noise": ["pixel_psi", "feature_ks", "confidence_ks", "embedding_mmd"],
    "inversion": [
        "pixel_psi",
        "feature_ks",
        "feature_psi",
        "prediction_psi",
        "confidence_ks",
        "embedding_mmd",
    ],
    "blur": ["pixel_psi", "feature_ks"],
    "dilation_2x2": ["feature_ks", "feature_psi"],
    "translation": ["feature_ks", "feature_psi", "confidence_ks"],
}


@pytest.mark.parametrize("shift", sorted(EXPECTED))
def test_strong_shift_alerts_the_right_detectors(run, fresh_digits, shift: str) -> None:
    images, labels = fresh_digits
    shifted = IMAGE_SHIFTS[shift](images[:WINDOW], np.random.default_rng(0))
    report = run(shifted, labels[:WINDOW])
    assert report.status == "alert" and report.exit_code == DriftExit.ALERT
    for detector in EXPECTED[shift]:
        assert report.detector_status(detector) is Status.ALERT, (detector, report.message)
    # the label distribution did not change, so label PSI must stay quiet
    assert report.detector_status("label_psi") is not Status.ALERT


def test_label_shift_alerts_label_and_prediction_psi(run, fresh_digits) -> None:
    images, labels = fresh_digits
    keep = label_subset_indices(labels)[:WINDOW]
    report = run(images[keep], labels[keep])
    assert report.detector_status("label_psi") is Status.ALERT
    assert report.detector_status("prediction_psi") is Status.ALERT


def test_without_labels_or_model_the_detectors_say_why_they_skipped(run, fresh_digits) -> None:
    images, _ = fresh_digits
    report = run(images[:WINDOW], None, with_model=False)
    skipped = {f.detector: f.reason for f in report.findings if f.status is Status.SKIPPED}
    assert set(skipped) == {"label_psi", "prediction_psi", "confidence_ks", "embedding_mmd"}
    assert "labelled" in skipped["label_psi"] and "model" in skipped["prediction_psi"]
    assert report.status == "ok"
    # input-only detectors still catch an inversion without a model
    inverted = run(255 - images[:WINDOW], None, with_model=False)
    assert inverted.status == "alert"


@pytest.mark.parametrize("n", [0, 1, 49])
def test_tiny_window_is_not_enough_data(run, fresh_digits, n: int) -> None:
    images, labels = fresh_digits
    report = run(images[:n], labels[:n])
    assert report.status == "not_enough_data"
    assert report.exit_code == DriftExit.NOT_ENOUGH_DATA
    assert "not enough data" in report.message and f"{n} images" in report.message
    assert report.findings == []


def test_baseline_contract_violations_are_clear(baseline_payload) -> None:
    with pytest.raises(BaselineError, match=r"schema_version 99 is not supported .*\[1, 2\]"):
        Baseline.from_dict({**baseline_payload, "schema_version": 99})
    broken = {k: v for k, v in baseline_payload.items() if k != "pixel_histogram"}
    with pytest.raises(BaselineError, match="pixel_histogram"):
        Baseline.from_dict(broken)


def test_reference_sample_is_stored_at_full_precision(train_digits, baseline_payload) -> None:
    """Schema 2: the window's features and the reference sample are the same numbers for the
    same image (schema 1 rounded only the reference, which biased KS on discrete features)."""
    from mnist_mlops.data.features import image_features

    features = image_features(train_digits[0])
    baseline = Baseline.from_dict(baseline_payload)
    assert baseline_payload["schema_version"] == 2 and baseline.sample_decimals is None
    for name, sample in baseline.feature_samples.items():
        assert np.isin(sample, features[name].astype(np.float64)).all(), name
    ink = baseline.feature_samples["ink_fraction"]
    assert not np.array_equal(ink, np.round(ink, 4))  # k/784 is not a 4-decimal number


def test_schema_1_baseline_is_read_with_windows_on_its_rounded_grid(
    baseline_payload, train_digits
) -> None:
    """An old baseline (samples rounded to 4 decimals) stays usable: window features are
    rounded the same way, so the same images give a KS distance of exactly 0."""
    from mnist_mlops.monitoring.detectors import DriftContext, FeatureKS

    old = json.loads(json.dumps(baseline_payload))
    old["schema_version"] = 1
    for stats_ in old["features"].values():
        stats_["reference_sample"] = np.round(stats_["reference_sample"], 4).tolist()
    baseline = Baseline.from_dict(old)
    assert baseline.sample_decimals == 4
    # the fixture's reference sample is all 3,000 training images: the same images as a window
    window = Window(images=train_digits[0], labels=train_digits[1], description="same images")
    ctx = DriftContext(window=window, baseline=baseline)
    findings = FeatureKS(features=["ink_fraction", "com_row"]).evaluate(ctx)
    assert [f.statistic for f in findings] == [0.0, 0.0]
    np.testing.assert_array_equal(
        ctx.features["ink_fraction"], np.round(ctx.features["ink_fraction"], 4)
    )


def test_probe_rejects_a_model_without_the_declared_interface(tiny_model) -> None:
    """MLflow's pt2 format loads as a bare GraphModule: no declared embedding, a clear error
    at load time (nothing guesses a layer from the graph)."""
    import torch

    from mnist_mlops.models.inference import InferenceModel
    from mnist_mlops.monitoring.model_probe import ModelContractError, ModelProbe

    example = torch.zeros(8, 1, 28, 28)
    batch = torch.export.Dim("batch")
    graph = torch.export.export(tiny_model, (example,), dynamic_shapes=({0: batch},)).module()
    with pytest.raises(ModelContractError, match="runs:/x/model loaded as a GraphModule"):
        ModelProbe(graph, "runs:/x/model", "1")
    plain = InferenceModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    with pytest.raises(ModelContractError, match="Sequential does not declare features"):
        ModelProbe(plain, "runs:/y/model", "1")


def test_probe_embeddings_are_the_declared_features(tiny_model, fresh_digits) -> None:
    import torch

    from mnist_mlops.monitoring.model_probe import ModelProbe

    images = fresh_digits[0][:64]
    probs, embeddings = ModelProbe(tiny_model, "eager", "1", batch_size=20).predict(images)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        expected = tiny_model.net.body((x - 0.1307) / 0.3081).numpy()
        forward = tiny_model(x).exp().numpy()
    assert embeddings.shape == (64, 64)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    np.testing.assert_allclose(probs, forward, atol=1e-6)
