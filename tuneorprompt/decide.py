"""The recommendation: the cheapest arm whose accuracy meets the target, stated with its evidence.

Arms are ordered by cost (`ladder_order`); the recommended arm is the first in that order that
`meets_target`; the reason sentence gives its accuracy and interval, its cost, the runner-up, and
the paired test between the two, worded after the test's p-value so that it never claims a
difference the test does not support.

One cost order: a run estimates every arm's cost before anything runs (`CostEstimate`, from token
counts on dev and the model's size; see `arms.estimate_cost`) and orders the arms once with
`ladder_order`. The `ladder` strategy runs them in that order and stops at the first that meets the
target; the recommendation is given the same order, and applies the same rule to the same
(deterministic) interval, so the arm the ladder stops at is the arm recommended.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Protocol, Sequence, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from tuneorprompt import stats
from tuneorprompt.stats import Interval, PairedTest


class DecisionError(ValueError):
    """Arms or a target that cannot be compared; the message names the arm or the value."""


@dataclass(frozen=True)
class ArmOutcome:
    """One arm's test outcomes and costs, as the decision sees them."""

    name: str
    correct: np.ndarray  # [n_seeds, n_items] per-item correctness in [0, 1], items in the shared test order
    per_query_flops: float  # mean inference FLOPs per test query; 0 when unknown (a served endpoint)
    one_time_flops: float = 0.0  # training FLOPs (mean over seeds); 0 for prompt arms

    def __post_init__(self) -> None:
        correct = stats.as_matrix(self.correct, f"arm {self.name!r}: correct", unit_interval=True)
        object.__setattr__(self, "correct", correct)  # frozen: store the validated float matrix
        for field in ("per_query_flops", "one_time_flops"):
            value = getattr(self, field)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
                raise DecisionError(f"arm {self.name!r}: {field} = {value!r}, expected a non-negative number")


@dataclass(frozen=True)
class CostEstimate:
    """An arm's cost as estimated before it runs, in FLOPs (see `arms.estimate_cost`)."""

    name: str
    per_query_flops: float
    one_time_flops: float

    def to_dict(self) -> dict:
        return asdict(self)


class Costed(Protocol):
    """Anything with an arm's name and costs: an ArmOutcome, or costs estimated before a run."""

    name: str
    per_query_flops: float
    one_time_flops: float


C = TypeVar("C", bound=Costed)


@dataclass(frozen=True)
class Recommendation:
    arm: str | None  # the cheapest arm that meets the target; None when none does
    reason: str  # one paragraph with the numbers
    runner_up: str | None  # next costlier arm that also meets the target, else the most accurate other arm
    comparison: PairedTest | None  # arm vs runner_up on the same items (difference = arm - runner_up)
    best: str  # the most accurate arm by point estimate (ties: the cheaper)
    shortfall: float | None  # when no arm meets the target: target minus the best arm's compared figure
    hint: str | None  # what the learning curve suggests, filled in by the caller
    meets_target: dict[str, bool]
    accuracy: dict[str, Interval]  # the interval each arm was judged on
    order: tuple[str, ...]  # cheapest first
    target: float
    lenient: bool
    level: float
    expected_queries: float | None

    def to_dict(self) -> dict:
        return asdict(self)


# ---- ordering and the target rule -----------------------------------------------------------------


def cost_key(arm: Costed, expected_queries: float | None = None) -> tuple[float, float]:
    """Sort key, cheapest first.

    With an expected query volume Q: the total cost one_time + Q * per_query (ties: less up front).
    Without one there is no exchange rate between a one-time and a per-query cost, so one-time cost
    comes first and per-query cost breaks ties: every arm that needs no training is tried before
    any that does (prompt first, fine-tune if needed), prompt arms by their per-query cost,
    fine-tuned arms by their training cost.
    """
    if expected_queries is None:
        return (arm.one_time_flops, arm.per_query_flops)
    return (arm.one_time_flops + expected_queries * arm.per_query_flops, arm.one_time_flops)


def ladder_order(arms: Sequence[C], expected_queries: float | None = None) -> list[C]:
    """`arms` cheapest first by `cost_key`; a stable sort, so equal costs keep the given order."""
    if expected_queries is not None and not (math.isfinite(expected_queries) and expected_queries >= 0):
        raise DecisionError(f"expected_queries = {expected_queries!r}: expected a non-negative number")
    return sorted(arms, key=lambda arm: cost_key(arm, expected_queries))


