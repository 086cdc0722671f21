"""Unit cases for tuneorprompt.stats against values known from textbooks, from the defining formula,
or from the library routine the module wraps. The repeated-sampling properties (coverage, error
rates) are in test_simulation.py."""

from __future__ import annotations

import json
import math
import tracemalloc
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from tuneorprompt import stats


def outcomes(n_correct: int, n: int) -> np.ndarray:
    return np.r_[np.ones(n_correct), np.zeros(n - n_correct)]


def paired_outcomes(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """One-seed 0/1 vectors of two arms with the given 2x2 table."""
    a = np.r_[np.ones(both), np.ones(a_only), np.zeros(b_only), np.zeros(neither)]
    b = np.r_[np.ones(both), np.zeros(a_only), np.ones(b_only), np.zeros(neither)]
    return a, b


# ---- accuracy intervals ---------------------------------------------------------------------------


def test_single_seed_accuracy_is_the_wilson_interval():
    interval = stats.accuracy_interval(outcomes(50, 100))
    # Wilson (1927) for 50/100 at 95%: 0.5 +- 1.96 * sqrt(0.0025 + 1.96^2 / 40000) / (1 + 1.96^2 / 100).
    assert interval.method == "wilson"
    assert interval.value == 0.5
    assert interval.low == pytest.approx(0.4038, abs=1e-4)
    assert interval.high == pytest.approx(0.5962, abs=1e-4)


def test_wilson_stays_inside_0_1_at_extreme_rates():
    none_right = stats.accuracy_interval(outcomes(0, 20))
    # Upper Wilson bound for 0/n is z^2 / (n + z^2) = 3.8415 / 23.8415.
    assert none_right.low == pytest.approx(0.0, abs=1e-12)
    assert none_right.high == pytest.approx(0.1611, abs=1e-4)
    all_right = stats.accuracy_interval(outcomes(20, 20))
    assert all_right.high == pytest.approx(1.0) and all_right.low == pytest.approx(1 - 0.1611, abs=1e-4)


def test_level_changes_the_width():
    narrow = stats.accuracy_interval(outcomes(70, 100), level=0.8)
    wide = stats.accuracy_interval(outcomes(70, 100), level=0.99)
    assert wide.low < narrow.low < 0.7 < narrow.high < wide.high


def test_seeds_that_agree_are_not_counted_as_independent_trials():
    # Three seeds that agree on every item carry no more information about the test-set accuracy
    # than one seed: the interval is the one-seed Wilson interval, not Wilson over 3n outcomes.
    one_seed = outcomes(140, 200)
    assert stats.accuracy_interval(np.tile(one_seed, (3, 1))) == stats.accuracy_interval(one_seed)


def test_several_seeds_use_the_design_effect_effective_n():
    # Two seeds on 100 items: 60 right in both, 20 right in one, 20 wrong in both. Seed means
    # m_i: 60 x 1, 20 x 0.5, 20 x 0; p = 0.7; var(m_i) (ddof 1) = (65 - 49) / 99 = 16 / 99;
    # n_eff = 100 * 0.21 / (16 / 99) = 129.94, times (z / t_99)^2 for the estimated variance,
    # which leaves it between the 100 items and the 200 outcomes.
    correct = np.zeros((2, 100))
    correct[:, :60] = 1
    correct[0, 60:80] = 1
    n_eff = 100 * 0.21 / (16 / 99) * (scipy_stats.norm.isf(0.025) / scipy_stats.t.isf(0.025, 99)) ** 2
    assert 100 < n_eff < 200
    interval = stats.accuracy_interval(correct)
    low, high = proportion_confint(0.7 * n_eff, n_eff, method="wilson")
    assert interval.method == "wilson_design_effect"
    assert interval.value == pytest.approx(0.7)
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))


def test_design_effect_is_truncated_at_the_number_of_outcomes():
    # Every item right in exactly one of two seeds: no spread between items at all; the effective
    # n is capped at the 200 outcomes rather than growing without bound.
    correct = np.zeros((2, 100))
    correct[0, :50] = 1
    correct[1, 50:] = 1
    interval = stats.accuracy_interval(correct)
    low, high = proportion_confint(100, 200, method="wilson")
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))


