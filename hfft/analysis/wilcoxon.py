"""The exact one-sided Wilcoxon signed-rank test behind the "tied" marks of compare."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.stats import rankdata

__all__ = ["signed_rank_pvalue"]


def signed_rank_pvalue(differences: Iterable[float]) -> float:
    """One-sided exact p-value of the Wilcoxon signed-rank test that differences are > 0.

    Zero differences are dropped (Wilcoxon's convention); tied absolute
    differences get mid-ranks. The null distribution of the sum of positive
    ranks is computed exactly, ties included, by convolving the two-point
    distributions ``{0, r_i}``: for n = 5 nonzero differences all positive,
    p = 1/32. (SciPy's ``wilcoxon`` gives the same value without ties, but
    switches between exact, permutation and normal-approximation methods for
    ties and zeros differently across versions.)

    Args:
        differences: Paired differences, positive where the first sample is better.

    Returns:
        P(T⁺ ≥ t⁺ | H0), or 1.0 when every difference is zero.
    """
    d = np.array([x for x in differences if x != 0.0], dtype=float)
    if d.size == 0:
        return 1.0
    # mid-ranks are multiples of 1/2: doubled they are integers, so sums are exact
    doubled = np.rint(2 * rankdata(np.abs(d))).astype(int)
    observed = int(doubled[d > 0].sum())
    dist = np.zeros(int(doubled.sum()) + 1)
    dist[0] = 1.0
    for r in doubled:
        # each rank is counted (sign +) or not (sign −) with probability 1/2
        dist = 0.5 * dist + 0.5 * np.concatenate([np.zeros(r), dist[: dist.size - r]])
    return float(min(1.0, dist[observed:].sum()))
