"""Confidence intervals, paired tests, the learning-curve crossover, and cost arithmetic.

Every statistic here is a pure function of outcome matrices shaped `[n_seeds, n_items]`: row s is
one seed's run of an arm (one demo draw, one fine-tuning run), column i is one test item, and column
i is the same test item for every seed and every arm. That shared column order is what makes the
comparisons paired. A 1-D array is read as a single seed.

The test item is the independent unit throughout: seeds of one arm see the same items, so their
outcomes are correlated and are never pooled as if they were `n_seeds * n_items` independent trials.
Multi-seed statistics therefore reduce each item to its seed mean first.

Libraries, not re-derivations: Wilson intervals and McNemar's exact test from statsmodels,
bootstrap intervals (BCa) and the F distribution from scipy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize as scipy_optimize
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

DEFAULT_LEVEL = 0.95
# Bootstrap resamples (relevance intervals, paired differences): Efron & Tibshirani advise >= 1000
# for BCa; 2000 keeps the Monte Carlo error of a 95% bound of an accuracy difference near 0.3
# points at n = 100 items.
DEFAULT_RESAMPLES = 2000
# Fixed so that the same records always give the same bootstrap interval and p-value.
DEFAULT_SEED = 0
# The power at which "the test items that would decide" and "the smallest detectable difference"
# are stated: the conventional 80% (Cohen 1988).
DEFAULT_POWER = 0.8


class StatsError(ValueError):
    """Outcome arrays or curves that cannot be analysed; the message names the argument and position."""


@dataclass(frozen=True)
class Interval:
    value: float  # the point estimate: mean over seeds and items
    low: float
    high: float
    level: float  # e.g. 0.95
    method: str  # "wilson", "wilson_design_effect" (see accuracy_interval), "bootstrap_bca" or "none"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """Arm a against arm b on the same test items; `difference` is a minus b."""

    test: str  # "mcnemar" (exact), "mcnemar_clustered" or "paired_bootstrap"
    difference: float  # mean(a) - mean(b): accuracy in [0, 1] units, relevance in its own units
    diff_low: float  # bootstrap (BCa) interval of the difference, resampling test items
    diff_high: float
    p_value: float  # two-sided, null: no difference in mean
    level: float
    significant: bool  # p_value < 1 - level
    n_items: int
    n_a_better: int  # items whose seed-mean outcome is higher under a (the discordant pairs a wins)
    n_b_better: int
    # The smallest |difference| this test detects with 80% power at this n and the observed
    # discordance (`detectable_difference`); None when too few items differ for it to detect any.
    detectable: float | None = None
    p_adjusted: float | None = None  # Holm-adjusted within the family of tests it was reported with (`holm`)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- input checks ---------------------------------------------------------------------------------


def as_matrix(values: ArrayLike, name: str, *, unit_interval: bool) -> np.ndarray:
    """`values` as a float `[n_seeds, n_items]` matrix (a 1-D array is one seed), or a StatsError
    naming `name` and the bad entry. unit_interval: every entry must lie in [0, 1] (correctness)."""
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise StatsError(f"{name}: expected a non-empty [n_seeds, n_items] array, got shape {matrix.shape}")
    bad = ~np.isfinite(matrix)
    if unit_interval:
        bad |= (matrix < 0) | (matrix > 1)
    if bad.any():
        seed, item = np.argwhere(bad)[0]
        expected = "a number in [0, 1]" if unit_interval else "a finite number"
        raise StatsError(f"{name}[seed row {seed}, item {item}] = {float(matrix[seed, item])}: expected {expected}")
    return matrix


def _paired_matrices(a: ArrayLike, b: ArrayLike, *, unit_interval: bool) -> tuple[np.ndarray, np.ndarray]:
    a_matrix = as_matrix(a, "a", unit_interval=unit_interval)
    b_matrix = as_matrix(b, "b", unit_interval=unit_interval)
    if a_matrix.shape[1] != b_matrix.shape[1]:
        raise StatsError(
            f"a has {a_matrix.shape[1]} test items and b has {b_matrix.shape[1]}: "
            "paired tests need the same items in the same column order"
        )
    return a_matrix, b_matrix


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise StatsError(f"level = {level!r}: expected a confidence level strictly between 0 and 1, e.g. 0.95")


def _is_binary(matrix: np.ndarray) -> bool:
    return bool(np.all((matrix == 0) | (matrix == 1)))


# ---- intervals ------------------------------------------------------------------------------------


def _bootstrap_mean(values: np.ndarray, level: float, resamples: int, seed: int) -> tuple[float, float, np.ndarray]:
    """BCa bootstrap interval of the mean of 1-D `values` (one entry per test item), plus the
    bootstrap distribution of the mean (for p-values). Callers handle constant `values`, where
    the bootstrap has nothing to resample and BCa is undefined."""
    result = scipy_stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="BCa",
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high), result.bootstrap_distribution


def accuracy_interval(correct: ArrayLike, level: float = DEFAULT_LEVEL) -> Interval:
    """Accuracy (mean correctness over seeds and items) with a `level` confidence interval.

    correct: `[n_seeds, n_items]` per-item correctness in [0, 1] (0/1 for the built-in matchers).

    The Wilson score interval, which keeps close to nominal coverage at small n and at rates near
    0 or 1 where the Wald interval fails (Brown, Cai & DasGupta 2001), computed on the per-item
    seed means m_i (mean p) with an effective sample size from Kish's design effect:

        n_eff = n_items * p (1 - p) / var(m_i) * (z / t_{n_items - 1})^2,  at most n_seeds * n_items

    The test items are the independent unit; the seeds of one arm share them, so their outcomes
    are correlated and are not `n_seeds * n_items` independent trials.
    - When the seeds agree on every item (one seed, or a deterministic arm) m_i is 0/1, the
      binomial model gives its variance, and the interval is plain Wilson over the items.
    - When seeds disagree within items, averaging them removes part of the per-item noise,
      var(m_i) (estimated, ddof 1) shrinks and n_eff grows, up to the `n_seeds * n_items`
      outcomes (the design effect is kept >= 1). Because var(m_i) is estimated from n_items
      items, n_eff is scaled by (z / t)^2 so that Wilson's z acts as a t quantile with
      n_items - 1 degrees of freedom. Both steps follow Korn & Graubard (1998, Survey
      Methodology 24:193) for proportions from clustered samples.
    - Fractional scores (a user metric) of one seed: an item's score varies no more than a 0/1
      outcome with the same mean, so the cap at n_items outcomes makes this Wilson over items,
      a conservative interval.

    Chosen over a BCa bootstrap over items: it needs no resampling, gives identical bounds for
    identical records, reduces to Wilson for one seed, and in simulation (tests/test_simulation.py)
    keeps coverage within 93-97% for accuracies 0.2-0.95 at n = 100 with 3 or 5 seeds, its lower
    bound above the true accuracy (the risk the recommendation takes) no more often than BCa's.
    Known weak spot, shared with BCa: at n = 100, accuracy >= 0.95 and items that mix steady and
    coin-flip behaviour, coverage falls to ~92%; it recovers by n = 300.

    The interval is for the arm's accuracy averaged over the seeds that were run, generalising
    over test items; seed-to-seed spread is reported beside it (3-5 seeds cannot estimate a
    seed-level variance component well enough to put into an interval).
    """
    _check_level(level)
    matrix = as_matrix(correct, "correct", unit_interval=True)
    n_seeds, n_items = matrix.shape
    per_item = matrix.mean(axis=0)
    value = float(per_item.mean())
    if _is_binary(per_item) or n_items < 2:
        effective, method = float(n_items), "wilson"
    else:
        variance = float(per_item.var(ddof=1))
        tail = (1 - level) / 2
        t_correction = (scipy_stats.norm.isf(tail) / scipy_stats.t.isf(tail, n_items - 1)) ** 2
        # variance 0 with fractional items: every item the same fraction right, no spread at all.
        design_n = n_items * value * (1 - value) / variance * t_correction if variance > 0 else math.inf
        effective, method = min(design_n, float(n_seeds * n_items)), "wilson_design_effect"
    low, high = proportion_confint(value * effective, effective, alpha=1 - level, method="wilson")
    return Interval(value, float(low), float(high), level, method)


def mean_interval(
    values: ArrayLike, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> Interval:
    """Mean of an unbounded per-item score (relevance, 0-100) with a BCa bootstrap interval over
    test items of the per-item seed mean (items are the independent unit, as in
    `accuracy_interval`). When every item has the same mean there is no observed variation to
    resample and the interval is that value."""
    _check_level(level)
    per_item = as_matrix(values, "values", unit_interval=False).mean(axis=0)
    value = float(per_item.mean())
    if np.ptp(per_item) == 0:
        return Interval(value, value, value, level, "none")
    low, high, _ = _bootstrap_mean(per_item, level, resamples, seed)
    return Interval(value, low, high, level, "bootstrap_bca")


# ---- paired tests ---------------------------------------------------------------------------------


def _paired_test(
    test: str, differences: np.ndarray, p_value: float, level: float, resamples: int, seed: int
) -> PairedTest:
    """Assemble a PairedTest from the per-item differences `[n_items]` (a minus b) and a p-value."""
    difference = float(differences.mean())
    if np.ptp(differences) == 0:
        low = high = difference
    else:
        low, high, _ = _bootstrap_mean(differences, level, resamples, seed)
    return PairedTest(
        test=test,
        difference=difference,
        diff_low=low,
        diff_high=high,
        p_value=float(p_value),
        level=level,
        significant=bool(p_value < 1 - level),
        n_items=int(differences.size),
        n_a_better=int((differences > 0).sum()),
        n_b_better=int((differences < 0).sum()),
        detectable=detectable_difference(test, differences, level),
    )


def paired_accuracy_test(
    a: ArrayLike,
    b: ArrayLike,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedTest:
    """Do arms a and b (`[n_seeds_a, n_items]`, `[n_seeds_b, n_items]`) differ in accuracy?

    d_i is item i's seed-mean outcome under a minus under b; the null is mean(d_i) = 0 over the
    population of test items (equal accuracy).

    - Every item's seed mean is 0 or 1 in both arms (one seed with 0/1 outcomes, or seeds that
      agree on every item): McNemar's exact test (statsmodels), the binomial test of the
      discordant items, a right/b wrong against a wrong/b right.
    - Otherwise (seeds disagree on some items, or fractional scores): the clustered McNemar test of
      Durkalski et al. (2003, Stat Med 22:2417), with each test item a cluster of all
      (seed of a, seed of b) matched pairs. Its statistic (sum_i d_i)^2 / sum_i d_i^2 is
      McNemar's (b - c)^2 / (b + c) when every d_i is -1, 0 or 1. Durkalski refer it to
      chi-square(1); we refer it to F(1, m - 1), m the number of discordant items (d_i != 0):
      only they enter the sums, so the statistic is the square of a t-like ratio over m terms.
      With few discordant items chi-square(1) is liberal (4 discordant items all favouring one
      arm give p = 0.046, where the exact test gives 0.125 and F(1, 3) 0.14). Simulated at
      n = 100 and 300 items, accuracies 0.2-0.98, 1-5 seeds per arm (20,000 replications each;
      a subset runs in tests/test_simulation.py), F(1, m - 1) kept the null rejection rate at or
      below 5.3%, where chi-square(1) reached 12% (a noisy arm against a steady one at 0.98).

      Why not McNemar on rounded or majority-vote outcomes, or the sign test on d_i: both test
      something other than equal mean accuracy whenever the arms have different seed counts or
      different seed noise (a 3-seed arm against a 1-seed baseline of the same accuracy gives
      d_i < 0 far more often than d_i > 0), so they reject true nulls. And pooling the seeds'
      discordant pairs into one exact test treats correlated outcomes of one item as independent.

    The difference's interval is a BCa bootstrap over items of d_i, so it can disagree with the
    p-value near the boundary; the report's wording follows the p-value.
    """
    _check_level(level)
    a_matrix, b_matrix = _paired_matrices(a, b, unit_interval=True)
    a_per_item, b_per_item = a_matrix.mean(axis=0), b_matrix.mean(axis=0)
    differences = a_per_item - b_per_item
    a_only, b_only = int((differences > 0).sum()), int((differences < 0).sum())
    if _is_binary(a_per_item) and _is_binary(b_per_item):
        p_value = mcnemar([[0, a_only], [b_only, 0]], exact=True).pvalue  # only the off-diagonal is used
        return _paired_test("mcnemar", differences, p_value, level, resamples, seed)
    discordant = a_only + b_only
    if discordant < 2:
        p_value = 1.0  # at most one discordant item: no evidence of a difference
    else:
        statistic = differences.sum() ** 2 / np.sum(differences**2)
        p_value = scipy_stats.f.sf(statistic, 1, discordant - 1)
    return _paired_test("mcnemar_clustered", differences, p_value, level, resamples, seed)


def paired_bootstrap_test(
    a: ArrayLike,
    b: ArrayLike,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedTest:
    """Do arms a and b differ in a mean score such as relevance? Paired bootstrap over test items.

    d_i is item i's seed-mean score under a minus under b. The interval is BCa; the two-sided
    p-value is the share of bootstrap means that land at least |mean d| from mean d, i.e. the
    resampling distribution recentred on the null of no difference (Efron & Tibshirani 1993,
    section 16.4), with the +1 correction so it is never 0.
    """
    _check_level(level)
    a_matrix, b_matrix = _paired_matrices(a, b, unit_interval=False)
    differences = a_matrix.mean(axis=0) - b_matrix.mean(axis=0)
    observed = differences.mean()
    if np.ptp(differences) == 0:
        # Every item differs by the same amount: no resampling variation at all.
        p_value = 1.0 if observed == 0 else 1.0 / (resamples + 1)
    else:
        _, _, distribution = _bootstrap_mean(differences, level, resamples, seed)
        extreme = np.abs(distribution - observed) >= abs(observed)
        p_value = (1 + extreme.sum()) / (resamples + 1)
    return _paired_test("paired_bootstrap", differences, p_value, level, resamples, seed)


# ---- what it would take to decide ------------------------------------------------------------------

ITEMS_TO_DECIDE_METHOD = "Wilson interval, exact binomial probability"


def decide_probability(rate: float, target: float, n_items: int, level: float = DEFAULT_LEVEL) -> float:
    """The probability that an experiment of `n_items` test items, each right with probability `rate`,
    gives a Wilson `level` interval clear of `target`: wholly at or above it (meets) or below it
    (falls short). Exact: the binomial probabilities of the counts whose interval is clear."""
    counts = np.arange(n_items + 1)
    low, high = proportion_confint(counts, n_items, alpha=1 - level, method="wilson")
    decided = (low >= target) | (high < target)
    return float(scipy_stats.binom.pmf(counts[decided], n_items, rate).sum())


def items_to_decide(
    rate: float,
    target: float,
    level: float = DEFAULT_LEVEL,
    power: float = DEFAULT_POWER,
    max_items: int = 1_000_000,
) -> int | None:
    """How many test items would decide whether an arm of accuracy `rate` (the observed one) meets
    `target`: the smallest n found at which `decide_probability` reaches `power`. None when no n up
    to `max_items` does (a rate at, or within a hair of, the target).

    `decide_probability` rises with n but saw-tooths (the binomial is discrete), so "the smallest
    n" is found by bisection between an n below `power` and one above it, doubling up from 1: at
    the n returned the probability is at least `power` (computed exactly), and the n before it is
    below. A few items more can dip back under `power` by a fraction of a percent.

    The arm is treated as one 0/1 outcome per item. With several seeds an item's seed mean varies
    less than one outcome, so the figure is, if anything, more than needed.
    """
    _check_level(level)
    if not (0 <= rate <= 1 and 0 <= target <= 1 and 0 < power < 1):
        raise StatsError(f"items_to_decide(rate={rate!r}, target={target!r}, power={power!r}): expected rates in "
                         "[0, 1] and a power strictly between 0 and 1")
    if rate == target:
        return None
    low, high = 0, 1
    while decide_probability(rate, target, high, level) < power:
        if high >= max_items:
            return None
        low, high = high, min(2 * high, max_items)
    while high - low > 1:
        middle = (low + high) // 2
        if decide_probability(rate, target, middle, level) >= power:
            high = middle
        else:
            low = middle
    return high


def detectable_difference(
    test: str, differences: np.ndarray, level: float = DEFAULT_LEVEL, power: float = DEFAULT_POWER
) -> float | None:
    """The smallest |mean difference| a paired test over these items detects with probability
    `power`, given the number of items and how much they differ (`differences` `[n_items]`, a minus b
    per item). Units are those of `differences` (accuracy in [0, 1]; relevance in its own).

    - "mcnemar" (exact): conditional on the m discordant items, the test is a two-sided binomial
      test of m trials at 1/2 (statsmodels' exact McNemar). Its power at a share pi of discordant
      items won by one arm is exact; the smallest pi with that power gives a difference of
      (2 pi - 1) m / n. None when even pi = 1 would be rejected less often than `power` (with m <= 5
      discordant items, no split is significant at 95%).
    - "mcnemar_clustered" and "paired_bootstrap": the normal approximation
      (z_{1-alpha/2} + z_power) * sd(d) / sqrt(n), with the observed sd of the per-item
      differences (Chow, Shao & Wang 2008, Sample Size Calculations in Clinical Research, 3.1).
      None when the items do not differ at all.
    """
    n_items = differences.size
    alpha = 1 - level
    if test == "mcnemar":
        discordant = int(np.count_nonzero(differences))
        if discordant == 0:
            return None
        wins = np.arange(discordant + 1)
        p_values = np.minimum(1.0, 2 * np.minimum(scipy_stats.binom.cdf(wins, discordant, 0.5),
                                                  scipy_stats.binom.sf(wins - 1, discordant, 0.5)))
        rejected = wins[p_values < alpha]

        def power_at(share: float) -> float:
            return float(scipy_stats.binom.pmf(rejected, discordant, share).sum())

        if power_at(1.0) < power:
            return None
        share = scipy_optimize.brentq(lambda pi: power_at(pi) - power, 0.5, 1.0, xtol=1e-9)
        return float((2 * share - 1) * discordant / n_items)
    spread = float(differences.std(ddof=1)) if n_items > 1 else 0.0
    if spread == 0:
        return None
    z = scipy_stats.norm.isf(alpha / 2) + scipy_stats.norm.isf(1 - power)
    return float(z * spread / math.sqrt(n_items))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjustment of a family of p-values, in the order given
    (statsmodels `multipletests`): controls the chance of any false positive in the family."""
    values = [float(p) for p in p_values]
    for index, p in enumerate(values):
        if not 0 <= p <= 1:
            raise StatsError(f"p_values[{index}] = {p!r}: expected a probability in [0, 1]")
    if not values:
        return []
    return [float(p) for p in multipletests(values, method="holm")[1]]


@dataclass(frozen=True)
class NonInferiority:
    """Is the cheaper arm within `margin` of the better one? One-sided, H0: difference <= -margin."""

    test: str  # "tango_score" (0/1 items) or "paired_t" (seed means)
    difference: float  # accuracy of the cheaper arm minus the better one, in [0, 1] units
    lower: float  # one-sided `level` lower confidence bound of the difference
    margin: float
    p_value: float  # one-sided
    passes: bool  # p_value < 1 - level: the cheaper arm is shown to be within the margin
    level: float
    n_items: int
    power: float  # this test's power were the arms equal, at this n and the observed discordance

    def to_dict(self) -> dict:
        return asdict(self)


def _tango_null_variance(wins: int, losses: int, n_items: int, null: float) -> float:
    """The variance of the observed difference of paired proportions under H0: p10 - p01 = `null`
    (Tango 1998, Stat Med 17:891), where p10 is the share of items only the first arm gets right
    (`wins` of them) and p01 the reverse (`losses`). p01 is its maximum likelihood estimate under H0,
    the root of 2n x^2 + (-(w + l) + null (2n - w + l)) x - l null (1 - null) = 0."""
    a = 2.0 * n_items
    b = -(wins + losses) + null * (2 * n_items - wins + losses)
    c = -losses * null * (1 - null)
    p01 = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
    return (2 * p01 + null * (1 - null)) / n_items


def _tango_statistic(wins: int, losses: int, n_items: int, null: float) -> float:
    """Tango's score statistic for H0: p10 - p01 = `null` (see `_tango_null_variance`)."""
    variance = _tango_null_variance(wins, losses, n_items, null)
    observed = (wins - losses) / n_items
    if variance <= 0:
        return math.inf if observed > null else (-math.inf if observed < null else 0.0)
    return (observed - null) / math.sqrt(variance)


def noninferiority_test(
    cheaper: ArrayLike, better: ArrayLike, margin: float, level: float = DEFAULT_LEVEL, power: float = DEFAULT_POWER
) -> NonInferiority:
    """Is `cheaper` (`[n_seeds, n_items]`) at most `margin` less accurate than `better` on the same items?

    - Every item's seed mean 0 or 1 in both arms: Tango's (1998) score test for the difference of
      paired proportions, the standard non-inferiority test for matched binary data (Liu et al.
      2002, Stat Med 21:1011); its lower bound is the score interval's, found by inverting the test.
      Power at equal accuracy with the observed discordance q: the normal approximation
      Phi((margin sqrt(n) - z sigma_0) / sqrt(q)), sigma_0 from the restricted estimate.
    - Otherwise (several seeds disagree, or fractional scores): a one-sided paired t-test of the
      per-item differences against -margin; power from the noncentral t at the observed sd.

    The null is "cheaper is worse by the margin or more"; passing rejects it at 1 - `level`
    (one-sided 5% at 95%), so a cheaper arm truly 2 margins worse passes in at most ~5% of runs.
    """
    _check_level(level)
    if not 0 <= margin < 1:
        raise StatsError(f"margin = {margin!r}: expected an accuracy difference in [0, 1)")
    cheaper_matrix, better_matrix = _paired_matrices(cheaper, better, unit_interval=True)
    cheaper_items, better_items = cheaper_matrix.mean(axis=0), better_matrix.mean(axis=0)
    differences = cheaper_items - better_items
    n_items = differences.size
    difference = float(differences.mean())
    alpha = 1 - level
    if _is_binary(cheaper_items) and _is_binary(better_items):
        wins, losses = int((differences > 0).sum()), int((differences < 0).sum())
        statistic = _tango_statistic(wins, losses, n_items, -margin)
        p_value = float(scipy_stats.norm.sf(statistic))
        z = scipy_stats.norm.isf(alpha)
        # The score interval's lower end: the null at which the test stops rejecting at one-sided
        # alpha (the statistic falls from large at null = -1 to 0 at null = difference).
        def excess(null: float) -> float:
            return _tango_statistic(wins, losses, n_items, null) - z

        lower = -1.0 if excess(-1 + 1e-12) < 0 else float(
            scipy_optimize.brentq(excess, -1 + 1e-12, difference, xtol=1e-10))
        share = (wins + losses) / n_items  # discordance; at equal accuracy each arm wins half
        expected = round(share * n_items / 2)
        null_sd = math.sqrt(max(n_items * _tango_null_variance(expected, expected, n_items, -margin), 0.0))
        if share == 0:
            power_at_equal = float(margin * math.sqrt(n_items) > z * null_sd)
        else:
            power_at_equal = float(scipy_stats.norm.cdf((margin * math.sqrt(n_items) - z * null_sd) / math.sqrt(share)))
        test = "tango_score"
    else:
        spread = float(differences.std(ddof=1)) if n_items > 1 else 0.0
        if spread == 0:
            p_value = 0.0 if difference > -margin else 1.0
            lower = difference
            power_at_equal = float(margin > 0)
        else:
            standard_error = spread / math.sqrt(n_items)
            p_value = float(scipy_stats.t.sf((difference + margin) / standard_error, n_items - 1))
            critical = scipy_stats.t.isf(alpha, n_items - 1)
            lower = difference - critical * standard_error
            power_at_equal = float(scipy_stats.nct.sf(critical, n_items - 1, margin / standard_error))
        test = "paired_t"
    return NonInferiority(
        test=test, difference=difference, lower=float(lower), margin=margin, p_value=p_value,
        passes=bool(p_value < alpha), level=level, n_items=n_items, power=power_at_equal,
    )


@dataclass(frozen=True)
class DifferenceInterval:
    """Accuracy of arm a minus arm b, with a paired bootstrap interval over items and seeds."""

    value: float
    low: float
    high: float
    level: float
    method: str
    seed_spread: float | None  # sd across seeds: of the per-seed difference, or of the multi-seed arm's accuracy
    n_seeds_a: int
    n_seeds_b: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference_interval(
    a: ArrayLike,
    b: ArrayLike,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> DifferenceInterval:
    """mean(a) - mean(b) for `[n_seeds, n_items]` outcomes on the same items, with a two-stage paired
    bootstrap: each resample draws the test items (the same draw for both arms: paired), and each
    arm's seeds independently (Davison & Hinkley 1997, 2.4, resampling both stages of a two-stage
    design), so the interval includes seed-to-seed variation. Percentile interval: BCa's jackknife
    has no standard two-stage form. Memory: [chunk, n_items] per step, chunks of <= 64 resamples."""
    _check_level(level)
    a_matrix, b_matrix = _paired_matrices(a, b, unit_interval=False)
    n_items = a_matrix.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 64):
        chunk = min(64, resamples - start)
        # Item weights [chunk, n_items]: how often each item is drawn; seed weights likewise per arm.
        items = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=chunk) / n_items
        seeds_a = rng.multinomial(a_matrix.shape[0], np.full(a_matrix.shape[0], 1 / a_matrix.shape[0]), size=chunk)
        seeds_b = rng.multinomial(b_matrix.shape[0], np.full(b_matrix.shape[0], 1 / b_matrix.shape[0]), size=chunk)
        per_item = seeds_a @ a_matrix / a_matrix.shape[0] - seeds_b @ b_matrix / b_matrix.shape[0]
        means[start:start + chunk] = np.einsum("ri,ri->r", items, per_item)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    value = float(a_matrix.mean() - b_matrix.mean())
    a_seeds, b_seeds = a_matrix.mean(axis=1), b_matrix.mean(axis=1)
    if a_seeds.size == b_seeds.size > 1:
        spread = float(np.std(a_seeds - b_seeds, ddof=1))
    elif max(a_seeds.size, b_seeds.size) > 1:
        spread = float(np.std(a_seeds if a_seeds.size > 1 else b_seeds, ddof=1))
    else:
        spread = None
    method = "paired_bootstrap_items_seeds" if max(a_seeds.size, b_seeds.size) > 1 else "paired_bootstrap_items"
    return DifferenceInterval(value, float(min(low, value)), float(max(high, value)), level, method, spread,
                              int(a_seeds.size), int(b_seeds.size))


