"""Confidence intervals, paired tests, the learning-curve crossover, and cost arithmetic.

Every statistic here is a pure function of outcome matrices shaped `[n_seeds, n_items]`: row s is
one seed's run of an arm (one demo draw, one fine-tuning run), column i is one test item, and column
i is the same test item for every seed and every arm. That shared column order is what makes the
comparisons paired. A 1-D array is read as a single seed.

The test item is the independent unit throughout: seeds of one arm see the same items, so their
outcomes are correlated and are never pooled as if they were `n_seeds * n_items` independent trials.
Multi-seed statistics therefore reduce each item to its seed mean first.

Libraries, not re-derivations: Wilson intervals and McNemar's exact test from statsmodels, bootstrap
resampling and the F, t and binomial distributions from scipy. Three exceptions, each written out
and tested against the library: the exact McNemar rejection region for every number of discordant
items at once (`_exact_mcnemar_rejects`) and Holm's adjustment (`holm`), for speed; BCa's
acceleration for the mean, in closed form, because scipy's generic one needs memory quadratic in
the test size.

Beside each verdict, what it would take to change it: the number of test items at which an arm's
interval would decide against the target (`items_to_decide`), the smallest difference each paired
test could detect (`PairedTest.detectable`), and the power of a non-inferiority test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize
from scipy import stats as scipy_stats
from scipy.special import ndtr, ndtri
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

DEFAULT_LEVEL = 0.95
# Bootstrap resamples (relevance intervals, paired differences): Efron & Tibshirani advise >= 1000
# for BCa; 2000 keeps the Monte Carlo error of a 95% bound of an accuracy difference near 0.3
# points at n = 100 items.
DEFAULT_RESAMPLES = 2000
# Fixed so that the same records always give the same bootstrap interval and p-value.
DEFAULT_SEED = 0
# The power at which "what it would take" is stated (items to decide, detectable differences): the
# conventional 80% of Cohen (1988), a 1 in 5 chance of missing an effect that is really there.
DEFAULT_POWER = 0.8
# Bootstrap resamples are drawn this many values at a time (an index and a value array, 16 bytes a
# value: about 64 MB), whatever the test size.
_RESAMPLE_BATCH_VALUES = 4_000_000


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
    # The smallest |difference| (same units as `difference`) this test would find significant with
    # DEFAULT_POWER at this n and the observed discordance; None when no difference is detectable:
    # too few discordant items for the test ever to reject at this level.
    detectable: float | None
    p_adjusted: float | None = None  # Holm-adjusted p_value within the verdict's family of tests (`holm`)

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
    the bootstrap has nothing to resample and BCa is undefined.

    Memory and time are O(n) in the number of items, so a 50,000-item test set is affordable:
    - scipy draws the resamples in batches of at most `_RESAMPLE_BATCH_VALUES` values; the draws,
      and so the interval, do not depend on the batch size.
    - The BCa correction is computed here rather than by scipy's method="BCa", whose generic
      jackknife for the acceleration builds all n leave-one-out samples, an n x (n - 1) array
      (1.3 GB at 8,000 items, past 18 GB at 50,000). For the mean, the leave-one-out means are
      (sum - x_i) / (n - 1), so the jackknife deviations are proportional to d_i = x_i - mean and
      the acceleration has a closed form (Efron & Tibshirani 1993, eq. 14.15):
          a = sum d_i^3 / (6 (sum d_i^2)^(3/2)).
      The bias correction and the adjusted percentiles follow scipy's BCa step for step (same
      section), so the interval equals scipy's method="BCa" up to rounding (tests/test_stats.py).
    """
    distribution = scipy_stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        batch=max(1, _RESAMPLE_BATCH_VALUES // values.size),
        method="percentile",  # only the distribution is used; its percentile interval is discarded
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(seed),
    ).bootstrap_distribution
    mean = values.mean()
    # Bias correction z0: the normal quantile of the share of bootstrap means below the estimate,
    # ties counting half.
    below = (np.count_nonzero(distribution < mean) + np.count_nonzero(distribution <= mean)) / (2 * distribution.size)
    z0 = ndtri(below)
    deviations = values - mean
    acceleration = np.sum(deviations**3) / (6 * np.sum(deviations**2) ** 1.5)
    z_tail = ndtri((1 - level) / 2)
    tails = np.array([z0 + z_tail, z0 - z_tail])
    adjusted = ndtr(z0 + tails / (1 - acceleration * tails))  # the percentiles BCa reads off
    low, high = scipy_stats.quantile(distribution, adjusted)
    return float(low), float(high), distribution


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


