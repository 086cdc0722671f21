"""Effort curves: what each side of the question bought on dev with the compute it spent.

A prompt search and a fine-tuning grid both spend one-time FLOPs choosing on dev. Read side by side
against cumulative FLOPs, they say whether the two sides were searched with comparable effort, and at
what budget, if any, one overtakes the other:

- `prompt_search`: each look at a candidate (`prompt_search` trajectory) is a point at the FLOPs spent
  so far; the side's standing at a budget is its incumbent, the candidate it would pick if stopped
  there (the highest rung reached, then the best score on it: a score on more dev items outranks a
  lucky one on few).
- fine-tuning: each (learning rate, epoch) checkpoint is a point at the FLOPs of the training done to
  reach it plus the dev evaluations before it, in the order the grid ran (learning rates in turn,
  epochs within each). The standing at a budget is the best checkpoint so far. A chain's curve starts
  after its search on the base model; with `search_again` it ends with the search on the fine-tuned
  model, whose pick is then the standing.

Dev scores are the arms' own: the search's on its search part of dev (a rung scores a prefix), the
grid's on the whole dev split. Both are optimistic about test; the report's test figures are what
the decision uses. Pure functions of report rows: nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from statsmodels.stats.proportion import proportion_confint

from tuneorprompt.stats import training_flops
from tuneorprompt.summary import ArmSummary


@dataclass(frozen=True)
class EffortPoint:
    flops: float  # cumulative one-time FLOPs when this dev score was known
    dev_accuracy: float  # in [0, 1]
    label: str  # the candidate, or "lr 0.001, epoch 2"
    items: int  # dev items behind the score: a search's early looks see few, so its early lead is noisy


@dataclass(frozen=True)
class EffortCurve:
    arm: str
    side: str  # "prompt" (a search) or "finetune" (a learning-rate x epoch grid)
    points: tuple[EffortPoint, ...]  # every look or checkpoint, in the order spent
    standing: tuple[EffortPoint, ...]  # the side's pick after each point: what it would use if stopped there
    total_flops: float
    counted: str  # how the FLOPs were counted, for the reader

    def at(self, flops: float) -> EffortPoint | None:
        """The standing at a budget of `flops`: the last pick made within it; None before the first."""
        within = [point for point in self.standing if point.flops <= flops]
        return within[-1] if within else None

    def to_dict(self) -> dict:
        return asdict(self)


def search_curve(arm: str, info: dict) -> EffortCurve:
    """A `prompt_search` arm's curve from its recorded trajectory (first seed)."""
    points, standing = [], []
    best: tuple[int, float, EffortPoint] | None = None  # (rung, score, point) of the incumbent
    for look in info["trajectory"]:
        point = EffortPoint(float(look["flops_so_far"]), float(look["dev_score"]), str(look["candidate"]),
                            int(look["items"]))
        points.append(point)
        if best is None or (look["rung"], look["dev_score"]) > best[:2]:
            best = (look["rung"], look["dev_score"], point)
        standing.append(EffortPoint(point.flops, best[1], best[2].label, best[2].items))
    return EffortCurve(
        arm, "prompt", tuple(points), tuple(standing), float(info["spent_flops"]),
        "inference FLOPs (2 x parameters x prompt and generated tokens) of every dev look, proposals included",
    )