# ---- learning curves ------------------------------------------------------------------------------


def _curve_points(curve: Sequence[tuple[float, float]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, accuracy) points sorted by n, as arrays; StatsError on duplicates or bad numbers."""
    points = sorted((float(n), float(accuracy)) for n, accuracy in curve)
    if not points:
        raise StatsError(f"{name}: the learning curve has no points")
    n, accuracy = np.array(points).T
    for index, (size, value) in enumerate(points):
        if not (math.isfinite(size) and size >= 0 and math.isfinite(value)):
            raise StatsError(f"{name}[{index}] = ({size!r}, {value!r}): expected n >= 0 and a finite accuracy")
    if np.any(np.diff(n) == 0):
        raise StatsError(f"{name}: n = {n[np.argmax(np.diff(n) == 0)]:g} appears twice")
    return n, accuracy


def crossover(curve: Sequence[tuple[float, float]], reference: Sequence[tuple[float, float]]) -> float | None:
    """The number of labelled examples at which `curve` (fine-tuning: accuracy after training on n
    examples) overtakes `reference` (few-shot: accuracy with k demonstrations); None when it does
    not within `curve`'s range of n.

    Both curves are read as piecewise linear in log n between their points (learning curves are
    roughly linear in log n, and the sweeps double n). `reference` is held flat beyond its last
    point (prompting cannot use more demonstrations than fit the context, so more labelled data
    does not move it) and before its first. Points at n = 0 (zero-shot) have no log; they set
    `reference`'s level only when it has no other point, and are ignored in `curve`.

    Returns the first n, within `curve`'s positive range, where `curve` goes from at or below
    `reference` to strictly above it, solved on the linear pieces. When `curve` is already above
    at its first point, that first n is returned: the crossover lies at or below it.
    """
    curve_n, curve_accuracy = _curve_points(curve, "curve")
    reference_n, reference_accuracy = _curve_points(reference, "reference")
    positive = curve_n > 0
    if not positive.any():
        return None
    first_n = float(curve_n[positive][0])
    curve_x, curve_accuracy = np.log(curve_n[positive]), curve_accuracy[positive]
    if (reference_n > 0).any():
        reference_x, reference_accuracy = np.log(reference_n[reference_n > 0]), reference_accuracy[reference_n > 0]
    else:
        reference_x = np.zeros(1)  # only a zero-shot point: a constant, placed anywhere
    # On the union of both curves' knots inside curve's range, curve - reference is linear between
    # consecutive knots, so a sign change is located exactly by one interpolation.
    grid = np.union1d(curve_x, reference_x[(reference_x > curve_x[0]) & (reference_x < curve_x[-1])])
    gap = np.interp(grid, curve_x, curve_accuracy) - np.interp(grid, reference_x, reference_accuracy)
    ahead = np.flatnonzero(gap > 0)
    if ahead.size == 0:
        return None
    j = ahead[0]
    if j == 0:
        return first_n
    fraction = -gap[j - 1] / (gap[j] - gap[j - 1])  # gap[j - 1] <= 0 < gap[j]
    return float(np.exp(grid[j - 1] + fraction * (grid[j] - grid[j - 1])))


# ---- costs ----------------------------------------------------------------------------------------
# FLOPs estimates after Kaplan et al. (2020), "Scaling laws for neural language models", table 1:
# a forward pass costs ~2 FLOPs per parameter per token (one multiply-add per weight). The
# attention term 2 * n_layer * n_ctx * d_model per token is left out: it is small next to 2N for
# the short prompts and models here and would need the architecture. KV-caching does not change
# the count: each token, prompt or generated, passes through the weights once.


def inference_flops(params: float, prompt_tokens: float, generated_tokens: float) -> float:
    """Forward FLOPs of one query: 2 * params * (prompt + generated tokens). Token counts may be
    per-query means (floats)."""
    if params < 0 or prompt_tokens < 0 or generated_tokens < 0:
        raise StatsError(
            f"inference_flops(params={params}, prompt_tokens={prompt_tokens}, generated_tokens={generated_tokens}): "
            "expected non-negative numbers"
        )
    return 2.0 * params * (prompt_tokens + generated_tokens)


def training_flops(params: float, tokens: float, trainable_params: float | None = None) -> float:
    """Training FLOPs over `tokens` training tokens (all epochs) for a model of `params` parameters
    in its forward pass (base plus adapter), of which `trainable_params` get gradients (None: all).

    Per token: forward 2N; backward 2N for the activation gradients, which must flow back through
    every layer, frozen or not, to reach the adapters; and 2 * N_trainable for the weight gradients,
    which only trainable weights need. Total (4N + 2 N_trainable) * T. Full fine-tuning
    (N_trainable = N) gives the familiar 6NT; LoRA, with N_trainable << N, costs about 4NT, not
    the 2NT a forward-only count suggests nor the 6NT of full training. Gradient checkpointing
    (an extra forward, +2NT) and optimizer steps (O(N_trainable) per step, not per token) are
    not counted.
    """
    trainable = params if trainable_params is None else trainable_params
    if params < 0 or tokens < 0 or not 0 <= trainable <= params:
        raise StatsError(
            f"training_flops(params={params}, tokens={tokens}, trainable_params={trainable_params}): "
            "expected non-negative numbers with trainable_params <= params"
        )
    return (4.0 * params + 2.0 * trainable) * tokens


def break_even_queries(
    training_cost: float, per_query_cost_arm: float, per_query_cost_alternative: float
) -> float | None:
    """Queries after which a fine-tuned arm's one-time `training_cost` is repaid by its cheaper
    queries (usually shorter prompts: no instruction or demonstrations) against an alternative
    arm that needs no training. Any consistent unit: FLOPs, seconds, or money.

    None when the arm's queries are not cheaper: it never breaks even.
    """
    if training_cost < 0 or per_query_cost_arm < 0 or per_query_cost_alternative < 0:
        raise StatsError(
            f"break_even_queries({training_cost}, {per_query_cost_arm}, {per_query_cost_alternative}): "
            "expected non-negative costs"
        )
    saving = per_query_cost_alternative - per_query_cost_arm
    if saving <= 0:
        return None
    return training_cost / saving
