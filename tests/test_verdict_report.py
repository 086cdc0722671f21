"""What it would take to decide, as the reader sees it: the verdict's headline, each arm's state
against the target, Holm-adjusted p-values, detectable differences, the differences with their
intervals and the label forecast, in the terminal, report.json and report.html of a built report."""

from __future__ import annotations

import io
import json

import numpy as np
from rich.console import Console

from tests.test_scoring_views import LEARNING_CURVE, plus_48_case
from tuneorprompt.forecast import forecast_labels
from tuneorprompt.report import build_report, write_report


def rising_curve() -> dict:
    """LEARNING_CURVE with a forecast fitted to a fine-tuning curve still rising at 500 labels."""
    rng = np.random.default_rng(7)
    points = [(n, (rng.random((1, 100)) < 0.98 - 0.8 * (n / 25) ** -0.4).astype(float)) for n in (25, 50, 100, 250, 500)]
    finetune = forecast_labels(points, 0.9).to_dict()
    return {**LEARNING_CURVE, "forecast": {"finetune": finetune, "few_shot": forecast_labels([], 0.9).to_dict()}}


def test_a_run_that_falls_short_leads_with_the_forecast_and_shows_it_everywhere(tmp_path):
    case = plus_48_case(target=0.9)
    case["learning_curve"] = rising_curve()
    report = build_report(**case)
    decision = report.recommendation
    assert decision.status == "falls short" and set(decision.states.values()) == {"falls short"}
    forecast = case["learning_curve"]["forecast"]["finetune"]
    needed = forecast["labels_to_target"]
    assert decision.headline.startswith("No arm meets the 90.0% accuracy target: the most accurate, lora")
    assert "lora's learning curve" in decision.headline and "500 were used" in decision.headline

    console = Console(file=io.StringIO(), width=400)
    write_report(report, tmp_path, console)
    text = console.file.getvalue()
    assert "vs target" in text and "falls short" in text
    assert f"Label forecast: lora: {forecast['predictions'][0]['value']:.1%}" in text
    assert "backtest: the last point (500)" in text
    assert text.index("Label forecast:") < text.index("Recommendation:")

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<p id="headline"><strong>No arm meets the 90.0% accuracy target' in page
    assert "<h3>Label forecast</h3>" in page and '<ul id="forecast">' in page
    assert f"target at {needed['value']:,}" in page if isinstance(needed["value"], int) else needed["value"] in page
    assert "Holm p" in page and "smallest detectable difference (80% power)" in page
    assert '<table id="differences">' in page
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["learning_curve"]["forecast"]["finetune"]["backtest"] == forecast["backtest"]
    assert written["recommendation"]["headline"] == decision.headline
    assert all(t["accuracy"]["p_adjusted"] >= t["accuracy"]["p_value"] for t in written["paired_tests"])


def test_an_undecided_arm_shows_the_items_that_would_decide_it_in_the_table(tmp_path):
    report = build_report(**plus_48_case(target=0.5))  # lora at 48% on 100 items: [38.5, 57.7] straddles 50%
    decision = report.recommendation
    assert decision.status == "undecided" and decision.states["lora"] == "undecided"
    items = decision.items_to_decide["lora"]
    console = Console(file=io.StringIO(), width=400)
    write_report(report, tmp_path, console)
    assert f"About {items:,} test items would decide it" in console.file.getvalue()
    assert f"<td>undecided (~{items:,} items)</td>" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_the_state_column_keeps_its_words_in_a_narrow_terminal(tmp_path):
    report = build_report(**plus_48_case(target=0.5))
    console = Console(file=io.StringIO(), width=100)  # narrower than the table wants
    write_report(report, tmp_path, console)
    text = console.file.getvalue()
    assert "undecided" in text and "falls short" in text
