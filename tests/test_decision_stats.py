"""The statistics of a verdict that says what it would take to decide: the number of items that would
decide against the target, the difference each paired test can detect, Holm's adjustment over the
verdict's comparisons, non-inferiority of a cheaper arm, and the paired difference's interval over
items and seeds.

Each promise is checked the way a user relies on it: by simulating experiments from a planted
truth and counting how often the stated property holds. Every draw comes from a fixed seed, so the
tests are deterministic; `pytest -s` prints the measured rates. The Monte Carlo standard error of a
rate near 80% over 2,000 draws is 0.9 points, of one near 5% 0.5 points.
"""

from __future__ import annotations

import functools
import json
import tracemalloc

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from tuneorprompt import stats


def table(a_only: int, b_only: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """One-seed 0/1 outcomes of two arms with `a_only` + `b_only` discordant items among `n_items`."""
    a = np.zeros(n_items)
    b = np.zeros(n_items)
    a[:a_only] = 1
    b[a_only : a_only + b_only] = 1
    return a, b


@functools.lru_cache(maxsize=None)
def mcnemar_p(a_only: int, b_only: int, n_items: int) -> float:
    """The p-value the user's paired test gives for this table (it depends on the discordant counts
    only, so simulations reuse it; resamples only sets the difference's interval)."""
    return stats.paired_accuracy_test(*table(a_only, b_only, n_items), resamples=50).p_value


# ---- items to decide ------------------------------------------------------------------------------


def exact_power(n: int, rate: float, target: float, level: float = 0.95) -> float:
    """Brute force: binomial(n, rate) mass of every count whose Wilson interval decides in rate's direction."""
    counts = np.arange(n + 1)
    low, high = proportion_confint(counts, n, alpha=1 - level, method="wilson")
    decides = low >= target if rate > target else high < target
    return float(scipy_stats.binom.pmf(counts[decides], n, rate).sum())


# (observed rate, target): short and long of the target, near and far.
DECIDE_PAIRS = [(0.775, 0.80), (0.85, 0.80), (0.70, 0.80), (0.90, 0.80)]


@pytest.mark.parametrize(("rate", "target"), DECIDE_PAIRS)
def test_items_to_decide_decides_with_the_promised_power(rate, target):
    n = stats.items_to_decide(rate, target)
    assert n is not None
    # Exact, by brute force over every count: at least 80% at n, and not yet at n - 1 (the answer is
    # the smallest n from which the power holds, not a generous one).
    assert exact_power(n, rate, target) >= 0.8
    assert exact_power(n - 1, rate, target) < 0.8
    # Simulated: 2,000 experiments of n items at the true accuracy, judged by the interval the report uses.
    rng = np.random.default_rng(round(1000 * rate))
    decided = []
    for right in rng.binomial(n, rate, size=2000):
        interval = stats.accuracy_interval(np.r_[np.ones(right), np.zeros(n - right)])
        decided.append(interval.low >= target if rate > target else interval.high < target)
    share = float(np.mean(decided))
    print(f"items_to_decide({rate}, {target}) = {n}: exact power {exact_power(n, rate, target):.3f}, "
          f"at n - 1 {exact_power(n - 1, rate, target):.3f}; decided in {share:.1%} of 2,000 simulated runs")
    assert share >= 0.78  # 0.8 less 2 Monte Carlo standard errors


def test_items_to_decide_power_stays_above_the_promise_beyond_the_answer():
    # The power is saw-toothed in n: the first n with 80% is followed by n with less. The answer is
    # where it stops dipping, so a reader who collects a few more items than stated keeps the power.
    rate, target = 0.90, 0.80
    n = stats.items_to_decide(rate, target)
    powers = [exact_power(m, rate, target) for m in range(1, 2 * n + 1)]
    first = 1 + next(m for m, power in enumerate(powers) if power >= 0.8)
    assert first < n  # the saw-tooth: enough power at `first`, then some n with too little
    assert min(powers[n - 1 :]) >= 0.8


def test_items_to_decide_none_when_nothing_decides():
    assert stats.items_to_decide(0.8, 0.8) is None  # on the target: no n decides
    assert stats.items_to_decide(0.801, 0.8) is None  # more than a million items
    assert stats.items_to_decide(0.85, 0.8, max_items=400) is None  # 481 needed
    assert stats.items_to_decide(0.85, 0.8, max_items=481) == 481
    assert stats.ITEMS_TO_DECIDE_METHOD == "Wilson interval, exact binomial power"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rate": 1.2, "target": 0.8}, "rate = 1.2"),
        ({"rate": 0.7, "target": -0.1}, "target = -0.1"),
        ({"rate": 0.7, "target": 0.8, "power": 1.0}, "power = 1.0"),
        ({"rate": 0.7, "target": 0.8, "level": 95}, "level = 95"),
        ({"rate": 0.7, "target": 0.8, "max_items": 0}, "max_items = 0"),
    ],
)
def test_items_to_decide_names_bad_arguments(arguments, message):
    with pytest.raises(stats.StatsError, match=message):
        stats.items_to_decide(**arguments)


