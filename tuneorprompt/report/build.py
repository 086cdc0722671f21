"""The report: arms, paired tests, costs and break-even, recommendation, provenance, as a typed
`Report`.

`build_report` is a pure function of the run's records and arm summaries; `Report.to_json()` is
report.json. `write_report` writes report.json and report.html (each replaced whole, never left
half-written) and prints the terminal summary; every view renders the `Report` alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from tuneorprompt import decide, stats
from tuneorprompt import summary as summary_module
from tuneorprompt.config import CostConfig, ExperimentConfig, TargetConfig
from tuneorprompt.data import OverlapReport
from tuneorprompt.effort import effort_curves
from tuneorprompt.forecast import HORIZON, NOT_WITHIN
from tuneorprompt.keys import jsonable, report_page_key
from tuneorprompt.records import ExampleRecord
from tuneorprompt.report import html, notes
from tuneorprompt.report.checks import report_warnings
from tuneorprompt.report.html import render_html, written_page_key
from tuneorprompt.report.terminal import print_summary
from tuneorprompt.rundir import write_text_atomic
from tuneorprompt.summary import ArmSummary, outcome_matrix, relevance_matrix

REPORT_VERSION = 1


@dataclass(frozen=True)
class DataSummary:
    n_train: int
    n_dev: int
    n_test: int
    overlap: OverlapReport

    def size(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]

    def to_dict(self) -> dict[str, Any]:
        return {"n_train": self.n_train, "n_dev": self.n_dev, "n_test": self.n_test, "overlap": self.overlap.to_dict()}


@dataclass(frozen=True)
class PairedComparison:
    """`arm` against `against` on the same test items, in accuracy and in relevance (each difference
    on its figure's reported scale: summary.ACCURACY, summary.RELEVANCE)."""

    arm: str
    against: str
    accuracy: stats.PairedTest
    relevance: stats.PairedTest

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "against": self.against, "accuracy": self.accuracy.to_dict(),
                "relevance": self.relevance.to_dict()}


@dataclass(frozen=True)
class BreakEven:
    """After how many queries a fine-tuned arm's training is repaid by queries cheaper than those of
    `against`, the most accurate prompt arm (None: its queries are not cheaper)."""

    arm: str
    against: str
    training_flops: float
    flops_per_query: float
    against_flops_per_query: float
    queries: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "against": self.against, "training_flops": self.training_flops,
                "flops_per_query": self.flops_per_query, "against_flops_per_query": self.against_flops_per_query,
                "queries": self.queries}


@dataclass(frozen=True)
class ArmCost:
    """What one query of an arm costs and what the arm cost once; prices only where the config gives them."""

    arm: str
    query_flops: float | None
    query_seconds: float
    query_tokens: float
    one_time_flops: float
    one_time_seconds: float
    train_tokens: float
    query_price: float | None = None
    one_time_price: float | None = None
    total_price_at_expected_queries: float | None = None

    def to_dict(self) -> dict[str, Any]:
        per_query = {"flops": self.query_flops, "seconds": self.query_seconds, "tokens": self.query_tokens}
        one_time = {"flops": self.one_time_flops, "seconds": self.one_time_seconds, "train_tokens": self.train_tokens}
        row: dict[str, Any] = {"arm": self.arm, "per_query": per_query, "one_time": one_time}
        if self.query_price is not None:
            per_query["price"] = self.query_price
            one_time["price"] = self.one_time_price
        if self.total_price_at_expected_queries is not None:
            row["total_price_at_expected_queries"] = self.total_price_at_expected_queries
        return row


@dataclass(frozen=True)
class ArmAnswer:
    arm: str
    answer: str
    correct: bool  # in the strict view


@dataclass(frozen=True)
class ExampleRow:
    id: str
    reference: str
    disagree: bool  # the arms are not all right or all wrong
    answers: tuple[ArmAnswer, ...]


@dataclass(frozen=True)
class ExampleTable:
    """The page's examples table: per test item, each arm's answer (first seed). Not in report.json:
    the records in the run's store hold every answer."""

    arms: tuple[str, ...]  # the columns
    rows: tuple[ExampleRow, ...]
    n_items: int  # test items, shown or not


