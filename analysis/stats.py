"""Paired statistics over seeds. Every function takes per-seed values (already paired)."""
import math

import numpy as np
from scipy import stats

N_BOOTSTRAP = 10_000


def bootstrap_ci(values, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeds resampled with replacement); NaNs below n=2.

    Seeded: the same values always give the same interval."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(N_BOOTSTRAP, len(values))).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_t(differences) -> float:
    """Two-sided p-value of a paired t-test (mean difference 0); NaN if undefined."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0:
        return math.nan
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def wilcoxon(differences) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test (exact for small n without ties,
    scipy's choice otherwise); NaN if undefined (fewer than 2 values, or all zero)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or not d.any():
        return math.nan
    return float(stats.wilcoxon(d).pvalue)


def tost(differences, margin: float) -> float:
    """p-value of the two one-sided t-tests for equivalence: H0 |mean difference| >= margin.

    A p below alpha says the mean difference lies within (-margin, margin)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0:
        return math.nan
    se, df = d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1
    p_above_lower = stats.t.sf((d.mean() + margin) / se, df)  # H0: mean <= -margin
    p_below_upper = stats.t.cdf((d.mean() - margin) / se, df)  # H0: mean >= +margin
    return float(max(p_above_lower, p_below_upper))


def seeds_needed(differences, alpha: float = 0.05, power: float = 0.8,
                 most: int = 100_000) -> float:
    """Seeds a two-sided paired t-test needs to detect the observed mean difference with the
    given power (the observed mean and sd taken as true); inf if the mean is 0, NaN if n < 2."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if d.mean() == 0:
        return math.inf
    if sd == 0:
        return 2.0
    effect = abs(d.mean()) / sd
    normal = ((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / effect) ** 2
    if normal > most:
        return math.inf
    for n in range(max(2, int(normal) - 1), most + 1):  # the t-test needs a little more than z
        t_crit = stats.t.ppf(1 - alpha / 2, n - 1)
        achieved = stats.nct.sf(t_crit, n - 1, effect * math.sqrt(n)) + \
            stats.nct.cdf(-t_crit, n - 1, effect * math.sqrt(n))
        if achieved >= power:
            return float(n)
    return math.inf


def min_signed_rank_n(alpha: float = 0.05) -> int:
    """The fewest pairs at which a two-sided exact signed-rank test can reach p < alpha
    (its smallest p-value is 2 / 2**n): 6 at alpha 0.05."""
    return math.floor(math.log2(2 / alpha)) + 1