def _exact_mcnemar_rejects(discordant: np.ndarray, level: float) -> np.ndarray:
    """Per number m of discordant items (an integer array), the largest count c of them won by one
    arm at which McNemar's exact test rejects at `level`, -1 where no count does: its p-value, as
    statsmodels computes it (twice the binomial(m, 1/2) cdf of the smaller count, capped at 1), is
    below 1 - level exactly at counts <= c and >= m - c. Vectorised over m, so that summing over
    every m a repeat of the experiment could give costs nothing."""
    alpha = 1 - level
    # The quantile is the smallest count whose tail reaches alpha / 2; the one below it rejects.
    c = scipy_stats.binom.ppf(alpha / 2, discordant, 0.5)
    c = np.where(2 * scipy_stats.binom.cdf(c, discordant, 0.5) < alpha, c, c - 1)  # ties: not below
    return np.where(2 * scipy_stats.binom.cdf(c + 1, discordant, 0.5) < alpha, c + 1, c)


def _mcnemar_detectable(discordant: int, n_items: int, level: float, power: float = DEFAULT_POWER) -> float | None:
    """The smallest accuracy difference McNemar's exact test detects with `power` in a repeat of this
    experiment: n_items items, each discordant with the observed probability q = m / n_items.

    Given M discordant items the count a wins is binomial(M, pi) (pi = 1/2 under the null) and the
    test rejects at the counts `_exact_mcnemar_rejects` gives. The power is that rejection mass
    averaged over M ~ binomial(n_items, q); the pi > 1/2 at which it equals `power` is solved for
    (the power rises with |pi - 1/2|; the region is symmetric, so pi < 1/2 gives the same size), and
    the expected difference is (2 pi - 1) q.

    Why not conditional on the observed m, as the test itself is: the rejection region jumps with m,
    and a repeat does not keep m. A difference found with 80% power given m = 10 or 30 is found in
    72-74% of repeats (exact sums, 50-300 items); averaged over M it is 80% (simulated in
    tests/test_decision_stats.py). None when even pi = 1 falls short of `power`: with fewer than
    about 10 discordant items too many repeats have too few for any count to be significant, so no
    difference is detectable."""
    if discordant == 0:
        return None
    q = discordant / n_items
    repeats = np.arange(n_items + 1)
    weight = scipy_stats.binom.pmf(repeats, n_items, q)
    kept = weight > 1e-12  # M within ~7 sd of m: the rest weigh nothing
    repeats, weight = repeats[kept], weight[kept]
    largest = _exact_mcnemar_rejects(repeats, level)

    def shortfall(pi: float) -> float:
        rejected = scipy_stats.binom.cdf(largest, repeats, pi) + scipy_stats.binom.sf(repeats - largest - 1, repeats, pi)
        return float(weight @ rejected) - power

    if shortfall(1.0) < 0:
        return None
    # At pi = 1/2 the power is the test's size (< 1 - level < power).
    pi = optimize.brentq(shortfall, 0.5, 1.0, xtol=1e-12)
    return (2 * pi - 1) * q