def test_all_correct_in_every_seed():
    interval = stats.accuracy_interval(np.ones((3, 50)))
    low, _ = proportion_confint(50, 50, method="wilson")
    assert interval.method == "wilson"
    assert (interval.value, interval.high) == (1.0, pytest.approx(1.0))
    assert interval.low == pytest.approx(low)


def test_fractional_scores_of_one_seed_are_treated_conservatively():
    # A user metric in [0, 1]: an item's score varies no more than a 0/1 outcome with the same
    # mean, so Wilson over the items (n_eff capped at one outcome per item) is conservative.
    scores = np.linspace(0, 1, 101)
    interval = stats.accuracy_interval(scores)
    low, high = proportion_confint(50.5, 101, method="wilson")
    assert interval.method == "wilson_design_effect"
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))


def test_mean_interval_matches_normal_theory_for_a_large_sample():
    rng = np.random.default_rng(2)
    relevance = rng.normal(60, 15, size=(2, 2000))
    interval = stats.mean_interval(relevance)
    per_item = relevance.mean(axis=0)
    half_width = 1.96 * per_item.std(ddof=1) / math.sqrt(per_item.size)
    assert interval.value == pytest.approx(per_item.mean())
    assert interval.low == pytest.approx(per_item.mean() - half_width, abs=0.1 * half_width)
    assert interval.high == pytest.approx(per_item.mean() + half_width, abs=0.1 * half_width)


def test_mean_interval_of_constant_scores_is_the_value():
    assert stats.mean_interval(np.full((2, 10), 42.0)) == stats.Interval(42.0, 42.0, 42.0, 0.95, "none")


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_mean_interval_is_scipys_bca_interval(level):
    # Skewed scores, so that both of BCa's corrections (bias, acceleration) move the bounds.
    relevance = np.random.default_rng(4).exponential(20, size=300)
    scipy_bca = scipy_stats.bootstrap((relevance,), np.mean, n_resamples=2000, confidence_level=level, method="BCa",
                                      rng=np.random.default_rng(stats.DEFAULT_SEED)).confidence_interval
    interval = stats.mean_interval(relevance, level=level)
    assert interval.method == "bootstrap_bca"
    assert (interval.low, interval.high) == (pytest.approx(scipy_bca.low, rel=1e-12), pytest.approx(scipy_bca.high, rel=1e-12))


