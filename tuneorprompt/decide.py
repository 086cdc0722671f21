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

Two scoring views. The rule above uses the strict view only (the task's matcher on the extracted
answer). When the arms also carry the lenient view (a reference answer anywhere in the reply), the
reason adds what the rule cannot see: the paired test between the best prompt arm and the best
fine-tuned arm in both views, how much of fine-tuning's gain is format (seen in the strict view
only) and how much content (seen in both), and, when no arm meets the target, what the evidence
suggests (`evidence_hints`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from tuneorprompt import stats
from tuneorprompt.stats import Interval, PairedTest


PROMPT_FAMILIES = frozenset({"prompt", "retrieval"})  # the model's weights unchanged (`arms.Arm.family`)
# Strict and lenient accuracy further apart than this (10 points) is more than a matcher's rough
# edges: most of the arm's right answers, or most of its "right" answers, depend on the view.
VIEW_GAP = 0.10


class DecisionError(ValueError):
    """Arms or a target that cannot be compared; the message names the arm or the value."""


@dataclass(frozen=True)
class ArmOutcome:
    """One arm's test outcomes and costs, as the decision sees them."""

    name: str
    correct: np.ndarray  # [n_seeds, n_items] per-item correctness in [0, 1], items in the shared test order
    per_query_flops: float | None  # mean inference FLOPs per test query; None when the model's size is unknown
    one_time_flops: float = 0.0  # training FLOPs (mean over seeds); 0 for prompt arms
    family: str = ""  # "prompt", "retrieval", "finetune" (`arms.Arm.family`): which side of the question; "" when unknown
    correct_lenient: np.ndarray | None = None  # the lenient view, same shape as `correct`; None when not scored
    per_query_tokens: float | None = None  # mean prompt + generated tokens per test query; ranks when FLOPs are unknown

    @property
    def fine_tuned(self) -> bool:
        return self.family == "finetune"

    @property
    def prompted(self) -> bool:
        return self.family in PROMPT_FAMILIES

    def __post_init__(self) -> None:
        correct = stats.as_matrix(self.correct, f"arm {self.name!r}: correct", unit_interval=True)
        object.__setattr__(self, "correct", correct)  # frozen: store the validated float matrix
        if self.correct_lenient is not None:
            lenient = stats.as_matrix(self.correct_lenient, f"arm {self.name!r}: correct_lenient", unit_interval=True)
            if lenient.shape != correct.shape:
                raise DecisionError(
                    f"arm {self.name!r}: correct_lenient has shape {lenient.shape}, correct {correct.shape}"
                )
            object.__setattr__(self, "correct_lenient", lenient)
        _check_costs(self)


@dataclass(frozen=True)
class CostEstimate:
    """An arm's cost as estimated before it runs (see `arms.estimate_cost`): FLOPs when the model's size
    is known, and always the tokens per query."""

    name: str
    per_query_flops: float | None
    one_time_flops: float
    per_query_tokens: float

    def __post_init__(self) -> None:
        _check_costs(self)

    def to_dict(self) -> dict:
        return asdict(self)


class Costed(Protocol):
    """Anything with an arm's name and costs: an ArmOutcome, or costs estimated before a run."""

    name: str
    per_query_flops: float | None
    one_time_flops: float
    per_query_tokens: float | None


def _check_costs(arm: Costed) -> None:
    for field in ("per_query_flops", "one_time_flops", "per_query_tokens"):
        value = getattr(arm, field)
        if value is None and field != "one_time_flops":
            continue
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise DecisionError(f"arm {arm.name!r}: {field} = {value!r}, expected a non-negative number")


C = TypeVar("C", bound=Costed)


@dataclass(frozen=True)
class PromptVsFinetune:
    """The best prompt arm against the best fine-tuned arm, on the same items, in both views.

    Differences are fine-tuned minus prompt. The strict gain splits into content, the gain the
    lenient view also sees (right answers the prompt arm lacked), and format, the rest: answers the
    prompt arm had in its reply but in a form the strict matcher rejected.
    """

    prompt_arm: str  # most accurate prompt arm in the strict view (ties: more accurate lenient, then cheaper)
    finetuned_arm: str  # most accurate fine-tuned arm, by the same rule
    strict: PairedTest
    lenient: PairedTest | None  # None when the arms carry no lenient view
    gain: float  # strict difference
    content: float | None  # lenient difference
    format: float | None  # gain - content

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    arm: str | None  # the cheapest arm that meets the target; None when none does
    status: str  # RECOMMENDED, UNDECIDED (no arm meets and one is undecided) or FALLS_SHORT (every arm does)
    headline: str  # at most three plain sentences: what to do, how sure, what it costs
    details: str  # the evidence behind the headline: runner-up, paired tests, views, hints
    reason: str  # headline and details as one paragraph
    runner_up: str | None  # next costlier arm that also meets the target, else the most accurate other arm
    comparison: PairedTest | None  # arm vs runner_up on the same items (difference = arm - runner_up)
    best: str  # the most accurate arm by point estimate (ties: the cheaper)
    shortfall: float | None  # when no arm meets the target: target minus the best arm's compared figure
    hint: str | None  # when no arm meets the target: what the evidence suggests (`evidence_hints`), else None
    meets_target: dict[str, bool]
    states: dict[str, str]  # each arm's interval against the target: MEETS, FALLS_SHORT or UNDECIDED
    items_to_decide: dict[str, int | None]  # undecided arms: test items that would decide (None: no number would)
    accuracy: dict[str, Interval]  # the interval each arm was judged on
    noninferiority: stats.NonInferiority | None  # the recommended arm against the most accurate, when that is another
    differences: dict[str, stats.DifferenceInterval]  # the reference arm (recommended, else best) minus each other arm
    order: tuple[str, ...]  # cheapest first
    target: float
    margin: float  # the non-inferiority margin, accuracy in [0, 1]
    lenient: bool
    level: float
    expected_queries: float | None
    prompt_vs_finetune: PromptVsFinetune | None = None  # when both kinds of arm were run
    cost_basis: str = "flops"  # what ranked the arms: "flops", or "tokens" per query when FLOPs are unknown

    def to_dict(self) -> dict:
        return asdict(self)


# ---- ordering and the target rule -----------------------------------------------------------------


def cost_basis(arms: Sequence[Costed]) -> str:
    """What the arms are ranked by: "flops" when every arm's FLOPs per query are known, else "tokens"
    per query (a served model of unknown size), which every arm must then have. Never a cost of 0 for
    an unknown one: that would rank arms in the order they were listed."""
    if all(arm.per_query_flops is not None for arm in arms):
        return "flops"
    missing = [arm.name for arm in arms if arm.per_query_tokens is None]
    if missing:
        raise DecisionError(f"arms {', '.join(missing)}: neither FLOPs nor tokens per query are known, so they "
                            "cannot be ranked by cost")
    return "tokens"


def mixed_cost_basis(arms: Sequence[Costed]) -> list[str]:
    """The arms whose FLOPs are known in a run ranked by tokens: a reader must know their FLOPs were not used."""
    return [arm.name for arm in arms if arm.per_query_flops is not None] if cost_basis(arms) == "tokens" else []


def cost_key(arm: Costed, expected_queries: float | None = None, basis: str = "flops") -> tuple[float, float]:
    """Sort key, cheapest first; per-query cost in FLOPs, or in tokens when `basis` is "tokens".

    With an expected query volume Q: the total cost one_time + Q * per_query (ties: less up front).
    Without one there is no exchange rate between a one-time and a per-query cost, so one-time cost
    comes first and per-query cost breaks ties: every arm that needs no training is tried before
    any that does (prompt first, fine-tune if needed), prompt arms by their per-query cost,
    fine-tuned arms by their training cost.
    """
    per_query = arm.per_query_flops if basis == "flops" else arm.per_query_tokens
    if expected_queries is None:
        return (arm.one_time_flops, per_query)
    return (arm.one_time_flops + expected_queries * per_query, arm.one_time_flops)


def ladder_order(arms: Sequence[C], expected_queries: float | None = None) -> list[C]:
    """`arms` cheapest first by `cost_key` on their `cost_basis`; a stable sort, so equal costs keep the
    given order."""
    if expected_queries is not None and not (math.isfinite(expected_queries) and expected_queries >= 0):
        raise DecisionError(f"expected_queries = {expected_queries!r}: expected a non-negative number")
    basis = cost_basis(arms) if arms else "flops"
    return sorted(arms, key=lambda arm: cost_key(arm, expected_queries, basis))


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


# Each arm's interval against the target, and the run's status when no arm meets it.
MEETS, FALLS_SHORT, UNDECIDED = "meets", "falls short", "undecided"
RECOMMENDED = "recommended"
DEFAULT_MARGIN = 0.02  # `target.margin`: 2 accuracy points


def target_state(interval: Interval, target: float) -> str:
    """An arm against the target, read from its whole interval: it meets the target (lower bound at
    or above it), falls short (upper bound below it), or is undecided (the interval straddles the
    target: this experiment cannot tell, and more test items would)."""
    if interval.low >= target:
        return MEETS
    return FALLS_SHORT if interval.high < target else UNDECIDED


# ---- the recommendation ---------------------------------------------------------------------------


def recommend(
    outcomes: Sequence[ArmOutcome],
    target: float,
    *,
    lenient: bool = False,
    margin: float = DEFAULT_MARGIN,
    expected_queries: float | None = None,
    level: float = stats.DEFAULT_LEVEL,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
    learning_curve_hint: str | None = None,
    labels_forecast: LabelsForecast | None = None,
    order: Sequence[str] | None = None,
) -> Recommendation:
    """The cheapest arm that meets `target`, or None with the best arm, its state and what would decide.

    outcomes: every arm scored on the same test items. margin: how far below the most accurate arm
    a cheaper recommended arm may be and still be called as good (a one-sided non-inferiority test).
    expected_queries: order arms by total cost at that query volume (see `cost_key`). order: the
    arms' names cheapest first, as the run estimated them before running (the ladder's order);
    without it, arms are ordered by the costs in `outcomes`. resamples, seed: for the bootstrap
    intervals of paired differences. learning_curve_hint: what the learning curve's last points
    suggest (`curves.curve_hint`); with the other evidence hints, added to the details when no arm
    meets the target. labels_forecast: the labels the fitted learning curve forecasts to reach the
    target; it replaces the hint, and is stated in the headline when every arm falls short.
    """
    _check_target(target)
    if not 0 <= margin < 1:
        raise DecisionError(f"margin = {margin!r}: expected an accuracy difference in [0, 1)")
    _check_arms(outcomes)
    ordered = _in_order(outcomes, order) if order is not None else ladder_order(outcomes, expected_queries)
    accuracy = {arm.name: stats.accuracy_interval(arm.correct, level=level) for arm in ordered}
    meets = {name: _reaches(interval, target, lenient) for name, interval in accuracy.items()}
    states = {name: target_state(interval, target) for name, interval in accuracy.items()}
    items = {
        name: stats.items_to_decide(interval.value, target, level=level)
        for name, interval in accuracy.items() if states[name] == UNDECIDED
    }
    best = max(ordered, key=lambda arm: accuracy[arm.name].value)  # max keeps the first (cheapest) of ties
    chosen = next((arm for arm in ordered if meets[arm.name]), None)
    options = dict(level=level, resamples=resamples, seed=seed)

    # Every paired test the verdict words is Holm-adjusted among all pairs of arms (`pairwise_holm`).
    runner_up = _runner_up(chosen, ordered, meets, accuracy) if chosen is not None else None
    comparison = None
    if runner_up is not None:
        comparison = stats.paired_accuracy_test(chosen.correct, runner_up.correct, **options)
    versus = compare_prompt_and_finetune(ordered, **options)
    retrieval = retrieval_comparison(ordered, **options) if chosen is None else None
    comparison, versus, retrieval = _holm_family(
        ordered, (comparison, chosen.name, runner_up.name) if comparison is not None else None, versus, retrieval,
        lambda a, b: stats.paired_accuracy_test(a, b, **options),
    )

    # "The cheaper arm is as good" is a tested claim, not an absent difference.
    noninferiority = None
    if chosen is not None and accuracy[best.name].value > accuracy[chosen.name].value:
        noninferiority = stats.noninferiority_test(chosen.correct, best.correct, margin, level=level)
    reference = chosen or best
    differences = {
        arm.name: stats.paired_difference_interval(reference.correct, arm.correct, **options)
        for arm in ordered if arm is not reference
    }

    wording = _Wording(target, lenient, level, margin, expected_queries, accuracy)
    shortfall = hint = None
    if chosen is not None:
        status = RECOMMENDED
        cheaper_undecided = [arm for arm in ordered[:ordered.index(chosen)] if states[arm.name] == UNDECIDED]
        headline = wording.recommended_headline(chosen, best, noninferiority, cheaper_undecided, items)
        details = [wording.runner_up_sentences(chosen, runner_up, comparison, meets)]
        details += wording.undecided_cheaper(cheaper_undecided, items)
    else:
        shortfall = target - _judged(accuracy[best.name], lenient)
        undecided = [arm for arm in ordered if states[arm.name] == UNDECIDED]
        if undecided:
            status = UNDECIDED
            focus = max(undecided, key=lambda arm: accuracy[arm.name].value)
            headline = wording.undecided_headline(focus, items[focus.name], n_items=best.correct.shape[1])
        else:
            status = FALLS_SHORT
            headline = wording.short_headline(best, labels_forecast)
        details = [wording.none_details(best, shortfall)]
        hints = evidence_hints(ordered, versus, retrieval, target, lenient=lenient, level=level)
        # What more labels would do: the fitted forecast when there is one (stated in the headline
        # when every arm falls short), else the curve's own last steps.
        if labels_forecast is not None:
            hints += [labels_forecast.sentence()] if status == UNDECIDED else []
        elif learning_curve_hint:
            hints.append(learning_curve_hint)
        hint = " ".join(hints) or None
    if versus is not None:
        # Stated whatever the decision: a reader weighing prompt against fine-tuning needs both views.
        stated = {chosen.name, runner_up.name} if comparison is not None else set()
        repeat_strict = {versus.prompt_arm, versus.finetuned_arm} != stated
        details.append(wording.versus_sentences(versus, repeat_strict=repeat_strict))
        details.append(_chosen_split(chosen, versus, ordered))
    if hint:
        details.append(hint)
    details_text = " ".join(sentence for sentence in details if sentence)

    return Recommendation(
        arm=chosen.name if chosen else None,
        status=status,
        headline=headline,
        details=details_text,
        reason=f"{headline} {details_text}".strip(),
        runner_up=runner_up.name if runner_up else None,
        comparison=comparison,
        best=best.name,
        shortfall=shortfall,
        hint=hint,
        meets_target=meets,
        states=states,
        items_to_decide=items,
        accuracy=accuracy,
        noninferiority=noninferiority,
        differences=differences,
        order=tuple(arm.name for arm in ordered),
        target=target,
        margin=margin,
        lenient=lenient,
        level=level,
        expected_queries=expected_queries,
        prompt_vs_finetune=versus,
        cost_basis=cost_basis(outcomes),
    )


def pairwise_holm(matrices: dict[str, np.ndarray], test: Callable[[np.ndarray, np.ndarray], PairedTest]
                  ) -> dict[frozenset[str], float]:
    """Holm-adjusted p-values (Holm 1979) for every pair of arms: {arm, other} -> adjusted p.

    The family is all pairs, not only the comparisons a report words: those are chosen after
    seeing the data (the best prompt arm, the arm recommended), and adjusting only them lets chance
    pick the family. Simulated with 8 equally accurate arms on 200 items (tests/test_decision_stats.py),
    Holm over the best arm's 7 comparisons claimed a difference in 10.4% of 2,000 runs; over all 28
    pairs, 2.6%."""
    names = list(matrices)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    adjusted = stats.holm([test(matrices[a], matrices[b]).p_value for a, b in pairs])
    return {frozenset(pair): p for pair, p in zip(pairs, adjusted)}


def _adjusted(test: PairedTest | None, pair: tuple[str, str], family: dict[frozenset[str], float]) -> PairedTest | None:
    """`test` with its Holm-adjusted p-value from `family`, `significant` read from the adjusted one."""
    if test is None:
        return None
    p_adjusted = family[frozenset(pair)]
    return replace(test, p_adjusted=p_adjusted, significant=bool(p_adjusted < 1 - test.level))


def _holm_family(
    ordered: Sequence[ArmOutcome],
    comparison: tuple[PairedTest, str, str] | None,
    versus: PromptVsFinetune | None,
    retrieval: RetrievalComparison | None,
    test: Callable[[np.ndarray, np.ndarray], PairedTest],
) -> tuple[PairedTest | None, PromptVsFinetune | None, RetrievalComparison | None]:
    """The verdict's paired tests with p-values Holm-adjusted over every pair of arms in their view
    (`pairwise_holm`): the strict tests among all pairs in the strict view, the lenient ones among all
    pairs in the lenient view."""
    strict = pairwise_holm({arm.name: arm.correct for arm in ordered}, test)
    scored = [arm for arm in ordered if arm.correct_lenient is not None]
    lenient = pairwise_holm({arm.name: arm.correct_lenient for arm in scored}, test) if (
        versus is not None and versus.lenient is not None) or retrieval is not None else {}
    if versus is not None:
        pair = (versus.prompt_arm, versus.finetuned_arm)
        versus = replace(versus, strict=_adjusted(versus.strict, pair, strict),
                         lenient=_adjusted(versus.lenient, pair, lenient))
    if retrieval is not None:
        retrieval = replace(retrieval, test=_adjusted(retrieval.test, (retrieval.context_arm, retrieval.other_arm), lenient))
    adjusted_comparison = _adjusted(comparison[0], comparison[1:], strict) if comparison is not None else None
    return adjusted_comparison, versus, retrieval


def _chosen_split(chosen: ArmOutcome | None, versus: PromptVsFinetune, ordered: Sequence[ArmOutcome]) -> str:
    """The format/content split for a recommended fine-tuned arm that is not the most accurate one
    (whose split `versus` states already): the verdict is about the arm recommended."""
    if chosen is None or not chosen.fine_tuned or chosen.name == versus.finetuned_arm:
        return ""
    prompt = next(arm for arm in ordered if arm.name == versus.prompt_arm)
    split = gain_split(chosen, prompt)
    return " " + split_sentence(chosen.name, prompt.name, *split) if split else ""


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


# ---- prompt against fine-tuning, in both views -----------------------------------------------------


def _lenient_value(arm: ArmOutcome) -> float:
    return float(arm.correct_lenient.mean()) if arm.correct_lenient is not None else 0.0


def most_accurate(arms: Sequence[ArmOutcome]) -> ArmOutcome | None:
    """The most accurate arm in the strict view; ties go to the more accurate in the lenient view
    (when every prompt arm scores 0 strict, the one whose replies hold the most right answers), then
    to the first given, i.e. the cheaper."""
    return max(arms, key=lambda arm: (float(arm.correct.mean()), _lenient_value(arm)), default=None)


def compare_prompt_and_finetune(
    ordered: Sequence[ArmOutcome],
    *,
    level: float = stats.DEFAULT_LEVEL,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
) -> PromptVsFinetune | None:
    """Paired tests of the best fine-tuned arm against the best prompt arm (`most_accurate`, arms
    cheapest first), in both views; None unless both kinds of arm are present."""
    prompt = most_accurate([arm for arm in ordered if arm.prompted])
    tuned = most_accurate([arm for arm in ordered if arm.fine_tuned])
    if prompt is None or tuned is None:
        return None
    options = dict(level=level, resamples=resamples, seed=seed)
    strict = stats.paired_accuracy_test(tuned.correct, prompt.correct, **options)
    lenient = None
    if tuned.correct_lenient is not None and prompt.correct_lenient is not None:
        lenient = stats.paired_accuracy_test(tuned.correct_lenient, prompt.correct_lenient, **options)
    content = lenient.difference if lenient is not None else None
    return PromptVsFinetune(
        prompt_arm=prompt.name,
        finetuned_arm=tuned.name,
        strict=strict,
        lenient=lenient,
        gain=strict.difference,
        content=content,
        format=strict.difference - content if content is not None else None,
    )


def gain_split(tuned: ArmOutcome, prompt: ArmOutcome) -> tuple[float, float] | None:
    """(strict gain, lenient gain) of `tuned` over `prompt`, as accuracy fractions; None without the lenient view."""
    if tuned.correct_lenient is None or prompt.correct_lenient is None:
        return None
    return float(tuned.correct.mean() - prompt.correct.mean()), _lenient_value(tuned) - _lenient_value(prompt)


def split_sentence(tuned: str, prompt: str, gain: float, content: float) -> str:
    """The strict gain as format (seen in the strict view only) plus content (seen in both views)."""
    parts = (f"{_points(gain - content)} are format (seen in the strict view only) and {_points(content)} content "
             "(seen in both views)")
    if gain <= 0:
        return f"{tuned} is {_points(gain)} against {prompt} in the strict view: {parts}."
    sentence = f"Of {tuned}'s {_points(gain)} over {prompt} in the strict view, {parts}"
    if gain <= VIEW_GAP:  # a gain this small is within what the views' own disagreement allows: no reading
        return sentence + "."
    mostly = "format" if gain - content > content else "content"
    return f"{sentence}: the gain is mostly {mostly}."


# ---- what the evidence suggests when no arm meets the target ------------------------------------


@dataclass(frozen=True)
class RetrievalComparison:
    """The best context arm against the best other prompt arm, in the lenient view: does retrieval
    supply facts the replies lacked?"""

    context_arm: str
    other_arm: str
    test: PairedTest  # context minus other, lenient view


def retrieval_comparison(
    ordered: Sequence[ArmOutcome],
    *,
    level: float = stats.DEFAULT_LEVEL,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
) -> RetrievalComparison | None:
    """None unless the lenient view was scored and both a context arm and another prompt arm ran."""
    scored = [arm for arm in ordered if arm.correct_lenient is not None]
    context = most_accurate([arm for arm in scored if arm.family == "retrieval"])
    other = most_accurate([arm for arm in scored if arm.family == "prompt"])
    if context is None or other is None:
        return None
    test = stats.paired_accuracy_test(
        context.correct_lenient, other.correct_lenient, level=level, resamples=resamples, seed=seed
    )
    return RetrievalComparison(context.name, other.name, test)


def evidence_hints(
    ordered: Sequence[ArmOutcome],
    versus: PromptVsFinetune | None,
    retrieval: RetrievalComparison | None,
    target: float,
    *,
    lenient: bool = False,
    level: float = stats.DEFAULT_LEVEL,
) -> list[str]:
    """Sentences on why no arm meets the target, each from one piece of evidence, most telling
    first: a format problem (the lenient view sees far more right answers), what fine-tuning learned
    (format or facts), and whether retrieval supplies the missing facts. Empty without the lenient
    view. No sentence names a cause the numbers do not show: "facts are missing" needs every arm's
    lenient interval to lie wholly below the target. (`lenient` here is the target rule's: compare
    the point estimate, not the lower bound.)"""
    scored = [arm for arm in ordered if arm.correct_lenient is not None]
    if not scored:
        return []
    hints = [_format_hint(scored, target, lenient, level)]
    if versus is not None and versus.lenient is not None:
        hints.append(_finetune_hint(versus, level))
    hints.append(_retrieval_hint(scored, retrieval, target, level))
    return [hint for hint in hints if hint]

def _format_hint(scored: Sequence[ArmOutcome], target: float, lenient: bool, level: float) -> str | None:
    """The arm with the widest lenient-over-strict gap, when it exceeds VIEW_GAP."""
    widest = max(scored, key=lambda arm: _lenient_value(arm) - float(arm.correct.mean()))
    strict_value, lenient_value = float(widest.correct.mean()), _lenient_value(widest)
    if lenient_value - strict_value <= VIEW_GAP + 1e-9:  # exactly 10 points (up to rounding) is not more
        return None
    would_meet = _reaches(stats.accuracy_interval(widest.correct_lenient, level=level), target, lenient)
    found = (
        f"in the lenient view (a reference answer anywhere in the reply) {widest.name} is right on "
        f"{lenient_value:.1%} of replies against {strict_value:.1%} strict"
    )
    remedy = (
        "An extraction rule or matcher that accepts these replies (generation.extract, metric.accuracy), or "
        "fine-tuning for the answer format, may close the gap."
    )
    if would_meet:
        return f"Format, not knowledge, is what is missing: {found}, which would meet the target. {remedy}"
    return f"Part of what is missing is format: {found}. {remedy}"


def _finetune_hint(versus: PromptVsFinetune, level: float) -> str:
    """Did fine-tuning teach facts (a gain the lenient view sees) or only the answer format?"""
    tuned, prompt, test = versus.finetuned_arm, versus.prompt_arm, versus.lenient
    if test.significant and test.difference > 0:
        return (
            f"Fine-tuning learned content: {tuned} is right on {_points(test.difference)} more replies than "
            f"{prompt} in the lenient view ({_p(test)}); more training data may add more."
        )
    if test.significant:
        return (
            f"Fine-tuning lost content: {tuned} is right on {100 * -test.difference:.1f} points fewer replies than {prompt} "
            f"in the lenient view ({_p(test)}); training on this data with these settings degraded "
            "what the model knew (a smaller learning rate, fewer epochs or more data may avoid it)."
        )
    learned = "mostly the answer format" if versus.gain > VIEW_GAP else "neither format nor facts measurably"
    return (
        f"Fine-tuning taught {learned}: {tuned} minus {prompt} is {_points(versus.gain)} strict but "
        f"{_points(test.difference)} lenient (no significant content gain at {level:.0%}, {_p(test)}{_detectable(test)}), "
        "so it did not supply the missing facts."
    )


def _retrieval_hint(
    scored: Sequence[ArmOutcome], retrieval: RetrievalComparison | None, target: float, level: float
) -> str | None:
    """A context arm's lenient gain over the best other prompt arm shows whether retrieval supplies
    facts; without one, suggest it only when the replies lack content beyond doubt: every arm's
    lenient upper bound below the target."""
    if not any(arm.family == "retrieval" for arm in scored):
        content_short = all(
            target_state(stats.accuracy_interval(arm.correct_lenient, level=level), target) == FALLS_SHORT
            for arm in scored
        )
        return (
            "Even the lenient view falls short (every arm's interval lies below the target), so facts are missing: "
            "a context arm (passages from data.corpus in the prompt) would show whether retrieval can supply them."
        ) if content_short else None
    if retrieval is None:
        return None
    context, other, test = retrieval.context_arm, retrieval.other_arm, retrieval.test
    if test.significant and test.difference > 0:
        return (
            f"Retrieval supplies facts: {context} is {_points(test.difference)} ahead of {other} in the "
            f"lenient view ({_p(test)}); a better corpus or more passages may add more."
        )
    if test.significant:
        return (
            f"Retrieval hurt: {context} is {100 * -test.difference:.1f} points behind {other} in the "
            f"lenient view ({_p(test)}); the passages retrieved may be the wrong ones and mislead the "
            "model (look at the context arm's prompts in the store)."
        )
    return (
        f"Retrieval did not supply measurable facts: {context} minus {other} is "
        f"{_points(test.difference)} in the lenient view ({_p(test)}{_detectable(test)}); the corpus may lack "
        "the answers, or the retriever may miss them."
    )


# ---- wording --------------------------------------------------------------------------------------


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f} points"


