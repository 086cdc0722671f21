"""Confidence intervals, paired tests, the learning-curve crossover, and cost arithmetic.

Every statistic here is a pure function of outcome matrices shaped `[n_seeds, n_items]`: row s is
one seed's run of an arm (one demo draw, one fine-tuning run), column i is one test item, and column
i is the same test item for every seed and every arm. That shared column order is what makes the
comparisons paired. A 1-D array is read as a single seed.

The test item is the independent unit throughout: seeds of one arm see the same items, so their
outcomes are correlated and are never pooled as if they were `n_seeds * n_items` independent trials.
Multi-seed statistics therefore reduce each item to its seed mean first.

Libraries, not re-derivations: Wilson intervals and McNemar's exact test from statsmodels,
bootstrap resampling and the F distribution from scipy. The one exception is BCa's acceleration
for the mean, in closed form because scipy's generic one needs memory quadratic in the test size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike
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