def test_bootstrap_memory_grows_linearly_with_the_test_size():
    # scipy's BCa built an n x (n - 1) jackknife array: about 7 GB at 20,000 items. Resampling in
    # batches with the closed-form acceleration of the mean needs one batch (~64 MB) at any size.
    # numpy reports its array allocations to tracemalloc.
    a, b = np.random.default_rng(5).normal(60, 15, size=(2, 20_000))
    tracemalloc.start()
    try:
        interval = stats.mean_interval(a)
        comparison = stats.paired_bootstrap_test(a, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    half_width = 1.96 * a.std(ddof=1) / math.sqrt(a.size)  # the bootstrap still does its job at this size
    assert interval.high - interval.low == pytest.approx(2 * half_width, rel=0.1)
    assert comparison.diff_low < comparison.difference < comparison.diff_high

@pytest.mark.parametrize(
    ("correct", "message"),
    [
        (np.array([[1.0, 0.0], [1.0, 1.5]]), r"correct\[seed row 1, item 1\] = 1.5"),
        (np.array([1.0, np.nan]), r"correct\[seed row 0, item 1\] = nan"),
        (np.zeros((2, 0)), "non-empty"),
        (np.zeros((2, 2, 2)), "shape"),
    ],
)
def test_bad_outcomes_are_named(correct, message):
    with pytest.raises(stats.StatsError, match=message):
        stats.accuracy_interval(correct)


def test_bad_level_is_rejected():
    with pytest.raises(stats.StatsError, match="level = 95"):
        stats.accuracy_interval(outcomes(5, 10), level=95)


# ---- paired tests ---------------------------------------------------------------------------------


def test_mcnemar_exact_p_equals_the_binomial_test_of_discordant_pairs():
    a, b = paired_outcomes(both=80, a_only=9, b_only=2, neither=9)
    result = stats.paired_accuracy_test(a, b)
    assert result.test == "mcnemar"
    # Exact McNemar: two-sided binomial test of 2 successes in 11 discordant pairs, p = 134 / 2048.
    assert result.p_value == pytest.approx(scipy_stats.binomtest(2, 11, 0.5).pvalue)
    assert result.p_value == pytest.approx(134 / 2048)
    assert not result.significant
    assert (result.n_a_better, result.n_b_better, result.n_items) == (9, 2, 100)
    assert result.difference == pytest.approx(0.07)
    assert result.diff_low < 0.07 < result.diff_high


def test_mcnemar_flags_a_lopsided_table_and_signs_the_difference():
    a, b = paired_outcomes(both=60, a_only=1, b_only=15, neither=24)
    result = stats.paired_accuracy_test(a, b)
    assert result.significant and result.p_value < 0.001
    assert result.difference == pytest.approx(-0.14) and result.diff_high < 0


def test_identical_arms_have_p_one_and_no_difference():
    a, _ = paired_outcomes(both=30, a_only=10, b_only=0, neither=10)
    for test in (stats.paired_accuracy_test(a, a), stats.paired_accuracy_test(np.tile(a, (3, 1)), a)):
        assert test.p_value == 1.0
        assert (test.difference, test.diff_low, test.diff_high) == (0.0, 0.0, 0.0)


def test_seeds_that_agree_on_every_item_get_the_exact_test_of_one_seed():
    a, b = paired_outcomes(both=50, a_only=14, b_only=5, neither=31)
    repeated = stats.paired_accuracy_test(np.tile(a, (3, 1)), np.tile(b, (2, 1)))
    assert repeated == stats.paired_accuracy_test(a, b)
    assert repeated.test == "mcnemar" and repeated.p_value == pytest.approx(scipy_stats.binomtest(5, 19).pvalue)


def test_clustered_mcnemar_on_seed_means():
    # a: two seeds, right on items 0-3 in one of them and on items 4-5 in both; b: one seed, right
    # on item 6 only. d = (.5, .5, .5, .5, 1, 1, -1, 0, 0, 0): sum 3, sum of squares 4, 7 discordant
    # items. Durkalski's statistic 9/4 is the square of t = 1.5, referred to 6 degrees of freedom.
    a = np.zeros((2, 10))
    a[0, :4] = 1
    a[:, 4:6] = 1
    b = np.zeros(10)
    b[6] = 1
    result = stats.paired_accuracy_test(a, b)
    assert result.test == "mcnemar_clustered"
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(1.5, df=6))
    assert (result.difference, result.n_a_better, result.n_b_better) == (pytest.approx(0.3), 6, 1)


def test_clustered_mcnemar_with_one_discordant_item_finds_nothing():
    a = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert stats.paired_accuracy_test(a, np.array([0.0, 0.0, 1.0])).p_value == 1.0


def test_paired_tests_need_the_same_items():
    with pytest.raises(stats.StatsError, match="a has 3 test items and b has 4"):
        stats.paired_accuracy_test(np.ones(3), np.ones(4))
    with pytest.raises(stats.StatsError, match="a has 3 test items and b has 2"):
        stats.paired_bootstrap_test(np.ones(3), np.ones(2))


def test_paired_bootstrap_detects_a_shift_and_reports_a_minus_b():
    rng = np.random.default_rng(3)
    b = rng.normal(50, 20, size=(1, 300))
    a = b + rng.normal(3, 5, size=(3, 300))  # every item about 3 points better under a
    result = stats.paired_bootstrap_test(a, b)
    assert result.test == "paired_bootstrap"
    assert result.difference == pytest.approx((a.mean(axis=0) - b[0]).mean())
    assert result.diff_low < result.difference < result.diff_high and result.diff_low > 0
    assert result.significant and result.p_value == pytest.approx(1 / 2001)


def test_paired_bootstrap_sees_no_difference_between_noisy_copies():
    rng = np.random.default_rng(4)
    base = rng.normal(50, 20, size=300)
    result = stats.paired_bootstrap_test(base + rng.normal(0, 5, (2, 300)), base + rng.normal(0, 5, (2, 300)))
    assert not result.significant and result.diff_low < 0 < result.diff_high


