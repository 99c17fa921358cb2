"""Is the difference between two rows more than noise? A paired randomization test per metric.

Both rows answer the same queries, so the test is paired: under the null hypothesis (the two
systems are interchangeable) each query's two values could have come from either system, so
the sign of each per-query difference is flipped at random and the mean difference recomputed.
The p-value is the share of flips whose mean difference is at least as far from zero as the
observed one (two-sided). scipy's :func:`scipy.stats.permutation_test` does the resampling
(exactly, over all ``2**n`` flips, when that is no more than ``permutations``), seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import PerQuery

#: Resamples per test unless told otherwise: the p-value's Monte-Carlo error is below 0.005.
DEFAULT_PERMUTATIONS = 10_000
#: The p-value below which the table marks a difference as significant.
ALPHA = 0.05


def paired_p_value(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> float:
    """Two-sided p-value of a paired randomization (sign-flip) test of ``mean(a - b) == 0``.

    Args:
        a: One value per query for the first system.
        b: The same queries' values for the second, in the same order.
        permutations: Random sign flips drawn (all of them when ``2**len(a)`` is smaller).
        seed: Seed of the draw; the same inputs and seed give the same p-value.

    Returns:
        The p-value, in (0, 1]; 1.0 when every query has the same value in both.

    Raises:
        ValueError: If the lengths differ, there is no query, or ``permutations`` < 1.
    """
    from scipy.stats import permutation_test

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values need two equal-length lists, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("no query to compare")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    if np.array_equal(x, y):
        return 1.0  # every flip gives the observed difference, zero

    def mean_difference(u: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(u - v, axis=axis)

    result = permutation_test(
        (x, y),
        mean_difference,
        permutation_type="samples",  # swap the two values of a query: a sign flip
        vectorized=True,
        n_resamples=permutations,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def compare_per_query(
    values: PerQuery,
    reference: PerQuery,
    metrics: Sequence[str],
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`paired_p_value` of each metric, one row's per-query values against another's.

    Args:
        values: Query id -> {metric: value} of the row tested.
        reference: The same for the row it is compared to; the same query ids.
        metrics: The metrics to test.
        permutations: See :func:`paired_p_value`.
        seed: See :func:`paired_p_value`.

    Raises:
        ValueError: If the two rows do not hold the same queries.
    """
    if set(values) != set(reference):
        raise ValueError("the rows compared must hold the same queries")
    queries = list(reference)
    return {
        m: paired_p_value(
            [values[q][m] for q in queries],
            [reference[q][m] for q in queries],
            permutations=permutations,
            seed=seed,
        )
        for m in metrics
    }