def _p(test: PairedTest) -> str:
    """The raw p-value, and the Holm-adjusted one the wording follows when the test is in a family."""
    if test.p_adjusted is None:
        return f"p = {test.p_value:.3g}"
    return f"p = {test.p_value:.3g}, Holm-adjusted {test.p_adjusted:.3g}"


def _detectable(test: PairedTest) -> str:
    """What a test without a significant result could have seen: "not significant" with its size."""
    if test.significant:
        return ""
    if test.detectable is None:
        return "; too few items differ between the arms for this test to detect any difference"
    return f"; this test detects a difference of {100 * test.detectable:.1f} points or more with 80% power"


@dataclass(frozen=True)
class LabelsForecast:
    """The labelled examples the learning curve forecasts to reach the target (`forecast.forecast_labels`),
    as the verdict states it."""

    arm: str  # the arm whose learning curve was fitted, e.g. "lora"
    labels_used: int  # the largest label count measured
    needed: float | None  # labels forecast to reach the target; None: not within `horizon` times labels_used
    low: float | None  # the band's ends; None where that end does not reach the target within the horizon
    high: float | None
    level: float  # the band's level, e.g. 0.9
    horizon: float  # how far the forecast extrapolates, as a multiple of labels_used

    def sentence(self) -> str:
        if self.needed is None:
            return (f"{self.arm}'s learning curve does not forecast the target within {self.horizon:g}x the "
                    f"{self.labels_used} labels used: more labels of this kind are unlikely to reach it.")
        band = (f"{self.level:.0%} band {self.low:,.0f} to {self.high:,.0f}" if self.high is not None
                else f"{self.level:.0%} band from {self.low:,.0f} to beyond {self.horizon:g}x")
        return (f"{self.arm}'s learning curve forecasts about {self.needed:,.0f} labelled examples to reach it "
                f"({band}; {self.labels_used} were used).")


