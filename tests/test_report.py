"""The report from small synthetic records: shortened prompts are visible in every output, and the
files are written whole; and from a real run whose dev prompts must drop demos to fit the context."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.test_stale_results import task
from tuneorprompt.config import config_from_dict
from tuneorprompt.data import OverlapReport
from tuneorprompt.decide import CostEstimate
from tuneorprompt.experiment import run_experiment
from tuneorprompt.records import ExampleRecord
from tuneorprompt.report import build_report, write_report
from tuneorprompt.report.html import frontier_figure
from tuneorprompt.report.notes import shortened_prompts
from tuneorprompt.rundir import RunDirError
from tuneorprompt.summary import summarize_arm

N_TEST, N_DEV = 6, 4
NOTE = "few_shot@8: 2 (seed 0), 3 (seed 1) of 6 test prompts shortened (demos dropped to fit the context)"


def records(arm: str, seed: int, right: int) -> list[ExampleRecord]:
    """N_TEST test records, the first `right` of them correct."""
    return [
        ExampleRecord(arm=arm, seed=seed, split="test", example_id=f"te{i}", targets=(f"A{i}",), prompt=f"Q{i}",
                      completion=f" A{i}", answer=f"A{i}" if i < right else "?", correct=float(i < right),
                      correct_lenient=float(i < right), relevance=0.5 + 0.05 * i, prompt_tokens=10,
                      generated_tokens=2, seconds=0.01)
        for i in range(N_TEST)
    ]


def report_inputs(few_shot_details: list[dict], target: float = 0.5) -> dict:
    config = config_from_dict({
        "name": "synthetic",
        "model": {"path": "unused"},
        "data": {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
        "arms": ["baseline", {"kind": "few_shot", "k": [8]}],
        "seeds": [0, 1],
        "target": {"accuracy": target},
    })
    by_arm = {"baseline": [records("baseline", 0, 2)],
              "few_shot@8": [records("few_shot@8", 0, 4), records("few_shot@8", 1, 5)]}
    summaries = [
        summarize_arm("baseline", "baseline", by_arm["baseline"], [{}], num_parameters=1000, family="prompt",
                      backend="hf"),
        summarize_arm("few_shot@8", "few_shot", by_arm["few_shot@8"], few_shot_details, num_parameters=1000, family="prompt",
                      backend="hf"),
    ]
    return dict(config=config, summaries=summaries, records=by_arm, overlap=OverlapReport(N_TEST, ()),
                split_sizes={"train": 20, "dev": N_DEV, "test": N_TEST},
                environment={"packages": {"tuneorprompt": "test"}, "git_commit": None})


SHORTENED = [{"k": 8, "prompts_shortened_test": 2}, {"k": 8, "prompts_shortened_test": 3}]  # as run_arm records them


def test_notes_name_the_arm_split_and_counts_per_seed():
    assert shortened_prompts(build_report(**report_inputs(SHORTENED))) == [NOTE]


def test_counts_equal_across_seeds_are_given_once():
    report = build_report(**report_inputs([{"prompts_shortened_test": 2}, {"prompts_shortened_test": 2}]))
    assert shortened_prompts(report) == [
        "few_shot@8: 2 of 6 test prompts shortened (demos dropped to fit the context)"
    ]


def test_no_note_when_no_prompt_was_shortened():
    assert shortened_prompts(build_report(**report_inputs([{"k": 8}, {"k": 8}]))) == []


def test_the_terminal_summary_and_the_page_show_the_note(tmp_path):
    console = Console(file=io.StringIO(), width=300)
    write_report(build_report(**report_inputs(SHORTENED)), tmp_path, console)
    assert f"Note: {NOTE}" in console.file.getvalue()
    assert f"<li>{NOTE}</li>" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "report.json").read_text())["arms"][1]["details"] == SHORTENED


def test_escape_sequences_in_replies_reach_the_terminal_escaped_and_the_files_as_they_were(tmp_path):
    report = build_report(**report_inputs(SHORTENED))
    reply = "\x1b]0;pwned\x07\x1b[2J\x9b"  # sets the window title, clears the screen, a C1 CSI
    report.warnings.append({"code": "test", "message": f"a reply {reply}", "examples": [
        {"arm": "baseline", "reply": reply, "answer": "?", "reference": "A0", "strict": 0.0, "lenient": 0.0}]})
    console = Console(file=io.StringIO(), width=300)  # not a terminal: rich adds no escape codes of its own
    write_report(report, tmp_path, console)
    shown = console.file.getvalue()
    assert not {"\x1b", "\x07", "\x9b"} & set(shown)
    assert shown.count("\\x1b]0;pwned\\x07\\x1b[2J\\x9b") == 2  # the message and the example's reply
    assert json.loads((tmp_path / "report.json").read_text())["warnings"][-1]["message"] == f"a reply {reply}"


@pytest.mark.parametrize("name", ["report.json", "report.html"])
def test_the_report_is_never_written_through_a_symlink(tmp_path, name):
    """Written with write_text_atomic: a link planted in the run directory is refused, its target kept."""
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).symlink_to(target)
    with pytest.raises(RunDirError, match=f"{name} is a symbolic link"):
        write_report(build_report(**report_inputs(SHORTENED)), run_dir, Console(file=io.StringIO()))
    assert target.read_text() == "precious"


def test_the_recommendation_follows_the_cost_order_estimated_before_the_run():
    """With a target every arm meets, the recommendation is the first arm of the given order."""
    inputs = report_inputs([{}, {}], target=0.0)
    assert build_report(**inputs).recommendation.arm == "baseline"  # measured costs tie: config order
    order = [CostEstimate("few_shot@8", 1e3, 0.0, 10.0), CostEstimate("baseline", 2e3, 0.0, 20.0)]  # cheapest first
    report = build_report(**inputs, cost_order=order, protocol={"key": "abc"}).to_dict()
    assert report["recommendation"]["arm"] == "few_shot@8"
    assert report["cost_order"] == [e.to_dict() for e in order]
    assert report["protocol"] == {"key": "abc"}


def test_the_page_shows_the_exact_text_each_arm_gave_the_model(tmp_path):
    write_report(build_report(**report_inputs(SHORTENED)), tmp_path, Console(file=io.StringIO()))
    report = json.loads((tmp_path / "report.json").read_text())
    assert [arm["example_prompt"] for arm in report["arms"]] == ["Q0", "Q0"]  # each arm's first test record
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "What the model saw" in page and "<pre>Q0</pre>" in page


# ---- a real run whose prompts must drop demos -----------------------------------------------------


@pytest.fixture
def short_context_model(tmp_path, tiny_gpt2_dir):
    """The tiny GPT-2 with a context of 30 tokens: a question's prompt (about 16 tokens) leaves room
    for 5 new tokens, a prompt with one demonstration (about 35) does not."""
    from transformers import AutoTokenizer

    directory = tmp_path / "short-context"
    shutil.copytree(tiny_gpt2_dir, directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.model_max_length = 30
    tokenizer.save_pretrained(directory)
    return directory


def test_a_fine_tuned_arm_whose_dev_prompts_drop_demos_says_so(tmp_path, short_context_model):
    """LoRA with two demos per query: every dev prompt (scored while training chooses the epoch) and
    every test prompt loses its demos to fit the context, and the arm's row says so for both."""
    config = {
        "name": "short-context",
        "model": {"path": str(short_context_model), "batch_size": 4, "num_threads": 1, "chat_template": False},
        "data": task(tmp_path / "data"),  # 8 train, 4 dev, 4 test
        "generation": {"max_new_tokens": 5},
        "arms": ["baseline", {"kind": "lora", "few_shot_k": 2, "learning_rates": [1e-3], "epochs": 1, "batch_size": 4}],
        "seeds": [0],
    }
    console = Console(file=io.StringIO(), width=300)
    result = run_experiment(config, tmp_path / "run", console=console)
    note = "lora+few_shot@2: 4 of 4 test and 4 of 4 dev prompts shortened (demos dropped to fit the context)"
    assert shortened_prompts(result.report) == [note]
    assert f"Note: {note}" in console.file.getvalue()
    assert f"<li>{note}</li>" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    details = json.loads((tmp_path / "run" / "report.json").read_text())["arms"][1]["details"][0]
    assert (details["prompts_shortened_test"], details["prompts_shortened_dev"]) == (4, 4)


