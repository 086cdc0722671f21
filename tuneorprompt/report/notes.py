"""Caveats a reader must see next to the numbers, as sentences the terminal and the page both show."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneorprompt.report.build import Report


def shortened_prompts(report: Report) -> list[str]:
    """One sentence per arm whose prompts lost demonstrations to fit the model's context, on the test
    split (it was scored with fewer demos than its name says, on some items) or on dev (its choices
    were made on such prompts)."""
    notes = []
    for arm in report.arms:
        counts = {"test": arm.notes.prompts_shortened_test, "dev": arm.notes.prompts_shortened_dev}
        parts = [f"{_per_seed(per_seed, arm.seeds)} of {report.data.size(split)} {split}"
                 for split, per_seed in counts.items() if any(per_seed)]
        if parts:
            notes.append(f"{arm.name}: {' and '.join(parts)} prompts shortened (demos dropped to fit the context)")
    return notes


def _per_seed(counts: tuple[int, ...], seeds: tuple[int, ...]) -> str:
    if len(set(counts)) == 1:
        return str(counts[0])
    return ", ".join(f"{count} (seed {seed})" for count, seed in zip(counts, seeds))


def search_lines(report: Report) -> list[str]:
    """One line per prompt search, as the first seed ran it: its pick, where that pick was judged and how
    optimistic the search was, and what it looked at and spent; a chain's line also says what it trained with.
    The page's search and chain sections give the rest (top candidates, the prompts as the model saw them)."""
    lines = []
    for arm in report.arms:
        info = arm.details[0] if arm.details else {}
        searches = [info] if arm.kind == "prompt_search" and "chosen" in info else info.get("searches", [])
        if not searches:
            continue
        where = ("the base model", "the fine-tuned model")
        parts = [f"{'searched on ' + where[i] + ': ' if 'searches' in info else ''}picked {s['chosen']}, "
                 f"{s['holdout_score']:.1%} on the held-out dev items against {s['best_search_score']:.1%} in the search "
                 f"(dev optimism {100 * s['dev_optimism']:+.1f} points), {s['spent_flops']:.3g} of {s['budget_flops']:.3g} "
                 "FLOPs" for i, s in enumerate(searches)]
        if (info.get("trained_with") or {}).get("demos_dropped"):  # a chain leaves the searched demos out
            parts[0] += " (trained" + (" and queried" if len(searches) == 1 else "") + " without its demos)"
        seed = f" (first of {len(arm.details)} seeds)" if len(arm.details) > 1 else ""
        lines.append(f"{arm.name}{seed}: " + "; ".join(parts) + ".")
    return lines


def forecast_lines(report: Report) -> list[str]:
    """One line per learning curve with a label forecast (`forecast.forecast_labels`): accuracy at 2x
    and 4x the labels used, the labels that reach the target, the backtest, and the curve's warnings."""
    forecasts = (report.learning_curve or {}).get("forecast") or {}
    lines = []
    for curve, unit in (("finetune", "training examples"), ("few_shot", "demos")):
        forecast = forecasts.get(curve)
        if not forecast:
            continue
        name = report.learning_curve["finetune_kind"] if curve == "finetune" else "few_shot"
        if forecast["predictions"]:
            lines.append(_forecast_line(name, unit, forecast))
        lines += [f"{name}: {warning}" for warning in forecast["warnings"]]
    return lines


def _forecast_line(name: str, unit: str, forecast: dict) -> str:
    parts = [f"{p['value']:.1%} [{p['low']:.1%}, {p['high']:.1%}] at {p['labels']:,.0f} {unit}"
             for p in forecast["predictions"]]
    line = f"{name}: {'; '.join(parts)} ({forecast['level']:.0%} band)"
    needed = forecast.get("labels_to_target")
    if needed:
        line += (f"; the {needed['target']:.1%} target at {_count(needed['value'])} {unit} "
                 f"[{_count(needed['low'])}, {_count(needed['high'])}]")
    backtest = forecast.get("backtest")
    if backtest:
        line += (f"; backtest: the last point ({backtest['labels']:,.0f}) predicted {backtest['predicted']:.1%} from "
                 f"the others, observed {backtest['observed']:.1%} (error {100 * backtest['error']:.1f} points)")
    return line + "."


def _count(value: int | str) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)