def _check_target(target: float) -> None:
    if not 0 <= target <= 1:
        raise DecisionError(f"target = {target!r}: expected an accuracy between 0 and 1")


def _judged(interval: Interval, lenient: bool) -> float:
    """The figure compared with the target: the lower confidence bound, or the point estimate."""
    return interval.value if lenient else interval.low


def _reaches(interval: Interval, target: float, lenient: bool) -> bool:
    return _judged(interval, lenient) >= target


def meets_target(
    correct: ArrayLike,
    target: float,
    *,
    lenient: bool = False,
    level: float = stats.DEFAULT_LEVEL,
) -> bool:
    """Does an arm with outcomes `correct` `[n_seeds, n_items]` meet the accuracy target? Its lower
    `level` confidence bound (its point estimate if lenient) must be at or above the target."""
    _check_target(target)
    return _reaches(stats.accuracy_interval(correct, level=level), target, lenient)


# ---- the recommendation ---------------------------------------------------------------------------


def recommend(
    outcomes: Sequence[ArmOutcome],
    target: float,
    *,
    lenient: bool = False,
    expected_queries: float | None = None,
    level: float = stats.DEFAULT_LEVEL,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
    learning_curve_hint: str | None = None,
    order: Sequence[str] | None = None,
) -> Recommendation:
    """The cheapest arm that meets `target`, or None with the best arm and its shortfall.

    outcomes: every arm scored on the same test items. expected_queries: order arms by total cost
    at that query volume (see `cost_key`). order: the arms' names cheapest first, as the run
    estimated them before running (the ladder's order); without it, arms are ordered by the costs in
    `outcomes`. resamples, seed: for the bootstrap interval of the paired difference.
    learning_curve_hint: appended to the reason when no arm meets the target.
    """
    _check_target(target)
    _check_arms(outcomes)
    ordered = _in_order(outcomes, order) if order is not None else ladder_order(outcomes, expected_queries)
    accuracy = {arm.name: stats.accuracy_interval(arm.correct, level=level) for arm in ordered}
    meets = {name: _reaches(interval, target, lenient) for name, interval in accuracy.items()}
    best = max(ordered, key=lambda arm: accuracy[arm.name].value)  # max keeps the first (cheapest) of ties
    chosen = next((arm for arm in ordered if meets[arm.name]), None)
    wording = _Wording(target, lenient, level, expected_queries, accuracy)

    runner_up = comparison = shortfall = None
    if chosen is not None:
        runner_up = _runner_up(chosen, ordered, meets, accuracy)
        if runner_up is not None:
            comparison = stats.paired_accuracy_test(
                chosen.correct, runner_up.correct, level=level, resamples=resamples, seed=seed
            )
        reason = wording.chosen_reason(chosen, runner_up, comparison, meets)
    else:
        shortfall = target - _judged(accuracy[best.name], lenient)
        reason = wording.none_reason(best, shortfall)
        if learning_curve_hint:
            reason += " " + learning_curve_hint

    return Recommendation(
        arm=chosen.name if chosen else None,
        reason=reason,
        runner_up=runner_up.name if runner_up else None,
        comparison=comparison,
        best=best.name,
        shortfall=shortfall,
        hint=learning_curve_hint,
        meets_target=meets,
        accuracy=accuracy,
        order=tuple(arm.name for arm in ordered),
        target=target,
        lenient=lenient,
        level=level,
        expected_queries=expected_queries,
    )


def _in_order(outcomes: Sequence[ArmOutcome], order: Sequence[str]) -> list[ArmOutcome]:
    rank = {name: i for i, name in enumerate(order)}
    missing = [arm.name for arm in outcomes if arm.name not in rank]
    if missing:
        raise DecisionError(f"arms {', '.join(missing)} are not in the cost order {list(order)}")
    return sorted(outcomes, key=lambda arm: rank[arm.name])


