"""How well a median is known: a distribution-free 95% confidence interval from the order statistics (no
assumption about how call times are distributed), used by studio.timing.latency to stop timing once every median is
known within a few percent."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964


def median_ci(times: list[float]) -> tuple[float, float] | None:
    """A distribution-free 95% confidence interval for the median of `times` (order statistics: the
    ranks a Binomial(n, 1/2) count stays within 95% of the time), or None below 6 values, where no
    pair of ranks covers 95%. Exact binomial ranks up to 60 values, the normal approximation above."""
    n = len(times)
    if n < 6:
        return None
    ordered = sorted(times)
    if n <= 60:
        k, below = 0, 0.0  # largest k with P(Bin(n, 1/2) <= k - 1) <= 2.5%: the interval is ordered[k..n-1-k]
        while below + math.comb(n, k) / 2**n <= 0.025:
            below += math.comb(n, k) / 2**n
            k += 1
        k = max(k - 1, 0) if k else 0
    else:
        k = max(int(math.floor((n - Z95 * math.sqrt(n)) / 2)) - 1, 0)
    return ordered[k], ordered[n - 1 - k]


def ci_pct(times: list[float]) -> float | None:
    """The 95% confidence interval's larger half around the median, as a percentage of the median."""
    ci = median_ci(times)
    if ci is None:
        return None
    med = float(np.median(times))
    return 100.0 * max(med - ci[0], ci[1] - med) / med if med > 0 else None