@dataclass(frozen=True)
class _Wording:
    """The decision's settings, for the sentences that state it."""

    target: float
    lenient: bool
    level: float
    margin: float
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
        if arm.per_query_flops is not None:
            parts = [f"{arm.per_query_flops:.3g} FLOPs per query"]
        else:  # a served model of unknown size: ranked by tokens (see `cost_basis`)
            parts = [f"{arm.per_query_tokens:.3g} tokens per query (FLOPs unknown: model size not known)"]
        parts.append(f"{arm.one_time_flops:.3g} training FLOPs" if arm.one_time_flops else "no training")
        if self.expected_queries is not None and arm.per_query_flops is not None:
            total = arm.one_time_flops + self.expected_queries * arm.per_query_flops
            parts.append(f"{total:.3g} FLOPs in total over {self.expected_queries:g} queries")
        return ", ".join(parts)

    # -- the headline: what to do, how sure, what it costs --

    def recommended_headline(
        self, chosen: ArmOutcome, best: ArmOutcome, noninferiority: stats.NonInferiority | None,
        cheaper_undecided: Sequence[ArmOutcome] = (), items: dict[str, int | None] | None = None,
    ) -> str:
        """What to do, how sure, what it costs. How sure names the most accurate cheaper arm this run could
        not judge, if any: the recommendation rests on it being undecided, not on it falling short, and a
        reader choosing on cost should see that before the details."""
        how = "its point estimate reaches" if self.lenient else "it meets"
        first = f"Use {chosen.name}: {how} the {self.target:.1%} accuracy target at {self.figures(chosen)}."
        margin = f"{100 * self.margin:.1f} points"
        if noninferiority is None:
            second = "It is the most accurate arm measured."
        elif noninferiority.passes:
            second = (f"It is as good as the most accurate arm, {best.name}, within {margin} "
                      f"(non-inferiority p = {noninferiority.p_value:.3g}).")
        else:
            second = (f"{best.name} is more accurate ({_points(-noninferiority.difference)}), and {chosen.name} is not "
                      f"shown to be within {margin} of it (non-inferiority p = {noninferiority.p_value:.3g}; this "
                      f"test had {noninferiority.power:.0%} power were the arms equal): prefer {best.name} if "
                      "accuracy above the target is worth its cost.")
        if cheaper_undecided:
            near = max(cheaper_undecided, key=lambda arm: self.accuracy[arm.name].value)
            needed = (items or {}).get(near.name)
            second = (second[:-1] + f"; {near.name} costs less and is undecided at {self.figures(near)}"
                      + (f": about {needed:,} test items would decide whether it meets the target too." if needed
                         else ", and no practical number of test items would decide it."))
        return f"{first} {second} Cost: {self.cost(chosen)}."

    def undecided_headline(self, arm: ArmOutcome, items: int | None, n_items: int) -> str:
        first = (f"Undecided: this experiment cannot tell whether {arm.name} meets the {self.target:.1%} accuracy "
                 f"target; its {self.figures(arm)} straddles it.")
        if items is None:
            # items_to_decide gives None at the target itself and beyond its 1,000,000-item search.
            second = ("No practical number of test items would decide it: its accuracy is at, or within a hair "
                      "of, the target.")
        else:
            second = (f"About {items:,} test items would decide it (this run has {n_items:,}), with 80% probability "
                      f"at its observed rate ({stats.ITEMS_TO_DECIDE_METHOD}).")
        return f"{first} {second} Cost: {self.cost(arm)}."

    def short_headline(self, best: ArmOutcome, labels: LabelsForecast | None) -> str:
        interval = self.accuracy[best.name]
        first = (f"No arm meets the {self.target:.1%} accuracy target: the most accurate, {best.name}, reaches "
                 f"{self.figures(best)}, wholly below it.")
        if labels is not None:
            second = labels.sentence()
        else:
            second = f"It is {100 * (self.target - interval.value):.1f} points short."
        return f"{first} {second} Cost: {self.cost(best)}."

    # -- the details --

    def runner_up_sentences(
        self, chosen: ArmOutcome, runner_up: ArmOutcome | None, test: PairedTest | None, meets: dict[str, bool]
    ) -> str:
        reason = f"{chosen.name} is the cheapest arm that meets the target ({self.criterion})."
        if runner_up is None or test is None:
            return reason + " It is the only arm."
        role = "the next costlier arm that also meets the target" if meets[runner_up.name] else (
            "the most accurate other arm (it does not meet the target)"
        )
        reason += f" Runner-up: {runner_up.name}, {role}: {self.figures(runner_up)}; cost: {self.cost(runner_up)}."
        return reason + " " + self.comparison_sentence(chosen.name, runner_up.name, test)

    def undecided_cheaper(self, undecided: Sequence[ArmOutcome], items: dict[str, int | None]) -> list[str]:
        """Cheaper arms this run could not judge: a few more test items might show one meets the target too."""
        if not undecided:
            return []
        named = "; ".join(
            f"{arm.name} at {self.figures(arm)}"
            + (f", about {items[arm.name]:,} test items would decide it" if items[arm.name] is not None else "")
            for arm in undecided
        )
        return [f"Cheaper but undecided (their intervals straddle the target): {named}."]

    def none_details(self, best: ArmOutcome, shortfall: float) -> str:
        """The rule behind a verdict without a recommendation (the headline gave the best arm's figures)."""
        interval = self.accuracy[best.name]
        reason = f"No arm meets the target ({self.criterion}). "
        if self.lenient:
            return reason + f"{best.name}'s point estimate is {100 * shortfall:.1f} points short of it."
        if interval.value < self.target:
            return reason + (
                f"{best.name} is {100 * (self.target - interval.value):.1f} points short of it, its lower bound "
                f"{100 * shortfall:.1f} points."
            )
        return reason + (
            f"{best.name}'s point estimate reaches the target, but its lower bound is {100 * shortfall:.1f} points "
            "short; more test items would narrow the interval."
        )

    def comparison_sentence(self, name: str, other: str, test: PairedTest) -> str:
        evidence = (
            f"{name} minus {other} = {_points(test.difference)}, {self.level:.0%} CI "
            f"{_points(test.diff_low)} to {_points(test.diff_high)}; "
            f"{'McNemar exact' if test.test == 'mcnemar' else 'clustered McNemar'} {_p(test)}"
        )
        if not test.significant:
            return (f"No significant difference in accuracy between {name} and {other} at {self.level:.0%} "
                    f"({evidence}{_detectable(test)}).")
        winner, loser = (name, other) if test.difference > 0 else (other, name)
        return f"{winner} is significantly more accurate than {loser} at {self.level:.0%} ({evidence})."

    def versus_sentences(self, versus: PromptVsFinetune, repeat_strict: bool = True) -> str:
        """The prompt-vs-fine-tune test in both views, and how the strict gain splits into format and
        content. repeat_strict: False when the details have already stated this very strict test."""
        tuned, prompt = versus.finetuned_arm, versus.prompt_arm
        sentences = [f"Best prompt arm against best fine-tuned arm: {prompt} and {tuned}."]
        if repeat_strict:
            sentences.append("Strict view: " + self.comparison_sentence(tuned, prompt, versus.strict))
        if versus.lenient is not None:
            sentences.append("Lenient view: " + self.comparison_sentence(tuned, prompt, versus.lenient))
            sentences.append(split_sentence(tuned, prompt, versus.gain, versus.content))
        return " ".join(sentences)
