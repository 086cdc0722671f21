"""The terminal summary: warnings first (scoring views that disagree, dev choices that were ties),
then one row per arm, notes on arms whose prompts were shortened, then the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from tuneorprompt.report.notes import forecast_lines, search_lines, shortened_prompts
from tuneorprompt.safe_text import for_terminal
from tuneorprompt.summary import ACCURACY

if TYPE_CHECKING:
    from tuneorprompt.report.build import Report


def print_warnings(report: Report, console: Console) -> None:
    """Each warning with its example replies: what the reader must judge before reading any number."""
    for warning in report.warnings:
        console.print(f"[bold red]Warning ({warning['code']}):[/] {for_terminal(warning['message'])}")
        examples = warning.get("examples") or []
        if examples:
            table = Table(title="example replies", title_justify="left")
            for column in ("arm", "reply", "answer extracted", "reference", "strict", "lenient"):
                table.add_column(column, overflow="fold")
            for e in examples:
                table.add_row(*(for_terminal(str(e[k])) for k in ("arm", "reply", "answer", "reference")),
                              f"{e['strict']:g}", f"{e['lenient']:g}")
            console.print(table)


def print_summary(report: Report, console: Console) -> None:
    print_warnings(report, console)
    target = ACCURACY.with_unit(report.target.accuracy, 0)
    table = Table(title=f"{for_terminal(report.name)}: {report.data.n_test} test items, target accuracy {target}")
    columns = ("arm", "accuracy % [95% CI]", "vs target", "lenient % [95% CI]", "relevance [95% CI]", "prompt tok",
               "gen tok", "ms/query", "train s", "peak MiB")
    for column in columns:
        # The state keeps its words when the table is squeezed; the items that would decide an
        # undecided arm are in the verdict below.
        table.add_column(column, justify="left" if column == "arm" else "right", no_wrap=True,
                         min_width=len("falls short") if column == "vs target" else None)
    decision = report.recommendation
    recommended = decision.arm
    for arm in report.arms:
        name = for_terminal(arm.name)
        table.add_row(
            f"[bold green]{name} *[/]" if arm.name == recommended else name,
            arm.accuracy.shown(),
            decision.states.get(arm.name, "-"),  # an arm the ladder skipped has no state
            arm.accuracy_lenient.shown(),
            arm.relevance.shown(),
            f"{arm.prompt_tokens:.0f}",
            f"{arm.generated_tokens:.1f}",
            f"{1000 * arm.seconds_per_query:.1f}",
            f"{arm.training.wall_seconds:.0f}" if arm.training else "-",
            f"{arm.peak_rss_mb:.0f}" if arm.peak_rss_mb else "-",
        )
    console.print(table)
    for note in shortened_prompts(report):
        console.print(f"[yellow]Note:[/] {for_terminal(note)}")
    for line in search_lines(report):
        console.print(f"[cyan]Search:[/] {for_terminal(line)}")
    for comparison in (report.effort or {}).get("comparisons", []):
        console.print(f"[cyan]Effort:[/] {for_terminal(comparison['sentence'])}")
    for line in forecast_lines(report):
        console.print(f"[cyan]Label forecast:[/] {for_terminal(line)}")
    style = "bold green" if recommended else "bold yellow"
    console.print(f"[{style}]Recommendation:[/] [bold]{for_terminal(decision.headline)}[/]")
    console.print(for_terminal(decision.details))