def _normal_detectable(differences: np.ndarray, level: float, power: float = DEFAULT_POWER) -> float | None:
    """The smallest mean difference a two-sided `level` test of mean(d_i) = 0 detects with `power`,
    by the normal approximation (z_{1 - alpha/2} + z_power) * sd(d_i) / sqrt(n) with the observed sd
    (ddof 1). An approximation: with few discordant items the clustered test refers its statistic to
    F(1, m - 1), heavier-tailed than the normal, and the true detectable difference is larger."""
    if differences.size < 2:
        return None
    z = scipy_stats.norm.isf((1 - level) / 2) + scipy_stats.norm.isf(1 - power)
    return float(z * differences.std(ddof=1) / math.sqrt(differences.size))


def _paired_test(
    test: str,
    differences: np.ndarray,
    p_value: float,
    level: float,
    resamples: int,
    seed: int,
    detectable: float | None,
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
        detectable=detectable,
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

    `detectable`, the smallest difference the test would find with DEFAULT_POWER (80%) at this n:
    for the exact test, exact and conditional on the observed number of discordant items
    (`_mcnemar_detectable`; None when they are too few for any difference to be significant);
    for the clustered test, the normal approximation with the observed sd of d_i
    (`_normal_detectable`; None with fewer than two discordant items).
    """
    _check_level(level)
    a_matrix, b_matrix = _paired_matrices(a, b, unit_interval=True)
    a_per_item, b_per_item = a_matrix.mean(axis=0), b_matrix.mean(axis=0)
    differences = a_per_item - b_per_item
    a_only, b_only = int((differences > 0).sum()), int((differences < 0).sum())
    if _is_binary(a_per_item) and _is_binary(b_per_item):
        p_value = mcnemar([[0, a_only], [b_only, 0]], exact=True).pvalue  # only the off-diagonal is used
        detectable = _mcnemar_detectable(a_only + b_only, differences.size, level)
        return _paired_test("mcnemar", differences, p_value, level, resamples, seed, detectable)
    discordant = a_only + b_only
    if discordant < 2:
        p_value = 1.0  # at most one discordant item: no evidence of a difference
        detectable = None  # and none could be found: the test needs two
    else:
        statistic = differences.sum() ** 2 / np.sum(differences**2)
        p_value = scipy_stats.f.sf(statistic, 1, discordant - 1)
        detectable = _normal_detectable(differences, level)
    return _paired_test("mcnemar_clustered", differences, p_value, level, resamples, seed, detectable)


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
    section 16.4), with the +1 correction so it is never 0. `detectable` (in the score's units) is the
    normal approximation with the observed sd of d_i (`_normal_detectable`), not a bootstrap power.
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
    detectable = _normal_detectable(differences, level)
    return _paired_test("paired_bootstrap", differences, p_value, level, resamples, seed, detectable)


# ---- what it would take to decide -----------------------------------------------------------------

# The method behind `items_to_decide`, for the report to state beside the number.
ITEMS_TO_DECIDE_METHOD = "Wilson interval, exact binomial power"


def _decision_power(n: np.ndarray, rate: float, target: float, level: float) -> np.ndarray:
    """Per number of items n (an integer array), the exact probability that an experiment of true
    accuracy `rate` yields a Wilson `level` interval on the side of `target` that `rate` is on: lower
    bound >= target (meets) when rate > target, upper bound < target (falls short) when below.

    The Wilson interval is the set of accuracies its score test does not reject, so its lower bound
    reaches `target` exactly when x >= n t + z sqrt(n t (1 - t)) of the n items are right, and its
    upper bound is below `target` exactly when x < n t - z sqrt(n t (1 - t)). That closed form
    finds the deciding count; one step each way against statsmodels' `proportion_confint` (the
    interval `accuracy_interval` reports) settles floating-point ties the library's way. The power
    is then one binomial tail.
    """
    z = scipy_stats.norm.isf((1 - level) / 2)
    spread = z * np.sqrt(n * target * (1 - target))

    def wilson(count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = proportion_confint(np.clip(count, 0, n), n, alpha=1 - level, method="wilson")
        return np.asarray(low), np.asarray(high)

    if rate > target:
        fewest = np.clip(np.ceil(n * target + spread), 0, n + 1)  # n + 1: no count meets
        fewest = fewest + ((fewest <= n) & (wilson(fewest)[0] < target))
        fewest = fewest - ((fewest >= 1) & (wilson(fewest - 1)[0] >= target))
        return scipy_stats.binom.sf(fewest - 1, n, rate)
    most = np.clip(np.ceil(n * target - spread) - 1, -1, n)  # -1: no count falls short
    most = most - ((most >= 0) & (wilson(most)[1] >= target))
    most = most + ((most + 1 <= n) & (wilson(most + 1)[1] < target))
    return scipy_stats.binom.cdf(most, n, rate)


def items_to_decide(
    rate: float,
    target: float,
    level: float = DEFAULT_LEVEL,
    power: float = DEFAULT_POWER,
    max_items: int = 1_000_000,
) -> int | None:
    """How many test items it would take to decide: the smallest n at which an arm of true accuracy
    `rate` (the observed accuracy) gets a Wilson `level` interval that excludes `target`, on the
    side `rate` is on, with probability at least `power`.

    Deciding means the verdict `rate` points to: lower bound >= target (meets, the rule in
    `decide.meets_target`) when rate > target, upper bound < target (falls short) when rate <
    target. An interval that excludes the target on the wrong side is an error, not a decision, and
    does not count towards the power.

    The probability is exact: the binomial(n, rate) mass of the counts whose Wilson interval
    (statsmodels, as in `accuracy_interval` for one seed) decides, found by `_decision_power`;
    as in Chernick & Liu (2002, Am Stat 56:149), who show that this power is saw-toothed in n:
    adding an item can lower it, because the count needed to decide moves in whole steps. So the
    smallest n with enough power can be followed by larger n with too little. We return the smallest n from which the power stays >= `power` for every n up to 2n:
    a figure a reader can round up safely, as a reader of "n items" expects. The teeth repeat
    every 1 / t or 1 / (1 - t) items, far inside that window, and their troughs rise with n
    because the power's envelope does. The power is computed for every n from 1 (vectorised),
    over a range doubled until it holds the answer: seconds for an answer of 300,000, milliseconds
    for one in the thousands.

    None when rate == target (no number of items decides), or when the answer exceeds `max_items`.
    Chance in the items only: the arm's seeds are taken as they were run (as in the interval).
    """
    _check_level(level)
    for name, value in (("rate", rate), ("target", target)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise StatsError(f"{name} = {value!r}: expected an accuracy between 0 and 1")
    if not 0 < power < 1:
        raise StatsError(f"power = {power!r}: expected a probability strictly between 0 and 1, e.g. 0.8")
    if not (isinstance(max_items, int) and max_items >= 1):
        raise StatsError(f"max_items = {max_items!r}: expected a positive whole number")
    if rate == target:
        return None
    # The envelope rises with n, so too little power at max_items puts the answer beyond it. This
    # spares the exact scan, ~2 microseconds per n, of 2 million n when rate is near the target.
    if _decision_power(np.array([max_items]), rate, target, level)[0] < power:
        return None
    top, powers = 64, np.empty(0)
    while True:
        top = min(top, max_items)
        n = np.arange(1, 2 * top + 1)
        powers = np.r_[powers, _decision_power(n[powers.size :], rate, target, level)]
        short = np.where(powers >= power, np.inf, n)
        next_short = np.minimum.accumulate(short[::-1])[::-1]  # per n: the first m >= n lacking power
        holds = next_short[:top] > 2 * n[:top]
        if holds.any():
            return int(n[np.argmax(holds)])
        if top == max_items:
            return None
        top *= 2


# ---- several comparisons --------------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order (Holm 1979, Scand J Stat 6:65). Rejecting every
    adjusted p below 1 - level keeps the chance of any false rejection in the family at most
    1 - level, whatever the dependence between the tests.

    Sorted ascending, the k-th smallest p (k from 0) is multiplied by m - k, and the products are
    made non-decreasing (running maximum) and capped at 1. This is statsmodels'
    `multipletests(method="holm")` to the last bit (tests/test_decision_stats.py checks it), written
    out because that routine runs a full `gc.collect()` on every call: 0.2 s in a process holding a
    model, once per family, and minutes in a simulation.

    The family must be fixed before the data are seen. Comparing the arm with the best point
    estimate against each other arm is not such a family: choosing the best by its estimate
    favours comparisons that chance made large, and adjusting only those m - 1 comparisons lets
    the family-wise error rate exceed 1 - level (10% for 8 equal arms on 200 items at 95%, measured
    in tests/test_decision_stats.py). Adjust over every pair of arms, and read the best arm's
    comparisons off that family.
    """
    values = []
    for index, p in enumerate(p_values):
        if not (isinstance(p, (int, float, np.floating, np.integer)) and 0 <= p <= 1):
            raise StatsError(f"p_values[{index}] = {p!r}: expected a p-value between 0 and 1")
        values.append(float(p))
    order = np.argsort(values, kind="stable")
    sorted_p = np.asarray(values)[order]
    adjusted = np.empty(len(values))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(sorted_p * np.arange(len(values), 0, -1)))
    return [float(p) for p in adjusted]


