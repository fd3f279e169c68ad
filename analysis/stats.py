"""Paired statistics over seeds, from scipy and statsmodels. Every function takes per-seed
values (already paired) and returns NaN where the statistic is undefined."""
import math

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW

MIN_N_INTERVAL = 5  # fewer seeds: no interval (a 95% t interval at n=4 spans +-3.2 sd / 2)


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """t interval of the mean (exact coverage for normal data); NaNs below ``MIN_N_INTERVAL``."""
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_N_INTERVAL:
        return math.nan, math.nan
    if values.std() == 0:
        return float(values.mean()), float(values.mean())
    low, high = stats.ttest_1samp(values, 0).confidence_interval(level)
    return float(low), float(high)


def paired_t(differences) -> float:
    """Two-sided p-value of the paired t-test (mean difference 0)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0:
        return math.nan
    return float(stats.ttest_1samp(d, 0).pvalue)


def signed_rank(differences, alternative: str = "two-sided") -> float:
    """p-value of the Wilcoxon signed-rank test with Pratt's treatment of zero differences (test
    errors lie on a grid of 1/N points: ties and zeros are common); exact where scipy can be."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or not d.any():
        return math.nan
    return float(stats.wilcoxon(d, zero_method="pratt", alternative=alternative).pvalue)


def tost(differences, margin: float) -> float:
    """p-value of the two one-sided t-tests for equivalence, H0: |mean difference| >= margin.
    A p below alpha says the mean difference lies within (-margin, margin)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0:
        return math.nan
    return float(DescrStatsW(d).ttost_mean(-margin, margin)[0])


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment over a family of tests (NaNs stay NaN, and do not count)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    present = ~np.isnan(p)
    if present.any():
        adjusted[present] = multipletests(p[present], method="holm")[1]
    return adjusted.tolist()


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Seeds a two-sided paired t-test needs to detect a true mean difference of ``effect``
    (the smallest effect of interest, stated before the data) when paired differences have
    standard deviation ``sd`` (the control's: run-to-run noise), with the given power; never
    fewer than the signed-rank test's minimum. NaN if ``sd`` is unknown."""
    if not sd > 0 or not effect > 0:
        return math.nan
    n = TTestPower().solve_power(effect_size=effect / sd, alpha=alpha, power=power,
                                 alternative="two-sided")
    n = float(n) if np.isfinite(n) else 2.0  # no solution: an effect far beyond the noise
    return float(max(math.ceil(n), min_signed_rank_n(alpha)))


def sd_interval(sd: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The chi-square interval of a normal standard deviation estimated as ``sd`` from ``n``
    values (exact for normal data); NaNs where undefined."""
    if not sd > 0 or n < 2:
        return math.nan, math.nan
    tail = (1 - level) / 2
    return (sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - tail, n - 1)),
            sd * math.sqrt((n - 1) / stats.chi2.ppf(tail, n - 1)))


def min_signed_rank_n(alpha: float = 0.05) -> int:
    """The fewest pairs at which a two-sided exact signed-rank test can reach p < alpha
    (its smallest p-value is 2 / 2**n): 6 at alpha 0.05."""
    return math.floor(math.log2(2 / alpha)) + 1


def error_consistency(correct_a, correct_b) -> float:
    """Cohen's kappa of two classifiers' errors on the same images (Geirhos et al. 2020): how
    much more often they are right or wrong together than their accuracies alone imply."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    observed = (a == b).mean()
    p_a, p_b = a.mean(), b.mean()
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    return math.nan if expected == 1 else float((observed - expected) / (1 - expected))


def power_paired_t(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test on Δ against a true mean Δ of ``effect`` when Δ
    has standard deviation ``sd`` over ``n`` seeds; NaN where undefined."""
    if not sd > 0 or n < 2:
        return math.nan
    return float(TTestPower().power(effect_size=effect / sd, nobs=n, alpha=alpha, alternative="two-sided"))


def min_one_sided_signed_rank_p(n: int) -> float:
    """The smallest p-value an exact one-sided signed-rank test over ``n`` pairs can give."""
    return 0.5 ** n


def power_vs_control(effect: float, sd: float, n: int, alpha: float = 0.05, reps: int = 2000) -> float:
    """Power of the one-sided signed-rank test on |Δ| − |Δ control| (the noise-floor comparison)
    at level ``alpha`` against a setup whose mean Δ is ``effect``, by simulation (seeded: the
    same number every time): each seed's errors of baseline, control and setup independent
    normal with the run-to-run sd that gives Δ the standard deviation ``sd``; NaN where undefined."""
    if not sd > 0 or n < 2:
        return math.nan
    if min_one_sided_signed_rank_p(n) >= alpha:  # no outcome reaches the level
        return 0.0
    rng = np.random.default_rng(0)
    base, control, setup = rng.normal(0, sd / math.sqrt(2), (3, reps, n))
    excess = np.abs(setup + effect - base) - np.abs(control - base)
    p = stats.wilcoxon(excess, zero_method="pratt", alternative="greater", axis=1).pvalue
    return float(np.mean(p < alpha))


def abs_interval(low: float, high: float) -> tuple[float, float]:
    """A 95% interval of |μ| from one of μ: its image under |·| (coverage at least the same)."""
    if math.isnan(low):
        return math.nan, math.nan
    if low <= 0 <= high:
        return 0.0, max(-low, high)
    return min(abs(low), abs(high)), max(abs(low), abs(high))