def grid_curve(arm: ArmSummary, n_dev: int) -> EffortCurve | None:
    """A fine-tuned arm's checkpoints (first seed) against cumulative training plus dev-evaluation
    FLOPs. Dev evaluation is priced at the arm's test cost per query (same prompts, same answers)
    times the dev items; None when the model's size or the grid's record is unknown."""
    extra = arm.training.extra[0] if arm.training and arm.training.extra else {}
    if not extra.get("dev_scores") or "tokens_per_epoch" not in extra or arm.flops_per_query is None:
        return None
    epoch_flops = training_flops(arm.training.total_params, extra["tokens_per_epoch"], arm.training.trainable_params)
    dev_flops = arm.flops_per_query * n_dev
    # A chain (p -> w) trains after its prompt search: its checkpoints come after the search's FLOPs.
    spent, points, standing = float(extra.get("search_flops_before_training", 0.0)), [], []
    for learning_rate, scores in extra["dev_scores"].items():
        for epoch, score in enumerate(scores, start=1):
            spent += epoch_flops + dev_flops
            point = EffortPoint(spent, float(score), f"lr {learning_rate}, epoch {epoch}", n_dev)
            points.append(point)
            best = max(points, key=lambda p: p.dev_accuracy)  # max keeps the earliest of ties, as `finetune._select`
            standing.append(EffortPoint(spent, best.dev_accuracy, best.label, n_dev))
    # p -> w -> p: the search on the fine-tuned model comes last, and the chain answers with its pick, so the
    # standing after it is that pick's score on the search's dev items, whatever the checkpoints scored.
    searches = arm.details[0].get("searches", []) if arm.details else []
    if len(searches) > 1 and "dev_items" in searches[-1]:
        again = searches[-1]
        spent += float(again["spent_flops"])
        point = EffortPoint(spent, float(again["best_search_score"]), f"searched again: {again['chosen']}",
                            int(again["dev_items"]["search"]))
        points.append(point)
        standing.append(point)
    return EffortCurve(
        arm.name, "finetune", tuple(points), tuple(standing), spent,
        "training FLOPs ((4 x parameters + 2 x trainable) x tokens) per epoch, plus each checkpoint's dev "
        "evaluation at the arm's test FLOPs per query" + (", plus a chain's searches" if searches else ""),
    )


def overtakes(first: EffortCurve, second: EffortCurve) -> list[dict]:
    """Every budget at which the lead on dev changes hands between two curves, the first entry being who
    leads once both have a score: [{"flops", "leader", "dev_accuracy", "items", "other",
    "other_dev_accuracy", "other_items"} at the change, the same scores at the lead's end ("until_flops",
    "until_dev_accuracy", "until_items", "until_other_dev_accuracy", "until_other_items": the last budget
    before the next change, or the last spent), and "beyond_noise"]. A tie keeps the previous leader:
    overtaking needs a strictly higher standing.

    A lead is judged beyond noise at its end, where it is best informed: a search's first look on 6 dev
    items can be far ahead of a grid's 40 and fall back within noise once the search scores 28."""
    budgets = sorted({p.flops for p in first.standing} | {p.flops for p in second.standing})
    starts: list[tuple[float, EffortCurve]] = []  # (budget, new leader)
    leader = None
    for budget in budgets:
        a, b = first.at(budget), second.at(budget)
        if a is None or b is None:
            continue
        if leader is None:
            leader = first if a.dev_accuracy >= b.dev_accuracy else second
        elif (leader is first and b.dev_accuracy > a.dev_accuracy) or (leader is second and a.dev_accuracy > b.dev_accuracy):
            leader = second if leader is first else first
        else:
            continue
        starts.append((budget, leader))

    def standings(budget: float, leader: EffortCurve) -> tuple[EffortPoint, EffortPoint]:
        a, b = first.at(budget), second.at(budget)
        return (a, b) if leader is first else (b, a)

    changes: list[dict] = []
    for index, (budget, leader) in enumerate(starts):
        # A lead ends at the budget before the next change (every change is at one of `budgets`), or at the last.
        until = budgets[budgets.index(starts[index + 1][0]) - 1] if index + 1 < len(starts) else budgets[-1]
        (ahead, behind), (ahead_end, behind_end) = standings(budget, leader), standings(until, leader)
        changes.append({"flops": budget, "leader": leader.arm, "dev_accuracy": ahead.dev_accuracy, "items": ahead.items,
                        "other": (second if leader is first else first).arm, "other_dev_accuracy": behind.dev_accuracy,
                        "other_items": behind.items, "until_flops": until, "until_dev_accuracy": ahead_end.dev_accuracy,
                        "until_items": ahead_end.items, "until_other_dev_accuracy": behind_end.dev_accuracy,
                        "until_other_items": behind_end.items, "beyond_noise": apart(ahead_end, behind_end)})
    return changes


