"""`tuneorprompt demo` end to end on the bundled testbed model, as a new user runs it: the two
bundled experiments must tell their stories, with the margins the testbed was built to show."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.golden_reports import as_text, machine, normalized, read_golden
from tuneorprompt import stats
from tuneorprompt.cli import app

pytestmark = pytest.mark.slow


def run_demo(task: str, out) -> dict:
    result = CliRunner().invoke(app, ["demo", "--task", task, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Recommendation:" in result.output
    assert (out / "report.html").exists()
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict:
    """Each bundled demo run once for this module: task -> (report, run directory)."""
    runs = {}

    def run(task: str):
        if task not in runs:
            out = tmp_path_factory.mktemp("demo") / task
            runs[task] = (run_demo(task, out), out)
        return runs[task]

    return run


@pytest.mark.parametrize("task", ["capitals", "newfacts"])
def test_demo_report_matches_its_golden_file(demo_runs, task):
    """The report, without timings, memory and paths, is byte-identical to the golden one
    (tests/golden): a change meant to keep behaviour must keep every number and sentence."""
    report, run_dir = demo_runs(task)
    written_on, golden = read_golden(f"demo-{task}")
    if machine() != written_on:
        pytest.skip(f"the golden report was written on {written_on}; this machine is {machine()}: a kernel may "
                    "round differently here, so only the story-level tests apply")
    assert as_text(normalized(report, run_dir)) == as_text(golden)


def outcomes_of(run_dir, arm: str) -> np.ndarray:
    """An arm's test correctness `[n_seeds, n_items]` from a fresh run's store (one result per arm and
    seed), items in id order."""
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        rows = db.execute("SELECT seed, example_id, correct FROM records WHERE arm = ? AND split = 'test' "
                          "ORDER BY seed, example_id", (arm,)).fetchall()
    seeds = sorted({seed for seed, _, _ in rows})
    return np.array([[correct for s, _, correct in rows if s == seed] for seed in seeds])


def test_capitals_prompting_helps_but_fine_tuning_wins(demo_runs):
    report, run_dir = demo_runs("capitals")
    arms = {a["name"]: a for a in report["arms"]}
    accuracy = {name: a["accuracy"]["value"] for name, a in arms.items()}
    prompt_arms = [a for a in report["arms"] if a["family"] != "finetune"]
    best_prompt = max(prompt_arms, key=lambda a: a["accuracy"]["value"])

    assert report["data"]["n_test"] >= 200
    assert 0.45 <= accuracy["baseline"] <= 0.70
    assert accuracy["instruction"] >= accuracy["baseline"] + 0.10
    # Demonstrations beat the plain prompt, and the best of them beats the instruction...
    few_shot = [a["accuracy"]["value"] for a in report["arms"] if a["kind"] in {"few_shot", "few_shot_knn"}]
    assert min(few_shot) > accuracy["baseline"]
    assert max(few_shot) > accuracy["instruction"]
    # ...but fine-tuning is clearly ahead of every prompt.
    for name in ("lora", "full"):
        assert accuracy[name] >= 0.85
        assert accuracy[name] >= best_prompt["accuracy"]["value"] + 0.05
        assert arms[name]["accuracy"]["ci_low"] > best_prompt["accuracy"]["ci_high"]
        assert arms[name]["training"]["wall_seconds"] > 0 and arms[name]["training"]["trainable_params"] > 0
    assert report["recommendation"]["arm"] in {"lora", "full", "lora+instruction"}
    # Relevance moves with accuracy: the fine-tuned arms are also the most relevant.
    assert arms["lora"]["relevance"]["value"] > arms["baseline"]["relevance"]["value"]
    # The evidence behind the decision.
    assert {t["accuracy"]["test"] for t in report["paired_tests"]} <= {"mcnemar", "mcnemar_clustered"}
    assert len(arms["few_shot@2"]["seeds"]) >= 3
    curve = report["learning_curve"]
    assert [p["x"] for p in curve["finetune"]][-1] == report["data"]["n_train"]
    assert [p["x"] for p in curve["few_shot"]][0] == 0
    assert report["break_even"] and report["costs"]
    # The prompt side searched with fine-tuning's budget is at least as accurate as the best fixed
    # prompt arm (no significant loss on the same test items), and still behind fine-tuning.
    search = arms["prompt_search"]
    fixed = max((a for a in report["arms"] if a["kind"] in {"instruction", "few_shot", "few_shot_knn"}),
                key=lambda a: a["accuracy"]["value"])
    versus = stats.paired_accuracy_test(outcomes_of(run_dir, "prompt_search"), outcomes_of(run_dir, fixed["name"]))
    assert versus.difference > -0.02 and not (versus.significant and versus.difference < 0)
    assert search["accuracy"]["ci_high"] < arms["lora"]["accuracy"]["ci_low"]
    assert search["training"]["flops"] <= search["details"][0]["budget_flops"]
    assert {c["prompt"] for c in report["effort"]["comparisons"]} == {"prompt_search"}
    # The verdict leads with what to do, and the forecast says where more labels would lead.
    decision = report["recommendation"]
    assert decision["status"] == "recommended" and decision["headline"].startswith(f"Use {decision['arm']}:")
    assert decision["states"][decision["arm"]] == "meets"
    forecast = curve["forecast"]["finetune"]
    assert [x for x, _ in forecast["observed"]] == [p["x"] for p in curve["finetune"]]
    assert forecast["backtest"] is not None and forecast["backtest"]["error"] < 0.10
    assert [p["labels"] for p in forecast["predictions"]] == [2 * curve["finetune"][-1]["x"], 4 * curve["finetune"][-1]["x"]]


def test_newfacts_only_context_reaches_the_facts(demo_runs):
    report, _ = demo_runs("newfacts")
    arms = {a["name"]: a for a in report["arms"]}
    context = arms["context"]["accuracy"]
    for name, arm in arms.items():
        if name != "context":
            assert arm["accuracy"]["ci_high"] < context["ci_low"], name
    assert report["recommendation"]["arm"] == "context"
