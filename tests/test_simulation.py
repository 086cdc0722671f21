"""Repeated-sampling checks of the statistics and the decision rule: issue 5's validity checks.

Per-example correctness is planted from known per-item success probabilities, so every arm's true
accuracy is known. Test items vary in difficulty, as real ones do: item i is answered correctly
with probability p_i ~ Beta(2a, 2(1 - a)) (mean a, the arm's true accuracy; a wide spread between
easy and hard items), independently for each seed, and each replication draws fresh items. The
checks:
- 95% interval coverage within 93-97% for true accuracies 0.2-0.95 at n >= 100 items, for the
  one-seed (Wilson) and the several-seed (Wilson with a design-effect n) intervals;
- McNemar (exact and clustered) rejects at most ~5% of the time under no difference, and does
  reject a clear difference;
- the recommendation picks the truly cheapest adequate arm at least 95% of the time when effects
  are clear;
- the report's reversed-order rule for the two scoring views (report/checks.py) fires in at most 5%
  of runs when the views agree in truth, and in at least 90% when they clearly disagree.

Every random draw comes from a fixed seed, so the tests are deterministic. `pytest -s` prints the
measured rates. Budget: well under a minute on one thread.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from tuneorprompt import decide, stats
from tuneorprompt.report import checks

ACCURACIES = (0.2, 0.5, 0.8, 0.95)
ACCURACY_GRID = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95)


def draw(rng: np.random.Generator, p_item: np.ndarray, n_seeds: int) -> np.ndarray:
    """[reps, n_seeds, n_items] 0/1 outcomes, item i right with probability p_item[..., i] in every seed."""
    reps, _, n_items = p_item.shape
    return (rng.random((reps, n_seeds, n_items)) < p_item).astype(float)


def plant(rng: np.random.Generator, accuracy: float, n_items: int, n_seeds: int, reps: int) -> np.ndarray:
    """An arm of true (population) accuracy `accuracy` on items of varied difficulty."""
    return draw(rng, rng.beta(2 * accuracy, 2 * (1 - accuracy), size=(reps, 1, n_items)), n_seeds)


def plant_noisy(rng: np.random.Generator, accuracy: float, n_items: int, n_seeds: int, reps: int) -> np.ndarray:
    """Every item right with probability `accuracy`: seeds disagree as much as they can."""
    return draw(rng, np.full((reps, 1, n_items), accuracy), n_seeds)


def plant_steady(rng: np.random.Generator, accuracy: float, n_items: int, n_seeds: int, reps: int) -> np.ndarray:
    """Items either always right or always wrong: seeds agree on every item (a deterministic arm)."""
    return draw(rng, (rng.random((reps, 1, n_items)) < accuracy).astype(float), n_seeds)


# ---- interval coverage ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_items", [100, 200, 500])
def test_wilson_coverage_single_seed(n_items):
    # With one seed the number of correct items is Binomial(n, a) whatever the spread of item
    # difficulty, so coverage is computed exactly: the total probability of the planted outcome
    # vectors (k right, n - k wrong) whose interval covers a. This is the limit of infinitely many
    # replications, with no Monte Carlo error.
    intervals = [stats.accuracy_interval(np.r_[np.ones(k), np.zeros(n_items - k)]) for k in range(n_items + 1)]
    assert {i.method for i in intervals} == {"wilson"}
    low = np.array([i.low for i in intervals])
    high = np.array([i.high for i in intervals])
    counts = np.arange(n_items + 1)
    for accuracy in np.round(np.arange(0.2, 0.951, 0.05), 2):
        probability = binom.pmf(counts, n_items, accuracy)
        coverage = probability[(low <= accuracy) & (accuracy <= high)].sum()
        # The recommendation's risk: an arm whose true accuracy equals the target is declared
        # adequate when its lower bound reaches it (nominally 2.5%).
        optimistic = probability[low >= accuracy].sum()
        print(f"wilson n={n_items} accuracy={accuracy:.2f}: coverage {coverage:.3f}, "
              f"lower bound >= truth {optimistic:.3f}")
        assert 0.93 <= coverage <= 0.97
        assert optimistic <= 0.04


# Seeds that agree on every item (plant_steady) give the plain Wilson interval, covered exactly above.
@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("planting", ["varied", "noisy"])
def test_coverage_several_seeds(planting, n_seeds):
    plant_arm = {"varied": plant, "noisy": plant_noisy}[planting]
    reps, n_items = 3000, 100
    rng = np.random.default_rng(1000 + 10 * n_seeds + len(planting))
    rates = {}
    for accuracy in ACCURACY_GRID:
        intervals = [stats.accuracy_interval(correct) for correct in plant_arm(rng, accuracy, n_items, n_seeds, reps)]
        coverage = np.mean([i.low <= accuracy <= i.high for i in intervals])
        optimistic = np.mean([i.low >= accuracy for i in intervals])
        rates[accuracy] = (coverage, optimistic)
    print(f"design-effect Wilson, {planting} items, {n_seeds} seeds, n={n_items} (Monte Carlo s.e. "
          f"{np.sqrt(0.95 * 0.05 / reps):.3f}): coverage / lower bound >= truth "
          + ", ".join(f"{a}: {c:.3f}/{o:.3f}" for a, (c, o) in rates.items()))
    # 93-97% is the band; the one-sided rate allows 3 Monte Carlo s.e. above ~2.5-3%.
    assert all(0.93 <= coverage <= 0.97 for coverage, _ in rates.values())
    assert all(optimistic <= 0.04 for _, optimistic in rates.values())


# ---- McNemar under the null and under a clear difference ------------------------------------------

# (how a is planted, a's seeds, how b is planted, b's seeds, the test that applies). Both arms
# share the true accuracy; item difficulties are drawn independently per arm, so the arms disagree
# item by item. The last setting is the one where tests on rounded or majority-vote outcomes
# fail: a noisy arm against one whose seeds always agree.
NULL_SETTINGS = {
    "1 seed vs 1 seed": (plant, 1, plant, 1, "mcnemar"),
    "3 seeds vs 1 seed": (plant, 3, plant, 1, "mcnemar_clustered"),
    "3 noisy seeds vs 3 steady seeds": (plant_noisy, 3, plant_steady, 3, "mcnemar_clustered"),
}


def paired_tests(setting: str, accuracies: tuple[float, float], n_items: int, reps: int, seed: int) -> list:
    plant_a, a_seeds, plant_b, b_seeds, _ = NULL_SETTINGS[setting]
    rng = np.random.default_rng(seed)
    a = plant_a(rng, accuracies[0], n_items, a_seeds, reps)
    b = plant_b(rng, accuracies[1], n_items, b_seeds, reps)
    # resamples only sets the bootstrap interval of the difference; the p-value does not use it.
    return [stats.paired_accuracy_test(a[r], b[r], resamples=200) for r in range(reps)]


@pytest.mark.parametrize("setting", NULL_SETTINGS)
def test_mcnemar_false_positive_rate_under_no_difference(setting):
    reps, n_items = 1500, 100
    rates = {}
    for accuracy in ACCURACIES:
        tests = paired_tests(setting, (accuracy, accuracy), n_items, reps, seed=2000 + round(100 * accuracy))
        # The setting exercises the test it names (seeds of a varied arm can agree everywhere by chance).
        assert np.mean([t.test == NULL_SETTINGS[setting][-1] for t in tests]) >= 0.9
        rates[accuracy] = np.mean([t.significant for t in tests])
    print(f"McNemar ({NULL_SETTINGS[setting][-1]}), {setting}, n={n_items}, no difference: significant at 5% in "
          + ", ".join(f"{rate:.1%} at accuracy {accuracy}" for accuracy, rate in rates.items()))
    # Nominal 5%; 6.5% allows 3 Monte Carlo standard errors (0.56 points at 1500 replications).
    assert max(rates.values()) <= 0.065


@pytest.mark.parametrize("setting", NULL_SETTINGS)
def test_mcnemar_detects_a_clear_difference(setting):
    reps, n_items = 200, 300
    tests = paired_tests(setting, (0.8, 0.65), n_items, reps, seed=3000)
    power = np.mean([t.significant and t.difference > 0 for t in tests])
    print(f"McNemar, {setting}, n={n_items}: 0.80 vs 0.65 significant (right direction) in {power:.1%}")
    assert power >= 0.8


# ---- the recommendation ---------------------------------------------------------------------------

# Cheapest first: (name, true accuracy, seeds, FLOPs per query, training FLOPs).
ARMS = [
    ("baseline", 0.55, 1, 1.0e9, 0.0),
    ("instruction", 0.68, 1, 1.2e9, 0.0),
    ("few_shot", 0.88, 3, 6.0e9, 0.0),
    ("lora", 0.93, 3, 1.0e9, 5e15),
]


def recommendations(target: float, true_accuracies: list[float], reps: int, seed: int, **options) -> list[str | None]:
    rng = np.random.default_rng(seed)
    n_items = 200
    planted = {
        name: plant(rng, accuracy, n_items, seeds, reps)
        for (name, _, seeds, _, _), accuracy in zip(ARMS, true_accuracies)
    }
    chosen = []
    for r in range(reps):
        outcomes = [
            decide.ArmOutcome(name, planted[name][r], per_query_flops=per_query, one_time_flops=one_time)
            for name, _, _, per_query, one_time in ARMS
        ]
        chosen.append(decide.recommend(outcomes, target, **options).arm)
    return chosen


@pytest.mark.parametrize(
    ("case", "target", "accuracies", "options", "truth"),
    [
        # few_shot (0.88) is the cheapest arm truly above 0.75; instruction (0.68) is clearly below.
        ("strict", 0.75, [a[1] for a in ARMS], {}, "few_shot"),
        ("lenient", 0.75, [a[1] for a in ARMS], {"lenient": True}, "few_shot"),
        # At 1e7 queries lora's training is repaid (1.5e16 FLOPs in total against few_shot's 6e16).
        ("by total cost", 0.75, [a[1] for a in ARMS], {"expected_queries": 1e7}, "lora"),
        # Only lora is adequate.
        ("only fine-tuning", 0.85, [0.55, 0.68, 0.74, 0.93], {}, "lora"),
        # No arm is adequate: the answer must be None, not the best arm.
        ("none adequate", 0.9, [0.55, 0.68, 0.78, 0.80], {}, None),
    ],
)
def test_recommendation_picks_the_truly_cheapest_adequate_arm(case, target, accuracies, options, truth):
    reps = 300
    chosen = recommendations(target, accuracies, reps, seed=4000 + len(case), **options)
    rate = np.mean([arm == truth for arm in chosen])
    print(f"recommendation, {case} (target {target}, true accuracies {accuracies}, n=200): "
          f"picked {truth} in {rate:.1%} of {reps}")
    assert rate >= 0.95


# ---- the scoring-view warning -------------------------------------------------------------------

def plant_views(rng: np.random.Generator, strict: float, lenient: float, n_items: int, reps: int,
                redrawn: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """[reps, 1, n_items] strict and lenient outcomes of one arm. One uniform draw per item couples
    the views (an item right strict is right lenient when lenient >= strict); `redrawn` of the items
    get an independent lenient draw, the item-by-item noise of two matchers that agree on average."""
    u = rng.random((reps, 1, n_items))
    strict_outcomes, lenient_outcomes = (u < strict).astype(float), (u < lenient).astype(float)
    noise = rng.random(u.shape) < redrawn
    lenient_outcomes[noise] = (rng.random(int(noise.sum())) < lenient).astype(float)
    return strict_outcomes, lenient_outcomes


def reversal_rate(a: tuple[float, float], b: tuple[float, float], n_items: int, reps: int, seed: int,
                  redrawn: float = 0.0) -> float:
    rng = np.random.default_rng(seed)
    strict_a, lenient_a = plant_views(rng, *a, n_items, reps, redrawn)
    strict_b, lenient_b = plant_views(rng, *b, n_items, reps, redrawn)
    return float(np.mean([
        checks.views_reversed(strict_a[r], lenient_a[r], strict_b[r], lenient_b[r]) is not None for r in range(reps)
    ]))


@pytest.mark.parametrize(
    ("a", "b"),
    [((0.5, 0.5), (0.5, 0.5)),  # equal arms, views equal on average
     ((0.5, 0.55), (0.5, 0.55)),  # the lenient view sees a few more right answers in both arms
     ((0.6, 0.6), (0.5, 0.5))],  # a real difference that both views see
)
def test_views_that_agree_rarely_raise_a_reversed_order(a, b):
    """Views that agree in truth, with 10% of items scored independently by the lenient view: a
    reversed, significant order arises by chance in at most ~5% of runs (it needs a significant
    result in one view and the opposite sign in the other)."""
    rate = reversal_rate(a, b, n_items=200, reps=1000, seed=5000 + round(100 * a[0] + 10 * a[1]), redrawn=0.1)
    print(f"views agree ({a} vs {b}, n=200): reversed and significant in {rate:.1%}")
    assert rate <= 0.05


def test_views_that_truly_disagree_are_caught():
    """a is 10 points ahead strict, b 6 points ahead lenient (neither arm's views more than 10 points apart)."""
    rate = reversal_rate((0.62, 0.55), (0.52, 0.61), n_items=500, reps=200, seed=6000)
    print(f"views disagree (n=500): reversed and significant in {rate:.1%}")
    assert rate >= 0.9