# ---- detectable differences -----------------------------------------------------------------------


@pytest.mark.parametrize(("n_items", "discordant"), [(200, 30), (100, 10), (200, 60)])
def test_mcnemar_detects_its_stated_difference_80_percent_of_the_time(n_items, discordant):
    # In repeats of the experiment, as a reader takes "detects with 80% power": each of n_items items
    # is discordant with the observed probability q = m / n, and a discordant item goes a's way with
    # probability pi, (2 pi - 1) q = detectable. Measured (2,000 repeats): 0.800, 0.805, 0.808. The
    # figure conditional on the observed m (the test's own conditioning) is found in 0.741, 0.723
    # and 0.827 of repeats (exact sums): an overstatement of what the test can see at small m.
    observed = stats.paired_accuracy_test(*table(discordant // 2, discordant - discordant // 2, n_items))
    q = discordant / n_items
    rng = np.random.default_rng(7)
    cells = rng.multinomial(n_items, [(q + observed.detectable) / 2, (q - observed.detectable) / 2, 1 - q], 2000)
    share = np.mean([mcnemar_p(int(a_only), int(b_only), n_items) < 0.05 for a_only, b_only, _ in cells])
    print(f"McNemar, {discordant} discordant of {n_items}: detectable {observed.detectable:.4f}; "
          f"rejected in {share:.1%} of 2,000 repeats at that difference")
    assert 0.77 <= share <= 0.83  # 80% within 3.4 Monte Carlo standard errors
    # Exact: the rejection mass summed over every number of discordant items a repeat can have, with
    # statsmodels' exact McNemar p-value written per split (checked against the user's test above).
    pi = 0.5 + observed.detectable / (2 * q)
    exact = 0.0
    for m in range(n_items + 1):
        wins = np.arange(m + 1)
        p_values = np.minimum(1.0, 2 * scipy_stats.binom.cdf(np.minimum(wins, m - wins), m, 0.5))
        exact += scipy_stats.binom.pmf(m, n_items, q) * scipy_stats.binom.pmf(wins[p_values < 0.05], m, pi).sum()
    assert exact == pytest.approx(0.8, abs=1e-6)


def test_too_few_discordant_items_detect_nothing():
    # 6 discordant of 100: a repeat has fewer than 6 (where no split is significant) 45% of the
    # time, so even a always winning falls short of 80% power; no difference is detectable.
    assert stats.paired_accuracy_test(*table(3, 2, 100)).detectable is None
    assert stats.paired_accuracy_test(*table(3, 3, 100)).detectable is None
    twelve = stats.paired_accuracy_test(*table(6, 6, 100)).detectable
    assert twelve is not None and 0 < twelve <= 0.12
    # More discordance means more noise: a larger difference is needed to see through it.
    assert stats.paired_accuracy_test(*table(40, 40, 200)).detectable > stats.paired_accuracy_test(
        *table(10, 10, 200)
    ).detectable


def test_clustered_detectable_is_detected_about_80_percent_of_the_time():
    # Three noisy seeds per arm (every item right with the arm's accuracy in every seed): the
    # clustered test, whose detectable difference is a normal approximation with the observed sd.
    n_items, reps = 300, 400
    rng = np.random.default_rng(8)

    def arms(gap: float) -> tuple[np.ndarray, np.ndarray]:
        return ((rng.random((3, n_items)) < 0.7 + gap).astype(float), (rng.random((3, n_items)) < 0.7).astype(float))

    detectable = np.mean([stats.paired_accuracy_test(*arms(0.0), resamples=50).detectable for _ in range(50)])
    tests = [stats.paired_accuracy_test(*arms(detectable), resamples=50) for _ in range(reps)]
    assert {t.test for t in tests} == {"mcnemar_clustered"}
    share = np.mean([t.significant for t in tests])
    print(f"clustered McNemar, 3 vs 3 noisy seeds, n={n_items}: detectable {detectable:.4f}; "
          f"rejected in {share:.1%} of {reps} draws at that difference")
    assert 0.74 <= share <= 0.87  # 80% within 3 Monte Carlo standard errors (2 points at 400 draws)


def test_bootstrap_test_states_its_detectable_difference_in_its_units():
    rng = np.random.default_rng(9)
    b = rng.normal(50, 20, size=400)
    a = b + rng.normal(0, 10, size=400)
    result = stats.paired_bootstrap_test(a, b, resamples=200)
    d = a - b
    assert result.detectable == pytest.approx((1.959964 + 0.841621) * d.std(ddof=1) / 20, rel=1e-5)


def test_paired_test_fields_for_the_report():
    result = stats.paired_accuracy_test(*table(9, 2, 100))
    assert result.p_adjusted is None  # decide.py fills it after Holm
    assert json.loads(json.dumps(result.to_dict()))["detectable"] == result.detectable


# ---- Holm -----------------------------------------------------------------------------------------


def test_holm_adjusts_in_the_given_order():
    # Sorted 0.01, 0.02, 0.04 times 3, 2, 1, kept monotone: 0.03, 0.04, 0.04; then back in order.
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_holm_is_statsmodels_holm():
    rng = np.random.default_rng(10)
    for size in (1, 2, 7, 28):
        p_values = list(np.round(rng.random(size) ** 3, 3))  # rounded: ties included
        assert stats.holm(p_values) == list(multipletests(p_values, method="holm")[1])


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.2"])
def test_holm_names_the_bad_p_value(bad):
    with pytest.raises(stats.StatsError, match=r"p_values\[1\] = "):
        stats.holm([0.2, bad, 0.3])


def best_versus_rest(reps: int, planted: float, seed: int, n_arms: int = 8, n_items: int = 200) -> dict:
    """Eight arms on 200 items, each item right independently with the arm's accuracy (0.7; arm 0 at
    0.7 + planted). The verdict's claim: the arm with the best point estimate is better than each
    other arm. Holm adjusts two families: those 7 comparisons only ("best vs rest"), and all 28
    pairs ("all pairs", the best arm's 7 read off them). Per family: "false", the share of draws
    claiming the best better than an arm truly equal to it; "all", the share in which arm 0 is best
    and declared better than all 7 others; "each", the mean share of arm 0's 7 comparisons declared
    (none in a draw where arm 0 is not the best)."""
    rng = np.random.default_rng(seed)
    accuracy = np.full(n_arms, 0.7)
    accuracy[0] += planted
    pairs = [(i, j) for i in range(n_arms) for j in range(i + 1, n_arms)]
    counts = {family: {"false": 0, "all": 0, "each": 0.0} for family in ("best vs rest", "all pairs")}
    for _ in range(reps):
        correct = rng.random((n_arms, n_items)) < accuracy[:, None]
        best = int(np.argmax(correct.sum(axis=1)))
        wins = {
            (i, j): (int((correct[i] & ~correct[j]).sum()), int((~correct[i] & correct[j]).sum()))
            for i in range(n_arms)
            for j in range(n_arms)
            if i != j
        }
        others = [j for j in range(n_arms) if j != best]
        every = dict(zip(pairs, stats.holm([mcnemar_p(*wins[pair], n_items) for pair in pairs])))
        adjusted = {
            "best vs rest": stats.holm([mcnemar_p(*wins[best, j], n_items) for j in others]),
            "all pairs": [every[min(best, j), max(best, j)] for j in others],
        }
        for family, p_values in adjusted.items():
            declared = [p < 0.05 for p in p_values]
            counts[family]["false"] += any(d and accuracy[j] == accuracy[best] for d, j in zip(declared, others))
            counts[family]["all"] += best == 0 and all(declared)
            counts[family]["each"] += np.mean(declared) if best == 0 else 0.0
    return {family: {k: round(float(v) / reps, 4) for k, v in c.items()} for family, c in counts.items()}


def test_holm_over_all_pairs_keeps_the_family_wise_error_quick():
    rates = best_versus_rest(reps=300, planted=0.0, seed=11)
    print(f"8 equal arms, n=200, 300 draws: {rates}")
    assert rates["all pairs"]["false"] <= 0.08  # 5% with 300 draws' Monte Carlo slack (s.e. 1.3 points)


@pytest.mark.slow
def test_holm_family_wise_error_and_power():
    null = best_versus_rest(reps=2000, planted=0.0, seed=12)
    planted = best_versus_rest(reps=1000, planted=0.10, seed=13)
    print(f"8 equal arms, n=200, 2,000 draws: {null}; arm 0 ten points better, 1,000 draws: {planted}")
    assert null["all pairs"]["false"] <= 0.05
    # Choosing the best by its estimate and then adjusting only its 7 comparisons does not hold 5%:
    # the family was picked by the data. Measured 10.4%; this pins why the verdict adjusts all pairs.
    assert null["best vs rest"]["false"] > 0.07
    # Power at n = 200 is low for a 10-point lead over 7 rivals: floors a little under the figures measured.
    assert planted["all pairs"]["false"] <= 0.05
    assert planted["all pairs"]["each"] >= 0.14  # measured 16.3% (best vs rest: 35.9%)
    assert planted["all pairs"]["all"] >= 0.005  # measured 1.4% (best vs rest: 14.8%)


# ---- non-inferiority ------------------------------------------------------------------------------


def test_tango_statistic_uses_the_restricted_maximum_likelihood():
    # Checked against a direct numerical maximisation of the multinomial likelihood under the null
    # (P(cheaper only) - P(better only) = delta), independent of the closed-form root.
    cheaper_only, better_only, n_items, delta = 12, 25, 180, -0.05
    both_or_neither = n_items - cheaper_only - better_only

    def negative_log_likelihood(q: float) -> float:
        cheaper, better, rest = q + delta, q, 1 - 2 * q - delta  # P(cheaper only), P(better only), P(agree)
        return -(cheaper_only * np.log(cheaper) + better_only * np.log(better) + both_or_neither * np.log(rest))

    q = optimize.minimize_scalar(negative_log_likelihood, bounds=(-delta + 1e-9, (1 - delta) / 2 - 1e-9),
                                 method="bounded", options={"xatol": 1e-12}).x
    z = (cheaper_only - better_only - n_items * delta) / np.sqrt(n_items * (2 * q + delta * (1 - delta)))
    a, b = table(cheaper_only, better_only, n_items)
    result = stats.noninferiority_test(a, b, margin=0.05)
    assert result.test == "tango_score"
    assert result.p_value == pytest.approx(scipy_stats.norm.sf(z), rel=1e-6)
    assert result.difference == pytest.approx(-13 / 180)


def test_noninferiority_bound_agrees_with_the_test():
    for cheaper_only, better_only in [(10, 14), (20, 12), (0, 0), (3, 30)]:
        a, b = table(cheaper_only, better_only, 300)
        for margin in (0.0, 0.02, 0.05):
            result = stats.noninferiority_test(a, b, margin=margin)
            assert result.passes == (result.lower > -margin)
            assert result.lower <= result.difference
    # With no margin the score test of the difference is McNemar's z, one-sided.
    result = stats.noninferiority_test(*table(30, 14, 300), margin=0.0)
    assert result.p_value == pytest.approx(scipy_stats.norm.sf(16 / np.sqrt(44)))


@functools.lru_cache(maxsize=None)
def noninferiority(cheaper_only: int, better_only: int, n_items: int, margin: float) -> stats.NonInferiority:
    """The user's test on one-seed 0/1 outcomes with this table (Tango's statistic depends on the
    discordant counts and n only, so simulations reuse it)."""
    return stats.noninferiority_test(*table(cheaper_only, better_only, n_items), margin)


def plant_tables(rng: np.random.Generator, gap: float, n_items: int, reps: int) -> list[tuple[int, int]]:
    """(cheaper only, better only) counts of `reps` runs on `n_items` items: the better arm right with
    probability 0.8, the cheaper `gap` less, 20% of items discordant on average (right under one arm)."""
    cheaper_only, better_only = (0.2 - gap) / 2, (0.2 + gap) / 2
    counts = rng.multinomial(n_items, [0.8 - better_only, cheaper_only, better_only, 0.2 - cheaper_only], size=reps)
    return [(int(b), int(c)) for b, c in counts[:, 1:3]]


@pytest.mark.parametrize(("margin", "n_items"), [(0.02, 400), (0.05, 400), (0.05, 1000)])
def test_noninferiority_accepts_at_its_stated_power_and_rejects_a_real_loss(margin, n_items):
    rng = np.random.default_rng(round(1000 * margin) + n_items)
    reps = 2000

    def run(gap: float) -> list[stats.NonInferiority]:
        return [noninferiority(b, c, n_items, margin) for b, c in plant_tables(rng, gap, n_items, reps)]

    equal = run(0.0)
    accepted, stated = np.mean([t.passes for t in equal]), np.mean([t.power for t in equal])
    # The size: at the margin's boundary (the null's edge) and at twice the margin.
    at_margin = np.mean([t.passes for t in run(margin)])
    twice = np.mean([t.passes for t in run(2 * margin)])
    print(f"Tango non-inferiority, margin {margin}, n={n_items}: equal arms accepted in {accepted:.1%} "
          f"(mean stated power {stated:.1%}); a loss of the margin accepted in {at_margin:.1%}, "
          f"of twice it in {twice:.1%} (2,000 draws each)")
    assert abs(accepted - stated) <= 0.03
    assert at_margin <= 0.065  # 5% within 3 Monte Carlo standard errors
    assert twice <= 0.05


def test_noninferiority_with_several_seeds_uses_the_paired_t_test():
    rng = np.random.default_rng(14)
    reps, n_items, margin = 1000, 300, 0.05
    results = {}
    for gap in (0.0, margin):
        tests = [
            stats.noninferiority_test((rng.random((3, n_items)) < 0.8 - gap).astype(float),
                                      (rng.random((3, n_items)) < 0.8).astype(float), margin)
            for _ in range(reps)
        ]
        results[gap] = (np.mean([t.passes for t in tests]), np.mean([t.power for t in tests]))
    assert {t.test for t in tests} == {"paired_t"}
    print(f"paired t non-inferiority, 3 vs 3 noisy seeds, n={n_items}, margin {margin}: equal arms accepted "
          f"{results[0.0][0]:.1%} (stated power {results[0.0][1]:.1%}), a loss of the margin {results[margin][0]:.1%}")
    assert abs(results[0.0][0] - results[0.0][1]) <= 0.04
    assert results[margin][0] <= 0.07


@pytest.mark.parametrize("margin", [-0.01, 1.0])
def test_noninferiority_refuses_a_bad_margin(margin):
    with pytest.raises(stats.StatsError, match=f"margin = {margin}"):
        stats.noninferiority_test(np.ones(10), np.ones(10), margin)


# ---- the paired difference over items and seeds ---------------------------------------------------


def plant_seeds(rng: np.random.Generator, accuracy: float, n_items: int, n_seeds: int, spread: float) -> np.ndarray:
    """[n_seeds, n_items] 0/1 outcomes of an arm whose seeds differ: item difficulty p_i ~ U(0.25,
    0.75) shifted to `accuracy`, and seed s adds u_s ~ U(-spread, spread) to every item's chance
    (kept inside [0, 1] for spread <= 0.2 and accuracy 0.45-0.55). True accuracy: `accuracy`."""
    items = rng.uniform(0.25, 0.75, size=n_items) + accuracy - 0.5
    shifts = rng.uniform(-spread, spread, size=(n_seeds, 1))
    return (rng.random((n_seeds, n_items)) < items + shifts).astype(float)


@pytest.mark.parametrize(("seeds_a", "seeds_b", "spread"), [(1, 1, 0.0), (3, 1, 0.1), (3, 3, 0.1)])
def test_difference_interval_covers_the_planted_difference(seeds_a, seeds_b, spread):
    rng = np.random.default_rng(100 * seeds_a + seeds_b)
    reps, n_items, truth = 500, 200, 0.05
    # An arm run once is deterministic here (greedy decoding of a prompt): its seed has no spread.
    spread_b = spread if seeds_b > 1 else 0.0
    intervals = [
        stats.paired_difference_interval(plant_seeds(rng, 0.5 + truth, n_items, seeds_a, spread),
                                         plant_seeds(rng, 0.5, n_items, seeds_b, spread_b), resamples=1000)
        for _ in range(reps)
    ]
    coverage = np.mean([i.low <= truth <= i.high for i in intervals])
    print(f"difference interval, {seeds_a} vs {seeds_b} seeds, seed spread U(+-{spread}), n={n_items}: "
          f"covers the planted {truth} in {coverage:.1%} of {reps} draws")
    assert coverage >= 0.93


def test_seeds_that_disagree_widen_the_interval():
    # Arm a's five seeds differ by up to +-10 points: the interval must carry that, where an
    # interval over items alone (seeds held fixed) does not.
    rng = np.random.default_rng(15)
    a, b = plant_seeds(rng, 0.55, 300, 5, 0.1), plant_seeds(rng, 0.5, 300, 1, 0.0)
    over_seeds = stats.paired_difference_interval(a, b)
    fixed = stats.paired_accuracy_test(a, b)  # BCa over items of the seed-mean differences
    assert over_seeds.method == "bootstrap_percentile_items_seeds"
    assert over_seeds.value == pytest.approx(a.mean() - b.mean())
    assert over_seeds.high - over_seeds.low > 1.2 * (fixed.diff_high - fixed.diff_low)


def test_seed_spread():
    a = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=float)  # per seed 0.5, 0.75, 1.0
    b = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=float)  # 0.25, 0.25, 0.5
    # Same seed count: seed s against seed s, differences 0.25, 0.5, 0.5.
    assert stats.paired_difference_interval(a, b).seed_spread == pytest.approx(np.std([0.25, 0.5, 0.5], ddof=1))
    # One multi-seed arm: its own spread across seeds.
    one = stats.paired_difference_interval(a, b[0])
    assert one.seed_spread == pytest.approx(0.25) and (one.n_seeds_a, one.n_seeds_b) == (3, 1)
    # Unequal seed counts: the spread of a random seed of each, sqrt(var_a + var_b).
    assert stats.paired_difference_interval(a, b[:2]).seed_spread == pytest.approx(0.25)
    single = stats.paired_difference_interval(a[0], b[0])
    assert single.seed_spread is None and single.method == "bootstrap_percentile_items"
    assert json.loads(json.dumps(single.to_dict())) == single.to_dict()


@pytest.mark.slow
def test_difference_interval_memory_is_bounded_for_a_large_test_set():
    # 50,000 items and 2,000 resamples: drawn at once, the item indices alone would take 800 MB.
    rng = np.random.default_rng(16)
    a, b = (rng.random((3, 50_000)) < 0.7).astype(float), (rng.random(50_000) < 0.68).astype(float)
    tracemalloc.start()
    interval = stats.paired_difference_interval(a, b)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"difference interval, 3 seeds vs 1, 50,000 items, 2,000 resamples: peak {peak / 2**20:.0f} MiB")
    assert peak < 150 * 2**20
    assert interval.low < a.mean() - b.mean() < interval.high
