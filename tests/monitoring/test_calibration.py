"""Drift statistics calibrated on a true null (real MNIST, slow).

The reference is what preprocessing stores: ``compute_baseline`` on training images (here the
60,000 raw training digits), with its seeded 5,000-image reference sample. Each drift-free
window is 500 training images drawn at random from the 55,000 OUTSIDE that sample: the same
population, no shared images. A calibrated test rejects at p < 0.05 on about 5% of such
windows. Checked per feature for ``feature_ks`` (the default KS features, through the
detector itself, so the baseline's numeric grid is the one production uses) on 400 windows,
and the run-level family (Holm across the features) is reported too.
"""

from __future__ import annotations

import numpy as np
import pytest

from mnist_mlops.data.baseline import compute_baseline
from mnist_mlops.data.features import image_features
from mnist_mlops.monitoring.check import classify
from mnist_mlops.monitoring.detectors import DriftContext, FeatureKS, Status
from mnist_mlops.monitoring.reference import Baseline
from mnist_mlops.monitoring.sources import Window

KS_FEATURES = ["mean_intensity", "ink_fraction", "com_row", "com_col"]  # conf/drift.yaml
N_WINDOWS = 400
WINDOW = 500


@pytest.mark.slow
def test_feature_ks_rejects_about_5_percent_of_drift_free_windows(real_raw_dir) -> None:
    from mnist_mlops.data.idx import load_raw_mnist

    train = load_raw_mnist(real_raw_dir)["train"]
    payload = compute_baseline(train.images, train.labels, content_hash="raw-train", seed=0)
    baseline = Baseline.from_dict(payload)
    # the reference sample's images, recovered the way compute_baseline drew them
    in_reference = np.zeros(len(train.labels), bool)
    in_reference[np.random.default_rng(0).choice(len(train.labels), 5000, replace=False)] = True
    outside = np.flatnonzero(~in_reference)
    assert len(outside) == 55_000
    reference_rows = image_features(train.images[in_reference])["com_row"].astype(np.float64)
    np.testing.assert_array_equal(baseline.feature_samples["com_row"], reference_rows)

    detector = FeatureKS(features=KS_FEATURES)
    rng = np.random.default_rng(2026)
    p_values = np.empty((N_WINDOWS, len(KS_FEATURES)))
    family_alarms = 0
    for w in range(N_WINDOWS):
        pick = rng.choice(outside, WINDOW, replace=False)
        window = Window(train.images[pick], train.labels[pick].astype(np.int64), "null")
        findings = detector.evaluate(DriftContext(window=window, baseline=baseline))
        p_values[w] = [f.p_value for f in findings]
        classify(findings, {"correction": "holm", "alpha_warn": 0.05, "alpha_alert": 0.01})
        family_alarms += any(f.status is not Status.OK for f in findings)
    rates = (p_values < 0.05).mean(axis=0)
    for name, rate in zip(KS_FEATURES, rates, strict=True):
        print(f"{name}: p < 0.05 on {rate:.1%} of {N_WINDOWS} drift-free windows of {WINDOW}")
    print(f"feature_ks family (Holm, adjusted p < 0.05): {family_alarms / N_WINDOWS:.1%}")
    assert all(0.02 <= rate <= 0.08 for rate in rates), dict(zip(KS_FEATURES, rates, strict=True))
    assert family_alarms / N_WINDOWS <= 0.08