# ---- non-inferiority ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NonInferiority:
    """Is a cheaper arm no worse than a better one by more than `margin`? `difference` is cheaper
    minus better, in accuracy units [0, 1]."""

    test: str  # "tango_score" (0/1 per-item outcomes) or "paired_t" (fractional per-item seed means)
    difference: float  # mean(cheaper) - mean(better)
    lower: float  # one-sided `level` lower confidence bound of the difference
    margin: float  # the loss in accuracy accepted, >= 0
    p_value: float  # one-sided, null: difference <= -margin
    level: float
    passes: bool  # p_value < 1 - level, equivalently lower > -margin
    n_items: int
    power: float  # the chance of passing if the arms were truly equal (difference 0), at this n and discordance

    def to_dict(self) -> dict:
        return asdict(self)


def _tango_statistic(cheaper_only: ArrayLike, better_only: ArrayLike, n_items: int, delta: float) -> np.ndarray:
    """Tango's (1998) score statistic for the null difference `delta` of two paired proportions, from
    the discordant counts (b: right under the cheaper arm only; c: under the better only):

        Z = (b - c - n delta) / sqrt(n (2 q + delta (1 - delta)))

    q the maximum-likelihood P(better only) under the null, the positive root of
    2n q^2 + (-b - c + (2n - b + c) delta) q - c delta (1 - delta) = 0. Vectorised over the counts.
    Z is 0 where the numerator is (no discordant items at delta = 0: nothing to weigh)."""
    b, c = np.asarray(cheaper_only, dtype=float), np.asarray(better_only, dtype=float)
    linear = -b - c + (2 * n_items - b + c) * delta
    constant = -c * delta * (1 - delta)
    q = (np.sqrt(linear**2 - 8 * n_items * constant) - linear) / (4 * n_items)
    numerator = b - c - n_items * delta
    variance = n_items * (2 * q + delta * (1 - delta))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(numerator == 0, 0.0, numerator / np.sqrt(np.maximum(variance, 0.0)))


