"""The terminal summary: warnings first (scoring views that disagree, dev choices that were ties),
then one row per arm, notes on arms whose prompts were shortened, then the verdict."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from tuneorprompt.report.notes import shortened_prompts


def _fmt_interval(metric: dict, scale: float, digits: int) -> str:
    value, low, high = (metric[k] * scale for k in ("value", "ci_low", "ci_high"))
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def print_warnings(report: dict, console: Console) -> None:
    """Each warning with its example replies: what the reader must judge before reading any number."""
    for warning in report.get("warnings") or []:
        console.print(f"[bold red]Warning ({warning['code']}):[/] {rich_escape(warning['message'])}")
        examples = warning.get("examples") or []
        if examples:
            table = Table(title="example replies", title_justify="left")
            for column in ("arm", "reply", "answer extracted", "reference", "strict", "lenient"):
                table.add_column(column, overflow="fold")
            for e in examples:
                table.add_row(*(rich_escape(str(e[k])) for k in ("arm", "reply", "answer", "reference")),
                              f"{e['strict']:g}", f"{e['lenient']:g}")
            console.print(table)


def print_summary(report: dict, console: Console) -> None:
    print_warnings(report, console)
    target = report["target"]["accuracy"]
    table = Table(title=f"{report['name']}: {report['data']['n_test']} test items, target accuracy {target:.0%}")
    columns = ("arm", "accuracy % [95% CI]", "lenient % [95% CI]", "relevance [95% CI]", "prompt tok", "gen tok",
               "ms/query", "train s", "peak MiB")
    for column in columns:
        table.add_column(column, justify="left" if column == "arm" else "right", no_wrap=True)
    recommended = (report.get("recommendation") or {}).get("arm")
    for arm in report["arms"]:
        training = arm.get("training") or {}
        name = f"[bold green]{arm['name']} *[/]" if arm["name"] == recommended else arm["name"]
        table.add_row(
            name,
            _fmt_interval(arm["accuracy"], 100, 1),
            _fmt_interval(arm["accuracy_lenient"], 100, 1) if arm.get("accuracy_lenient") else "-",
            _fmt_interval(arm["relevance"], 1, 1),
            f"{arm['prompt_tokens']:.0f}",
            f"{arm['generated_tokens']:.1f}",
            f"{1000 * arm['seconds_per_query']:.1f}",
            f"{training['wall_seconds']:.0f}" if training else "-",
            f"{arm['peak_rss_mb']:.0f}" if arm.get("peak_rss_mb") else "-",
        )
    console.print(table)
    for note in shortened_prompts(report):
        console.print(f"[yellow]Note:[/] {rich_escape(note)}")
    recommendation = report.get("recommendation") or {}
    style = "bold green" if recommendation.get("arm") else "bold yellow"
    console.print(f"[{style}]Recommendation:[/] {rich_escape(recommendation.get('reason', 'none'))}")
