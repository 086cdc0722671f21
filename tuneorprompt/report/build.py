"""The report dict: arms, paired tests, costs and break-even, recommendation, provenance.

`build_report` is a pure function of the run's records and summaries; `write_report` writes it as
`report.json` and `report.html` (each replaced whole, never left half-written) and prints the
terminal summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from tuneorprompt import decide, stats
from tuneorprompt.config import CostConfig, ExperimentConfig
from tuneorprompt.records import ExampleRecord
from tuneorprompt.report.checks import report_warnings
from tuneorprompt.report.html import render_html
from tuneorprompt.report.terminal import print_summary
from tuneorprompt.rundir import write_text_atomic
from tuneorprompt.summary import outcome_matrix

REPORT_VERSION = 1


def build_report(
    *,
    config: ExperimentConfig,
    summaries: Sequence[dict],
    records: dict[str, list[list[ExampleRecord]]],
    overlap: Any,
    split_sizes: dict[str, int],
    environment: dict,
    stopped_early_at: str | None = None,
    learning_curve: dict | None = None,
    cost_order: Sequence[decide.CostEstimate] | None = None,
    protocol: dict | None = None,
    skipped_arms: Sequence[dict] = (),
) -> dict:
    """cost_order: every arm's cost as estimated before the run, cheapest first; the order the ladder
    ran the arms in, and the one the recommendation follows (without it, the measured costs order
    them). protocol: what every arm's result depends on (settings, data and model keys), recorded
    so the report states what its numbers came from. skipped_arms: arms the config asked for that
    could not run, each {"arm", "reason"}; each becomes a warning, so none silently disappears."""
    outcomes = [
        decide.ArmOutcome(
            name=s["name"],
            correct=outcome_matrix(records[s["name"]], "correct"),
            per_query_flops=s["flops_per_query"],
            one_time_flops=(s["training"] or {}).get("flops", 0.0),
            kind=s["kind"],
            correct_lenient=outcome_matrix(records[s["name"]], "correct_lenient"),
            per_query_tokens=s["prompt_tokens"] + s["generated_tokens"],
        )
        for s in summaries
    ]
    recommendation = decide.recommend(
        outcomes,
        config.target.accuracy,
        lenient=config.target.lenient,
        expected_queries=config.costs.expected_queries,
        learning_curve_hint=(learning_curve or {}).get("hint"),
        order=[estimate.name for estimate in cost_order] if cost_order is not None else None,
    )
    decision = recommendation.to_dict()
    versus = decision.pop("prompt_vs_finetune")  # given once, at the top level
    return {
        "report_version": REPORT_VERSION,
        "name": config.name,
        "model": config.model.label,
        "target": config.target.model_dump(),
        "strategy": config.strategy,
        "stopped_early_at": stopped_early_at,
        # Before any number: a reader must know when the scoring views or a dev choice cannot be trusted.
        "warnings": [
            {"code": "skipped_arm", "arm": skip["arm"], "message": f"{skip['arm']} was not run: {skip['reason']}"}
            for skip in skipped_arms
        ] + cost_basis_warnings(outcomes) + report_warnings(summaries, records, config.metric.accuracy),
        "skipped_arms": list(skipped_arms),
        "data": {
            **{f"n_{split}": size for split, size in split_sizes.items()},
            "overlap": overlap.to_dict(),
        },
        "arms": list(summaries),
        "paired_tests": paired_tests(records, [s["name"] for s in summaries], recommendation.arm),
        "costs": costs(summaries, config.costs),
        "cost_order": [estimate.to_dict() for estimate in cost_order] if cost_order is not None else None,
        "break_even": break_even(summaries),
        "learning_curve": learning_curve,
        "prompt_vs_finetune": versus,
        "recommendation": decision,
        "protocol": protocol,
        "environment": environment,
    }


def cost_basis_warnings(outcomes: Sequence[decide.ArmOutcome]) -> list[dict]:
    """Said whenever arms are not ranked by FLOPs: a reader comparing costs must know what was counted."""
    if decide.cost_basis(outcomes) == "flops":
        return []
    mixed = decide.mixed_cost_basis(outcomes)
    message = ("Arms are ranked by tokens per query (prompt + generated), not FLOPs: the model's size is unknown. "
               "Set model.num_parameters to rank them by FLOPs; costs.price_per_1k_tokens prices the tokens.")
    if mixed:
        message += f" {', '.join(mixed)} had FLOPs figures, which the ranking does not use."
    return [{"code": "cost_basis", "basis": "tokens", "message": message}]


def paired_tests(records: dict[str, list[list[ExampleRecord]]], names: list[str], recommended: str | None) -> list:
    """Every arm against `baseline` and against the recommended arm, on the same test items."""
    references = [r for r in ("baseline", recommended) if r is not None and r in records]
    tests = []
    for reference in dict.fromkeys(references):
        for name in names:
            if name == reference:
                continue
            accuracy = stats.paired_accuracy_test(
                outcome_matrix(records[name], "correct"), outcome_matrix(records[reference], "correct")
            )
            relevance = stats.paired_bootstrap_test(
                100 * outcome_matrix(records[name], "relevance"), 100 * outcome_matrix(records[reference], "relevance")
            )
            tests.append({"arm": name, "against": reference, "accuracy": accuracy.to_dict(),
                          "relevance": relevance.to_dict()})
    return tests


def break_even(summaries: Sequence[dict]) -> list[dict]:
    """For each fine-tuned arm: after how many queries its one-time training cost is repaid by
    cheaper queries than the most accurate prompt arm (None when its queries are not cheaper)."""
    prompt_arms = [s for s in summaries if s["kind"] in decide.PROMPT_KINDS and s["flops_per_query"]]
    if not prompt_arms:
        return []
    # The same "most accurate" as decide.most_accurate: strict, then lenient, then the first listed.
    best_prompt = max(
        prompt_arms, key=lambda s: (s["accuracy"]["value"], (s.get("accuracy_lenient") or {}).get("value", 0.0))
    )
    rows = []
    for arm in summaries:
        if not arm.get("training") or not arm["flops_per_query"]:
            continue
        rows.append({
            "arm": arm["name"],
            "against": best_prompt["name"],
            "training_flops": arm["training"]["flops"],
            "flops_per_query": arm["flops_per_query"],
            "against_flops_per_query": best_prompt["flops_per_query"],
            "queries": stats.break_even_queries(
                arm["training"]["flops"], arm["flops_per_query"], best_prompt["flops_per_query"]
            ),
        })
    return rows


def costs(summaries: Sequence[dict], prices: CostConfig) -> list[dict]:
    """Per arm: what one query costs and what the arm cost once, in FLOPs and seconds (comparable
    across machines and measured here), and in money where prices are given."""
    rows = []
    for arm in summaries:
        training = arm.get("training") or {}
        tokens = arm["prompt_tokens"] + arm["generated_tokens"]
        row = {
            "arm": arm["name"],
            "per_query": {"flops": arm["flops_per_query"], "seconds": arm["seconds_per_query"], "tokens": tokens},
            "one_time": {"flops": training.get("flops", 0.0), "seconds": training.get("wall_seconds", 0.0),
                         "train_tokens": training.get("train_tokens", 0)},
        }
        if prices.price_per_hour is not None or prices.price_per_1k_tokens is not None:
            per_query = (prices.price_per_1k_tokens or 0.0) * tokens / 1000 + (
                prices.price_per_hour or 0.0) * arm["seconds_per_query"] / 3600
            row["per_query"]["price"] = per_query
            row["one_time"]["price"] = (prices.price_per_hour or 0.0) * row["one_time"]["seconds"] / 3600
            if prices.expected_queries:
                row["total_price_at_expected_queries"] = row["one_time"]["price"] + per_query * prices.expected_queries
        rows.append(row)
    return rows


def write_report(*, run_dir: Path, console: Console, references: dict[str, str], **inputs: Any) -> dict:
    """Build the report; write report.json and report.html; print the terminal summary.
    `references` maps test ids to reference answers for the disagreement table."""
    report = build_report(**inputs)
    write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(run_dir / "report.html", render_html(report, inputs["records"], references))
    print_summary(report, console)
    return report