def apart(ahead: EffortPoint, behind: EffortPoint, level: float = 0.95) -> bool:
    """Whether a lead on dev is beyond the noise of the items behind it: the two scores' Wilson intervals
    do not overlap. Conservative on purpose (non-overlap of two 95% intervals is roughly p < 0.01): a
    search's early looks score a handful of items, and its dev items are a subset of the grid's, so the
    two are neither independent nor paired item by item."""
    ahead_low, _ = proportion_confint(ahead.dev_accuracy * ahead.items, ahead.items, 1 - level, "wilson")
    _, behind_high = proportion_confint(behind.dev_accuracy * behind.items, behind.items, 1 - level, "wilson")
    return bool(ahead_low > behind_high)


def effort_curves(summaries: Sequence[ArmSummary], n_dev: int) -> dict | None:
    """report.json's "effort": each search's and each fine-tuning grid's curve, and, for the best
    search against each grid, the budgets at which the lead changes; None when the run has neither."""
    searches = [search_curve(s.name, s.details[0]) for s in summaries
                if s.kind == "prompt_search" and s.details and s.details[0].get("trajectory")]
    grids = [curve for s in summaries if s.family == "finetune" and (curve := grid_curve(s, n_dev)) is not None]
    if not searches and not grids:
        return None
    comparisons = []
    for search in searches:
        for grid in grids:
            changes = overtakes(search, grid)
            comparisons.append({"prompt": search.arm, "finetune": grid.arm, "changes": changes,
                                "sentence": overtake_sentence(search, grid, changes)})
    return {"curves": [curve.to_dict() for curve in searches + grids], "comparisons": comparisons}


def overtake_sentence(search: EffortCurve, grid: EffortCurve, changes: list[dict]) -> str:
    """The comparison in one sentence: dev scores with the items behind them, budgets in FLOPs."""
    if not changes:
        return f"{search.arm} and {grid.arm} have no budget at which both have a dev score."

    def scores(change: dict, at: str = "") -> str:
        return (f"{change[at + 'dev_accuracy']:.1%} on {change[at + 'items']} dev items against "
                f"{change[at + 'other_dev_accuracy']:.1%} on {change[at + 'other_items']}")

    first, *later = changes
    sentence = f"Once both have a dev score ({first['flops']:.3g} FLOPs), {first['leader']} leads ({scores(first)})"
    for change in later:
        sentence += f"; {change['leader']} overtakes at {change['flops']:.3g} FLOPs ({scores(change)})"
    last = changes[-1]
    if scores(last, "until_") != scores(last):  # compared as printed: end scores that read the same are not repeated
        sentence += f", and holds the lead to the end, {last['until_flops']:.3g} FLOPs ({scores(last, 'until_')})"
    elif not later:
        sentence += f", and keeps the lead up to the {max(search.total_flops, grid.total_flops):.3g} FLOPs spent"
    sentence += f". Spent: {search.arm} {search.total_flops:.3g} FLOPs, {grid.arm} {grid.total_flops:.3g}."
    within = sum(not change["beyond_noise"] for change in changes)
    if not within:
        sentence += (" This lead is beyond dev noise (at its end" if len(changes) == 1
                     else " Every lead here is beyond dev noise (at the end of each")
        sentence += " the two scores' 95% Wilson intervals do not overlap)."
    elif within == len(changes):
        sentence += (" No lead here is beyond dev noise (at the end of each lead the two scores' 95% Wilson "
                     "intervals overlap): the test figures decide.")
    else:
        sentence += (f" {within} of these {len(changes)} leads are within dev noise (at their end the two scores' "
                     "95% Wilson intervals overlap).")
    return sentence