def _check_arms(outcomes: Sequence[ArmOutcome]) -> None:
    if not outcomes:
        raise DecisionError("no arms to compare")
    names = [arm.name for arm in outcomes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DecisionError(f"arm names must be unique; repeated: {', '.join(duplicates)}")
    n_items = {arm.name: arm.correct.shape[1] for arm in outcomes}
    if len(set(n_items.values())) > 1:
        sizes = ", ".join(f"{name}: {n}" for name, n in n_items.items())
        raise DecisionError(
            f"arms were scored on different numbers of test items ({sizes}); they must share one test set"
        )


def _runner_up(
    chosen: ArmOutcome, ordered: list[ArmOutcome], meets: dict[str, bool], accuracy: dict[str, Interval]
) -> ArmOutcome | None:
    """The next costlier arm that also meets the target; failing that, the most accurate other arm."""
    later = ordered[ordered.index(chosen) + 1:]
    adequate = next((arm for arm in later if meets[arm.name]), None)
    if adequate is not None:
        return adequate
    others = [arm for arm in ordered if arm is not chosen]
    return max(others, key=lambda arm: accuracy[arm.name].value) if others else None


# ---- wording --------------------------------------------------------------------------------------


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f} points"


@dataclass(frozen=True)
class _Wording:
    """The decision's settings, for the sentences that state it."""

    target: float
    lenient: bool
    level: float
    expected_queries: float | None
    accuracy: dict[str, Interval]

    @property
    def criterion(self) -> str:
        if self.lenient:
            return "point estimate at or above the target (lenient)"
        return f"lower {self.level:.0%} confidence bound at or above the target"

    def figures(self, arm: ArmOutcome) -> str:
        interval = self.accuracy[arm.name]
        return f"{interval.value:.1%} ({self.level:.0%} CI {interval.low:.1%}-{interval.high:.1%})"

    def cost(self, arm: ArmOutcome) -> str:
        parts = [f"{arm.per_query_flops:.3g} FLOPs per query" if arm.per_query_flops else "per-query FLOPs unknown"]
        parts.append(f"{arm.one_time_flops:.3g} training FLOPs" if arm.one_time_flops else "no training")
        if self.expected_queries is not None:
            total = arm.one_time_flops + self.expected_queries * arm.per_query_flops
            parts.append(f"{total:.3g} FLOPs in total over {self.expected_queries:g} queries")
        return ", ".join(parts)

    def chosen_reason(
        self, chosen: ArmOutcome, runner_up: ArmOutcome | None, test: PairedTest | None, meets: dict[str, bool]
    ) -> str:
        reason = (
            f"{chosen.name} is the cheapest arm that meets the {self.target:.1%} accuracy target "
            f"({self.criterion}): accuracy {self.figures(chosen)}; cost: {self.cost(chosen)}."
        )
        if runner_up is None or test is None:
            return reason + " It is the only arm."
        role = "the next costlier arm that also meets the target" if meets[runner_up.name] else (
            "the most accurate other arm (it does not meet the target)"
        )
        reason += f" Runner-up: {runner_up.name}, {role}: {self.figures(runner_up)}; cost: {self.cost(runner_up)}."
        return reason + " " + self.comparison_sentence(chosen.name, runner_up.name, test)

    def comparison_sentence(self, name: str, other: str, test: PairedTest) -> str:
        evidence = (
            f"{name} minus {other} = {_points(test.difference)}, {self.level:.0%} CI "
            f"{_points(test.diff_low)} to {_points(test.diff_high)}; "
            f"{'McNemar exact' if test.test == 'mcnemar' else 'clustered McNemar'} p = {test.p_value:.3g}"
        )
        if not test.significant:
            return f"No significant difference in accuracy between {name} and {other} at {self.level:.0%} ({evidence})."
        winner, loser = (name, other) if test.difference > 0 else (other, name)
        return f"{winner} is significantly more accurate than {loser} at {self.level:.0%} ({evidence})."

    def none_reason(self, best: ArmOutcome, shortfall: float) -> str:
        interval = self.accuracy[best.name]
        reason = (
            f"No arm meets the {self.target:.1%} accuracy target ({self.criterion}). "
            f"The most accurate arm is {best.name}: {self.figures(best)}; cost: {self.cost(best)}. "
        )
        if self.lenient:
            return reason + f"It is {100 * shortfall:.1f} points short of the target."
        if interval.value < self.target:
            return reason + (
                f"It is {100 * (self.target - interval.value):.1f} points short of the target "
                f"(its lower bound {100 * shortfall:.1f} points)."
            )
        return reason + (
            f"Its point estimate reaches the target, but its lower bound is {100 * shortfall:.1f} points short; "
            "more test items would narrow the interval."
        )
