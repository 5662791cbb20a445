"""The statistics: known values, edge cases, and calibration of the permutation test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp_stats

from mnist_mlops.monitoring import stats


def test_psi_zero_for_identical_and_grows_with_shift() -> None:
    base = np.array([0.25, 0.25, 0.25, 0.25])
    assert stats.psi(base, base) == pytest.approx(0.0)
    small = stats.psi(base, np.array([0.3, 0.25, 0.25, 0.2]))
    large = stats.psi(base, np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0 < small < 0.1 < 0.2 < large


def test_psi_matches_hand_computation_and_accepts_counts() -> None:
    expected = np.array([0.5, 0.5])
    actual = np.array([0.8, 0.2])
    by_hand = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert stats.psi(expected, actual) == pytest.approx(by_hand, rel=1e-3)
    assert stats.psi(expected * 10, actual * 1000) == pytest.approx(by_hand, rel=1e-3)


def test_psi_finite_with_empty_bins_and_rejects_mismatched_bins() -> None:
    assert np.isfinite(stats.psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="equal bin counts"):
        stats.psi(np.ones(3), np.ones(4))


@pytest.mark.parametrize("method,scipy_method", [("bh", "bh")])
def test_bh_matches_scipy(method: str, scipy_method: str) -> None:
    p = np.random.default_rng(0).uniform(size=20) ** 3
    np.testing.assert_allclose(
        stats.adjust_p_values(p, method), sp_stats.false_discovery_control(p, method=scipy_method)
    )


def test_holm_by_hand_and_unknown_method() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01,0.03,0.04,0.5 -> 0.04, 0.09, 0.09 (monotone), 0.5
    np.testing.assert_allclose(stats.adjust_p_values(p, "holm"), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(stats.adjust_p_values(p, "none"), p)
    with pytest.raises(ValueError, match="unknown p-value correction 'bonferonni'"):
        stats.adjust_p_values(p, "bonferonni")


def test_sample_psi_small_for_same_distribution_large_for_shift() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=5000)
    assert stats.sample_psi(ref, rng.normal(size=2000))[0] < 0.02
    assert stats.sample_psi(ref, rng.normal(1.0, 1.0, size=2000))[0] > 0.2


def test_mmd_permutation_test_separates_and_is_calibrated() -> None:
    rng = np.random.default_rng(2)
    null_p = [
        stats.mmd_permutation_test(
            rng.normal(size=(60, 5)), rng.normal(size=(60, 5)), 200, seed=s
        ).p_value
        for s in range(20)
    ]
    # under the null p-values are ~uniform: few below 0.05, not all tiny
    assert sum(p < 0.05 for p in null_p) <= 4
    shifted = stats.mmd_permutation_test(
        rng.normal(size=(60, 5)), rng.normal(0.8, 1, size=(60, 5)), 200
    )
    assert shifted.p_value < 0.01 and shifted.statistic > 0


def test_psi_noise_floor_only_matters_for_small_windows() -> None:
    # 10 bins, 100 vs 55k images: pure noise exceeds ~0.28 with probability 0.001
    assert stats.psi_noise_floor(10, 100, 55_000, 0.001) == pytest.approx(0.28, abs=0.01)
    assert stats.psi_noise_floor(10, 500, 55_000, 0.001) < 0.1
    assert stats.psi_noise_floor(10, 100, 55_000, None) == 0.0
    # and it is calibrated: simulated no-drift PSI on 100 draws exceeds it rarely
    rng = np.random.default_rng(3)
    probs = np.full(10, 0.1)
    sims = [stats.psi(probs, rng.multinomial(100, probs)) for _ in range(2000)]
    assert np.mean(np.array(sims) > stats.psi_noise_floor(10, 100, 10**9, 0.01)) < 0.03
