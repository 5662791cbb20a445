"""The statistics behind every drift detector, free of I/O so they are easy to test and time.

PSI compares binned distributions; KS and MMD give p-values, which are corrected together
(Holm or Benjamini-Hochberg) because a run tests several hypotheses at once and an
uncorrected family would raise false alarms far above the nominal level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sp_stats

# Floor for empty bins: keeps PSI finite when a bin is empty on one side (standard practice).
PSI_EPSILON = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index between two binned distributions (counts or fractions)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        raise ValueError(f"PSI needs equal bin counts, got {expected.shape} vs {actual.shape}")
    expected = np.clip(expected / max(expected.sum(), 1e-12), epsilon, None)
    actual = np.clip(actual / max(actual.sum(), 1e-12), epsilon, None)
    expected /= expected.sum()
    actual /= actual.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_noise_floor(n_bins: int, n_current: int, n_reference: int, alpha: float | None) -> float:
    """The PSI that sampling noise alone exceeds with probability ``alpha``.

    Under no drift, PSI ~ chi2(k-1) * (1/n + 1/N) for k bins and samples of n and N, so a
    fixed 0.2 cut-off alarms often on a 100-image window (expected PSI ~ 0.09 for 10 bins).
    Thresholds are raised to this floor; for windows of a few hundred it is below 0.1.
    """
    if alpha is None or n_current <= 0 or n_bins < 2:
        return 0.0
    scale = 1.0 / n_current + (1.0 / n_reference if n_reference > 0 else 0.0)
    return float(sp_stats.chi2.ppf(1.0 - alpha, n_bins - 1) * scale)


def quantile_bin_edges(reference: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Bin edges at the reference quantiles (ties merged), open at both ends."""
    inner = np.unique(
        np.quantile(np.asarray(reference, dtype=np.float64), np.linspace(0, 1, n_bins + 1)[1:-1])
    )
    return np.concatenate([[-np.inf], inner, [np.inf]])


def binned_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fraction of ``values`` in each bin; bins are right-closed so ties at a quantile stay put."""
    idx = np.searchsorted(edges[1:-1], np.asarray(values, dtype=np.float64), side="left")
    counts = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def sample_psi(
    reference: np.ndarray, current: np.ndarray, n_bins: int = 10
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """PSI of a continuous feature on reference-quantile bins: (psi, edges, ref frac, cur frac)."""
    edges = quantile_bin_edges(reference, n_bins)
    ref = binned_fractions(reference, edges)
    cur = binned_fractions(current, edges)
    return psi(ref, cur), edges, ref, cur


@dataclass(frozen=True)
class TestResult:
    """A two-sample test: its statistic (effect size) and raw p-value."""

    statistic: float
    p_value: float


def ks_test(reference: np.ndarray, current: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov; the statistic D doubles as an effect size."""
    result = sp_stats.ks_2samp(np.asarray(reference), np.asarray(current), method="asymp")
    return TestResult(statistic=float(result.statistic), p_value=float(result.pvalue))


def adjust_p_values(p_values: np.ndarray, method: str) -> np.ndarray:
    """Family-wise (``holm``) or false-discovery-rate (``bh``) adjusted p-values; ``none`` = raw."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0 or method == "none":
        return p.copy()
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method in {"bh", "fdr_bh", "benjamini-hochberg"}:
        adjusted = np.minimum.accumulate(m / np.arange(m, 0, -1) * ranked[::-1])[::-1]
    else:
        raise ValueError(f"unknown p-value correction {method!r}; use 'holm', 'bh' or 'none'")
    out = np.empty_like(adjusted)
    out[order] = np.clip(adjusted, 0.0, 1.0)
    return out


def mmd_permutation_test(
    reference: np.ndarray, current: np.ndarray, n_permutations: int = 200, seed: int = 0
) -> TestResult:
    """MMD^2 with an RBF kernel (median-distance bandwidth) and a permutation p-value.

    The kernel matrix is built once; each permutation only reshuffles the sample labels,
    so the cost is one (n+m)^2 matrix plus ``n_permutations`` matrix-vector products.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    pooled = np.concatenate([ref, cur])
    sq = np.sum(pooled * pooled, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (pooled @ pooled.T), 0.0)
    upper = dist[np.triu_indices_from(dist, k=1)]
    bandwidth = (
        float(np.sqrt(0.5 * np.median(upper))) if upper.size and np.median(upper) > 0 else 1.0
    )
    kernel = np.exp(-dist / (2.0 * bandwidth**2))
    is_ref = np.zeros(len(pooled), dtype=bool)
    is_ref[: len(ref)] = True
    rng = np.random.default_rng(seed)
    # row 0 is the observed split, rows 1.. the permutations: one (P, n) @ (n, n) product.
    # With a = the reference indicator and b = 1 - a: bKb = 1K1 - 2aK1 + aKa, aKb = aK1 - aKa.
    assign = np.stack([is_ref] + [rng.permutation(is_ref) for _ in range(n_permutations)])
    assign = assign.astype(np.float64)
    ka = assign @ kernel
    a_k_a = np.einsum("pi,pi->p", ka, assign)
    a_k_1 = ka.sum(axis=1)
    one_k_one = kernel.sum()
    na, nb = len(ref), len(cur)
    mmd2 = (
        a_k_a / na**2
        + (one_k_one - 2.0 * a_k_1 + a_k_a) / nb**2
        - 2.0 * (a_k_1 - a_k_a) / (na * nb)
    )
    observed, null = float(mmd2[0]), mmd2[1:]
    p_value = (1.0 + np.sum(null >= observed)) / (1.0 + n_permutations)
    return TestResult(statistic=observed, p_value=float(p_value))