@dataclass(frozen=True)
class Report:
    name: str
    model: str
    # A served model: the model ids its replies named in this run, first seen first; empty when every
    # answer was read back from the store. None for a model that is not served (no reply names one).
    served_models: list[str] | None
    target: TargetConfig
    strategy: str
    stopped_early_at: str | None
    # Before any number: a reader must know when the scoring views or a dev choice cannot be trusted.
    warnings: list[dict]
    skipped_arms: list[dict]  # arms the config asked for that could not run, each {"arm", "reason"}
    data: DataSummary
    arms: list[ArmSummary]
    paired_tests: list[PairedComparison]
    costs: list[ArmCost]
    cost_order: list[decide.CostEstimate] | None
    break_even: list[BreakEven]
    learning_curve: dict | None
    effort: dict | None  # each side's dev standing against its one-time FLOPs (`effort.effort_curves`)
    recommendation: decide.Recommendation
    protocol: dict | None
    environment: dict
    examples: ExampleTable

    def to_dict(self) -> dict[str, Any]:
        """report.json's content."""
        decision = self.recommendation.to_dict()
        versus = decision.pop("prompt_vs_finetune")  # given once, at the top level
        return {
            "report_version": REPORT_VERSION,
            "name": self.name,
            "model": self.model,
            "served_models": self.served_models,
            "target": self.target.model_dump(),
            "strategy": self.strategy,
            "stopped_early_at": self.stopped_early_at,
            "warnings": self.warnings,
            "skipped_arms": self.skipped_arms,
            "data": self.data.to_dict(),
            "arms": [arm.to_dict() for arm in self.arms],
            "paired_tests": [test.to_dict() for test in self.paired_tests],
            "costs": [cost.to_dict() for cost in self.costs],
            "cost_order": [estimate.to_dict() for estimate in self.cost_order] if self.cost_order is not None else None,
            "break_even": [row.to_dict() for row in self.break_even],
            "learning_curve": self.learning_curve,
            "effort": self.effort,
            "prompt_vs_finetune": versus,
            "recommendation": decision,
            "protocol": self.protocol,
            "environment": self.environment,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def build_report(
    *,
    config: ExperimentConfig,
    summaries: Sequence[ArmSummary],
    records: dict[str, list[list[ExampleRecord]]],
    overlap: OverlapReport,
    split_sizes: dict[str, int],
    environment: dict,
    stopped_early_at: str | None = None,
    learning_curve: dict | None = None,
    cost_order: Sequence[decide.CostEstimate] | None = None,
    protocol: dict | None = None,
    skipped_arms: Sequence[dict] = (),
    served_models: Sequence[str] | None = None,
) -> Report:
    """cost_order: every arm's cost as estimated before the run, cheapest first; the order the
    ladder ran the arms in, and the one the recommendation follows (without it, the measured costs
    order them). protocol: what every arm's result depends on (settings, data and model keys),
    recorded so the report states what its numbers came from. skipped_arms: arms the config asked
    for that could not run, each {"arm", "reason"}; each becomes a warning, so none silently disappears.
    served_models: for a served model, the model ids its replies named (`base.ServedBackend`)."""
    outcomes = [
        decide.ArmOutcome(
            name=s.name,
            correct=outcome_matrix(records[s.name], "correct"),
            per_query_flops=s.flops_per_query,
            one_time_flops=s.training.flops if s.training else 0.0,
            family=s.family,
            correct_lenient=outcome_matrix(records[s.name], "correct_lenient"),
            per_query_tokens=s.prompt_tokens + s.generated_tokens,
        )
        for s in summaries
    ]
    recommendation = decide.recommend(
        outcomes,
        config.target.accuracy,
        lenient=config.target.lenient,
        margin=config.target.margin,
        expected_queries=config.costs.expected_queries,
        learning_curve_hint=(learning_curve or {}).get("hint"),
        labels_forecast=labels_forecast(learning_curve),
        order=[estimate.name for estimate in cost_order] if cost_order is not None else None,
    )
    return Report(
        name=config.name,
        model=config.model.label,
        served_models=list(served_models) if served_models is not None else None,
        target=config.target,
        strategy=config.strategy,
        stopped_early_at=stopped_early_at,
        warnings=[
            {"code": "skipped_arm", "arm": skip["arm"], "message": f"{skip['arm']} was not run: {skip['reason']}"}
            for skip in skipped_arms
        ] + cost_basis_warnings(outcomes) + report_warnings(summaries, records, config.metric.accuracy),
        skipped_arms=list(skipped_arms),
        data=DataSummary(split_sizes["train"], split_sizes["dev"], split_sizes["test"], overlap),
        arms=list(summaries),
        paired_tests=paired_tests(records, [s.name for s in summaries], recommendation.arm),
        costs=costs(summaries, config.costs),
        cost_order=list(cost_order) if cost_order is not None else None,
        break_even=break_even(outcomes),
        learning_curve=learning_curve,
        effort=effort_curves(summaries, split_sizes["dev"]),
        recommendation=recommendation,
        protocol=protocol,
        environment=environment,
        examples=example_table({s.name: records[s.name] for s in summaries}),
    )


def labels_forecast(learning_curve: dict | None) -> decide.LabelsForecast | None:
    """The fine-tuning curve's forecast of the labels that reach the target (`forecast.forecast_labels`,
    in the curve's "forecast"), as the verdict states it; None without a curve or a fit."""
    forecast = ((learning_curve or {}).get("forecast") or {}).get("finetune")
    if not forecast or not forecast.get("labels_to_target") or not forecast.get("observed"):
        return None
    needed = forecast["labels_to_target"]

    def count(value: int | str) -> float | None:
        return None if value == NOT_WITHIN else float(value)

    return decide.LabelsForecast(
        arm=learning_curve["finetune_kind"],
        labels_used=int(max(labels for labels, _ in forecast["observed"])),
        needed=count(needed["value"]),
        low=count(needed["low"]),
        high=count(needed["high"]),
        level=forecast["level"],
        horizon=HORIZON,
    )


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


def paired_tests(
    records: dict[str, list[list[ExampleRecord]]], names: list[str], recommended: str | None
) -> list[PairedComparison]:
    """Every arm against `baseline` and against the recommended arm, on the same test items, each
    p-value shown with its Holm adjustment over every pair of arms (`decide.pairwise_holm`; accuracy
    and relevance are separate families)."""
    correct = {name: outcome_matrix(records[name], "correct") for name in names}
    relevance = {name: relevance_matrix(records[name]) for name in names}
    accuracy_family = decide.pairwise_holm(correct, stats.paired_accuracy_test)
    relevance_family = decide.pairwise_holm(relevance, stats.paired_bootstrap_test)
    references = [r for r in ("baseline", recommended) if r is not None and r in records]
    tests = []
    for reference in dict.fromkeys(references):
        for name in names:
            if name == reference:
                continue
            pair = frozenset((name, reference))
            accuracy = stats.paired_accuracy_test(correct[name], correct[reference])
            relevance_test = stats.paired_bootstrap_test(relevance[name], relevance[reference])
            tests.append(PairedComparison(name, reference, replace(accuracy, p_adjusted=accuracy_family[pair]),
                                          replace(relevance_test, p_adjusted=relevance_family[pair])))
    return tests


def break_even(outcomes: Sequence[decide.ArmOutcome]) -> list[BreakEven]:
    """For each fine-tuned arm: after how many queries its one-time training cost is repaid by
    cheaper queries than the most accurate prompt arm (`decide.most_accurate`), among the prompt
    arms whose cost per query is known. A prompt arm's own one-time cost (a prompt search) is paid
    too: only what training costs beyond it needs repaying."""
    best_prompt = decide.most_accurate([arm for arm in outcomes if arm.prompted and arm.per_query_flops])
    if best_prompt is None:
        return []
    return [
        BreakEven(
            arm=arm.name,
            against=best_prompt.name,
            training_flops=arm.one_time_flops,
            flops_per_query=arm.per_query_flops,
            against_flops_per_query=best_prompt.per_query_flops,
            queries=stats.break_even_queries(max(0.0, arm.one_time_flops - best_prompt.one_time_flops),
                                             arm.per_query_flops, best_prompt.per_query_flops),
        )
        for arm in outcomes
        if arm.fine_tuned and arm.per_query_flops
    ]


def costs(summaries: Sequence[ArmSummary], prices: CostConfig) -> list[ArmCost]:
    """Per arm: what one query costs and what the arm cost once, in FLOPs and seconds (comparable
    across machines and measured here), and in money where prices are given."""
    rows = []
    for arm in summaries:
        tokens = arm.prompt_tokens + arm.generated_tokens
        cost = ArmCost(
            arm=arm.name,
            query_flops=arm.flops_per_query,
            query_seconds=arm.seconds_per_query,
            query_tokens=tokens,
            one_time_flops=arm.training.flops if arm.training else 0.0,
            one_time_seconds=arm.training.wall_seconds if arm.training else 0.0,
            train_tokens=arm.training.train_tokens if arm.training else 0,
        )
        if prices.price_per_hour is not None or prices.price_per_1k_tokens is not None:
            query_price = (prices.price_per_1k_tokens or 0.0) * tokens / 1000 + (
                prices.price_per_hour or 0.0) * arm.seconds_per_query / 3600
            one_time_price = (prices.price_per_hour or 0.0) * cost.one_time_seconds / 3600
            total = one_time_price + query_price * prices.expected_queries if prices.expected_queries else None
            cost = replace(cost, query_price=query_price, one_time_price=one_time_price,
                           total_price_at_expected_queries=total)
        rows.append(cost)
    return rows


# ---- the examples table ----------------------------------------------------------------------------

EXAMPLES_SHOWN = 500  # rows of the examples table; more would make the page slow to open


def example_table(records: dict[str, list[list[ExampleRecord]]], limit: int = EXAMPLES_SHOWN) -> ExampleTable:
    """One row per test item with its reference answer and each arm's answer (first seed of each
    arm), marked right or wrong in the strict view. Every item when there are at most `limit`; else the items where the arms
    disagree first (they say the most), then the others, in test order."""
    names = tuple(records)
    if not names:
        return ExampleTable(names, (), 0)
    first_seed = {name: {r.example_id: r for r in records[name][0]} for name in names}
    rows = []
    for record in records[names[0]][0]:
        if not all(record.example_id in first_seed[name] for name in names):
            continue
        cells = [first_seed[name][record.example_id] for name in names]
        rows.append(ExampleRow(
            id=record.example_id,
            reference=record.targets[0] if record.targets else "",
            disagree=len({c.correct >= 0.5 for c in cells}) > 1,
            answers=tuple(ArmAnswer(name, c.answer, c.correct >= 0.5) for name, c in zip(names, cells)),
        ))
    if len(rows) <= limit:
        return ExampleTable(names, tuple(rows), len(rows))
    order = {id(row): index for index, row in enumerate(rows)}
    chosen = sorted(rows, key=lambda row: not row.disagree)[:limit]  # a stable sort keeps test order within each
    return ExampleTable(names, tuple(sorted(chosen, key=lambda row: order[id(row)])), len(rows))


def write_report(report: Report, run_dir: Path, console: Console) -> None:
    """Write report.json and report.html into `run_dir`; print the terminal summary.

    The page is drawn (plots and all) only when it would differ from the one already there: an
    unchanged re-run keeps it, and draws nothing."""
    write_text_atomic(run_dir / "report.json", report.to_json())
    page, key = run_dir / "report.html", page_key(report)
    if written_page_key(page) != key:
        write_text_atomic(page, render_html(report, key))
    print_summary(report, console)


def page_key(report: Report) -> str:
    """`keys.report_page_key` of what the page shows: the report, of whose environment only the
    tuneorprompt version and commit it names, and the answers table; and of the code that draws it."""
    shown = {k: v for k, v in report.to_dict().items() if k != "environment"}
    environment = report.environment or {}
    shown["generated_by"] = [(environment.get("packages") or {}).get("tuneorprompt"), environment.get("git_commit")]
    renderers = [Path(module.__file__) for module in (html, notes, summary_module)]
    return report_page_key(shown, jsonable(report.examples), renderers)