def test_paired_bootstrap_of_a_constant_shift():
    b = np.arange(10.0)
    shifted = stats.paired_bootstrap_test(b + 2.0, b, resamples=999)
    assert (shifted.difference, shifted.diff_low, shifted.diff_high) == (2.0, 2.0, 2.0)
    assert shifted.p_value == pytest.approx(1 / 1000)
    assert stats.paired_bootstrap_test(b, b).p_value == 1.0


def test_results_are_json_friendly():
    a, b = paired_outcomes(both=5, a_only=3, b_only=1, neither=1)
    for result in (stats.accuracy_interval(a), stats.paired_accuracy_test(a, b)):
        assert json.loads(json.dumps(asdict(result))) == result.to_dict()


# ---- learning-curve crossover ---------------------------------------------------------------------

FEW_SHOT = [(0, 0.40), (1, 0.55), (2, 0.60), (4, 0.65), (8, 0.66)]


def test_crossover_interpolates_in_log_n():
    # Few-shot is flat at 0.66 beyond k = 8; fine-tuning goes 0.60 -> 0.80 from n = 32 to 64, so it
    # passes 0.66 three tenths of the way along log n: n = 32 * 2^0.3.
    fine_tuning = [(16, 0.50), (32, 0.60), (64, 0.80)]
    assert stats.crossover(fine_tuning, FEW_SHOT) == pytest.approx(32 * 2**0.3)


def test_crossover_solves_on_the_reference_knots_inside_a_segment():
    # reference rises to 0.75 at n = 100 then stays flat; curve is linear in log10 n, 0.5 at 10 and
    # 0.9 at 1000. At n = 100 the gap is -0.05, at 1000 +0.15: the root is a quarter of the way,
    # n = 100 * 10^0.25. (Interpolating only at the curve's own points would give a wrong n.)
    curve = [(10, 0.5), (1000, 0.9)]
    reference = [(1, 0.6), (100, 0.75)]
    assert stats.crossover(curve, reference) == pytest.approx(100 * 10**0.25)


def test_crossover_none_when_fine_tuning_never_overtakes():
    assert stats.crossover([(16, 0.40), (32, 0.50), (64, 0.66)], FEW_SHOT) is None  # a tie is not overtaking
    assert stats.crossover([(0, 0.9)], FEW_SHOT) is None  # no positive n to place on a log axis


def test_crossover_when_already_ahead_is_the_first_point():
    assert stats.crossover([(16, 0.7), (32, 0.8)], FEW_SHOT) == 16.0


def test_crossover_against_zero_shot_only():
    assert stats.crossover([(16, 0.3), (64, 0.5)], [(0, 0.4)]) == pytest.approx(32.0)


def test_crossover_rejects_duplicate_n():
    with pytest.raises(stats.StatsError, match="n = 16 appears twice"):
        stats.crossover([(16, 0.5), (16, 0.6)], FEW_SHOT)
    with pytest.raises(stats.StatsError, match="no points"):
        stats.crossover([], FEW_SHOT)


# ---- costs ----------------------------------------------------------------------------------------


def test_inference_flops_are_two_per_parameter_per_token():
    assert stats.inference_flops(1e9, 100, 20) == 2.4e11
    assert stats.inference_flops(124e6, 12.5, 3.5) == pytest.approx(2 * 124e6 * 16)


def test_training_flops_full_and_lora():
    assert stats.training_flops(1e9, 1e6) == 6e15  # full: 6 N T
    # LoRA on a 1e9 model with 4e6 adapter parameters: forward + activation gradients 4 N T,
    # weight gradients 2 N_trainable T.
    assert stats.training_flops(1e9, 1e6, trainable_params=4e6) == pytest.approx(4e15 + 8e12)
    with pytest.raises(stats.StatsError, match="trainable_params <= params"):
        stats.training_flops(1e6, 10, trainable_params=2e6)


def test_break_even_queries():
    # 1e15 FLOPs of training repaid at 2e9 FLOPs saved per query: after 5e5 queries.
    assert stats.break_even_queries(1e15, 1e9, 3e9) == 5e5
    assert stats.break_even_queries(0.0, 1e9, 3e9) == 0.0
    assert stats.break_even_queries(1e15, 3e9, 3e9) is None  # no saving per query: never
    assert stats.break_even_queries(1e15, 4e9, 3e9) is None
    with pytest.raises(stats.StatsError, match="non-negative"):
        stats.break_even_queries(-1.0, 1.0, 2.0)