def test_the_report_package_leaves_matplotlib_alone():
    """Importing the report package loads no matplotlib; drawing a page's plots loads it without
    pyplot, so no global backend or figure state (a notebook's own) is touched."""
    code = (
        "import sys\n"
        "from tests.test_report import SHORTENED, report_inputs\n"
        "from tuneorprompt.report import build_report\n"
        "from tuneorprompt.report.html import render_html\n"
        "assert 'matplotlib' not in sys.modules\n"
        "render_html(build_report(**report_inputs(SHORTENED)), \"0\" * 64)\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("costs", [
    [1e8, 4e9, 2e11, 1e14],  # the real demo's range: prompt arms to fine-tuned ones, in FLOPs
    [3e10, 7e10, 6e11],  # a decade and a bit: matplotlib labelled 3e10 and 4e10 on top of each other
    [2.0e8, 2.1e8],  # all arms at about one cost
    [180.0, 2400.0],  # tokens per query, when the model's size is unknown
])
def test_the_cost_axis_tick_labels_never_overlap_and_at_least_two_show(costs):
    figure = frontier_figure([(f"arm{i}", cost, 40.0 + i, i % 2 == 1) for i, cost in enumerate(costs)], "cost")
    axis = figure.axes[0]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    low, high = axis.get_xlim()
    shown = [label for label in axis.get_xticklabels(which="both")
             if label.get_visible() and label.get_text() and low <= label.get_position()[0] <= high]
    assert len(shown) >= 2
    boxes = [label.get_window_extent(renderer) for label in shown]
    overlapping = [(a.get_text(), b.get_text()) for (a, box_a), (b, box_b) in itertools.combinations(zip(shown, boxes), 2)
                   if box_a.overlaps(box_b)]
    assert overlapping == []
    assert low <= min(costs) and max(costs) <= high  # every arm is on the plot