def noninferiority_test(
    cheaper: ArrayLike, better: ArrayLike, margin: float, level: float = DEFAULT_LEVEL
) -> NonInferiority:
    """Is arm `cheaper` non-inferior to arm `better` (`[n_seeds, n_items]`, the same items) within
    `margin` of accuracy? One-sided test of the null difference <= -margin at 1 - level.

    - 0/1 per-item seed means in both arms (one seed, or seeds that agree): Tango's score test for
      the difference of paired proportions (Tango 1998, Stat Med 17:891, with its restricted
      maximum-likelihood variance; recommended for non-inferiority by Fagerland, Lydersen & Laake
      2017, Statistical Analysis of Contingency Tables, ch. 8). `lower` inverts the same statistic
      (Tango's one-sided score bound), so `passes` agrees with it exactly. `power`, the chance of
      passing if the arms were truly equal, is exact conditional on the observed number m of
      discordant items: the binomial(m, 1/2) mass of the splits of m that pass.
    - Otherwise (fractional per-item seed means, several seeds): a one-sided paired t test on d_i,
      item i's seed-mean difference; `lower` is the t bound, and `power` the noncentral t
      probability of passing at a true difference of 0 with the observed sd of d_i.

    The margin is in accuracy units: 0.02 accepts a cheaper arm up to 2 points less accurate.
    """
    _check_level(level)
    if not (isinstance(margin, (int, float)) and 0 <= margin < 1):
        raise StatsError(f"margin = {margin!r}: expected an accuracy loss in [0, 1), e.g. 0.02")
    cheaper_matrix, better_matrix = _paired_matrices(cheaper, better, unit_interval=True)
    cheaper_items, better_items = cheaper_matrix.mean(axis=0), better_matrix.mean(axis=0)
    differences = cheaper_items - better_items
    n_items = differences.size
    difference = float(differences.mean())
    alpha = 1 - level

    if _is_binary(cheaper_items) and _is_binary(better_items):
        cheaper_only, better_only = int((differences > 0).sum()), int((differences < 0).sum())
        z = scipy_stats.norm.isf(alpha)
        p_value = float(scipy_stats.norm.sf(_tango_statistic(cheaper_only, better_only, n_items, -margin)))
        # The score statistic falls as the null difference rises; the bound is where it equals z.
        excess = lambda delta: float(_tango_statistic(cheaper_only, better_only, n_items, delta)) - z  # noqa: E731
        floor = -1 + 1e-12  # delta = -1 itself makes the restricted estimate degenerate
        if difference <= floor or excess(floor) <= 0:
            lower = -1.0
        else:
            lower = optimize.brentq(excess, floor, difference, xtol=1e-12)
        discordant = cheaper_only + better_only
        splits = np.arange(discordant + 1)
        passing = scipy_stats.norm.sf(_tango_statistic(splits, discordant - splits, n_items, -margin)) < alpha
        power = float(scipy_stats.binom.pmf(splits[passing], discordant, 0.5).sum())
        test = "tango_score"
    else:
        if n_items < 2:
            raise StatsError("a paired t test needs at least 2 test items, got 1")
        sd = float(differences.std(ddof=1))
        if sd == 0:
            # Every item differs by the same amount: the difference is known exactly.
            p_value, lower = (0.0 if difference > -margin else 1.0), difference
            power = 1.0 if margin > 0 else 0.0
        else:
            error = sd / math.sqrt(n_items)
            p_value = float(scipy_stats.t.sf((difference + margin) / error, n_items - 1))
            critical = scipy_stats.t.isf(alpha, n_items - 1)
            lower = difference - critical * error
            power = float(scipy_stats.nct.sf(critical, n_items - 1, margin / error))
        test = "paired_t"
    return NonInferiority(
        test=test,
        difference=difference,
        lower=float(lower),
        margin=float(margin),
        p_value=p_value,
        level=level,
        passes=bool(p_value < alpha),
        n_items=n_items,
        power=power,
    )


# ---- the difference between two arms, over items and seeds ----------------------------------------


@dataclass(frozen=True)
class DifferenceInterval:
    """Accuracy of arm a minus arm b with an interval that generalises over test items and seeds."""

    value: float  # mean(a) - mean(b) over seeds and items, accuracy units
    low: float
    high: float
    level: float
    method: str  # "bootstrap_percentile_items" or "bootstrap_percentile_items_seeds"
    seed_spread: float | None  # sd across seeds of the accuracy difference (see paired_difference_interval)
    n_seeds_a: int
    n_seeds_b: int

    def to_dict(self) -> dict:
        return asdict(self)


# Bootstrap resamples handled at once by `paired_difference_interval`: bounds the working memory at a
# few arrays of this many float64 entries (16 MiB each) whatever the number of test items.
_CHUNK_ENTRIES = 2**21


def paired_difference_interval(
    a: ArrayLike,
    b: ArrayLike,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> DifferenceInterval:
    """mean(a) - mean(b) for arms `[n_seeds_a, n_items]` and `[n_seeds_b, n_items]` on the same items,
    with a `level` interval for the difference another run would find on new items with new seeds.

    A two-way (pigeonhole) bootstrap for crossed random factors (Owen 2007, Ann Appl Stat 1:386):
    each resample draws the test items with replacement, one draw of columns shared by both arms
    (the pairing), and, independently, each arm's seeds with replacement among its own rows. An
    arm with one seed contributes no seed variation. Owen shows the two-way bootstrap slightly
    overstates the variance (the item-by-seed interaction is counted twice), an error on the
    safe side; with 3-5 seeds it cannot know the seed spread well, so the interval is an
    approximation (tests/test_decision_stats.py measures its coverage). An arm run with one seed is
    taken as it ran: exact for a deterministic arm (greedy decoding of a fixed prompt); an arm whose
    seeds would differ but was run once hides that spread, and no interval can recover it.

    Percentile interval, not BCa: BCa's acceleration comes from a jackknife, which has no standard
    form for two crossed resampling factors; the mean difference over >= 100 items is close to
    symmetric, where the two agree.

    seed_spread: how much the difference moves from seed to seed. With the same number (> 1) of
    seeds in both arms, seed s of a is set against seed s of b (a run pairs them: same demo draw,
    same data order): the sd (ddof 1) of the per-seed accuracy differences. Otherwise the sd of the
    difference between a random seed of each arm, sqrt(var_a + var_b) of the per-seed accuracies
    (an arm with one seed adds 0): with one multi-seed arm, that arm's sd. None with one seed each.

    Memory: resamples are drawn in chunks of at most _CHUNK_ENTRIES item draws, so the working
    set stays near 100 MiB for any n_items.
    """
    _check_level(level)
    if not (isinstance(resamples, int) and resamples >= 1):
        raise StatsError(f"resamples = {resamples!r}: expected a positive whole number")
    a_matrix, b_matrix = _paired_matrices(a, b, unit_interval=True)
    (seeds_a, n_items), seeds_b = a_matrix.shape, b_matrix.shape[0]
    value = float(a_matrix.mean() - b_matrix.mean())
    rng = np.random.default_rng(seed)

    def seed_means(matrix: np.ndarray, size: int) -> np.ndarray:
        """[size, n_items] per-item means over resampled seeds ([1, n_items] for one seed)."""
        if matrix.shape[0] == 1:
            return matrix
        rows = matrix.shape[0]
        weights = rng.multinomial(rows, np.full(rows, 1 / rows), size=size) / rows  # [size, rows]
        return weights @ matrix

    distribution = np.empty(resamples)
    chunk = max(1, _CHUNK_ENTRIES // n_items)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        per_item = seed_means(a_matrix, size) - seed_means(b_matrix, size)
        items = rng.integers(0, n_items, size=(size, n_items))
        distribution[start : start + size] = np.take_along_axis(per_item, items, axis=1).mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(distribution, [tail, 1 - tail])

    per_seed_a, per_seed_b = a_matrix.mean(axis=1), b_matrix.mean(axis=1)
    if seeds_a == seeds_b > 1:
        seed_spread = float((per_seed_a - per_seed_b).std(ddof=1))
    elif max(seeds_a, seeds_b) > 1:
        variance = sum(float(s.var(ddof=1)) for s in (per_seed_a, per_seed_b) if s.size > 1)
        seed_spread = math.sqrt(variance)
    else:
        seed_spread = None
    return DifferenceInterval(
        value=value,
        low=float(low),
        high=float(high),
        level=level,
        method="bootstrap_percentile_items_seeds" if max(seeds_a, seeds_b) > 1 else "bootstrap_percentile_items",
        seed_spread=seed_spread,
        n_seeds_a=seeds_a,
        n_seeds_b=seeds_b,
    )


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
