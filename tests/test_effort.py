"""Effort curves: each side's dev standing against the one-time FLOPs it spent, and where the lead
changes hands, from report rows built as a run builds them."""

from __future__ import annotations

import pytest

from tests.test_scoring_views import arm_records
from tuneorprompt.effort import EffortCurve, EffortPoint, effort_curves, grid_curve, overtakes, search_curve
from tuneorprompt.stats import training_flops
from tuneorprompt.summary import summarize_arm

PARAMS = 1000  # the model's parameters: FLOPs per query 2 * 1000 * (40 prompt + 8 generated tokens) = 96,000
N_DEV = 50


def lora_info(dev_scores: dict[str, list[float]]) -> dict:
    """What a LoRA arm records: its grid's dev scores per learning rate and epoch, and its training cost."""
    return {"training": {"wall_seconds": 60.0, "train_tokens": 4000, "trainable_params": 10, "total_params": PARAMS,
                         "peak_rss_mb": 1.0, "peak_gpu_mb": None, "adapter_mb": 1.0, "flops": 1e9,
                         "extra": {"dev_scores": dev_scores, "tokens_per_epoch": 1000, "learning_rate": 1e-3,
                                   "epoch": 2}}}


def lora_row(dev_scores: dict[str, list[float]]):
    return summarize_arm("lora", "lora", [arm_records("lora", range(50), style="short")], [lora_info(dev_scores)],
                         num_parameters=PARAMS, family="finetune", backend="hf")


def search_row(trajectory: list[dict], spent: float):
    info = {"trajectory": trajectory, "spent_flops": spent}
    return summarize_arm("prompt_search", "prompt_search", [arm_records("prompt_search", range(40))], [info],
                         num_parameters=PARAMS, family="prompt", backend="hf")


def look(candidate: str, rung: int, score: float, flops: float) -> dict:
    return {"candidate": candidate, "id": candidate, "rung": rung, "items": 10 * (rung + 1), "dev_score": score,
            "flops_so_far": flops, "calls_so_far": 1}


def test_a_grid_spends_training_and_dev_evaluation_per_checkpoint_in_the_order_it_ran():
    row = lora_row({"0.001": [0.3, 0.5], "0.003": [0.6, 0.4]})
    curve = grid_curve(row, N_DEV)
    per_checkpoint = training_flops(PARAMS, 1000, 10) + row.flops_per_query * N_DEV
    assert [p.flops for p in curve.points] == pytest.approx([per_checkpoint * k for k in (1, 2, 3, 4)])
    assert [p.label for p in curve.points] == ["lr 0.001, epoch 1", "lr 0.001, epoch 2", "lr 0.003, epoch 1",
                                              "lr 0.003, epoch 2"]
    # The standing is the best checkpoint so far: the later, worse epoch does not lower it.
    assert [(p.dev_accuracy, p.label) for p in curve.standing] == [
        (0.3, "lr 0.001, epoch 1"), (0.5, "lr 0.001, epoch 2"), (0.6, "lr 0.003, epoch 1"), (0.6, "lr 0.003, epoch 1")]
    assert curve.total_flops == pytest.approx(4 * per_checkpoint)


def test_a_searchs_standing_is_its_incumbent_a_deeper_rung_outranking_a_lucky_first_look():
    curve = search_curve("prompt_search", {"spent_flops": 9e5, "trajectory": [
        look("a", 0, 0.9, 1e5),  # 0.9 on the 10 items of the first rung
        look("b", 0, 0.5, 2e5),
        look("a", 1, 0.6, 5e5),  # on 20 items a falls to 0.6: its deeper score is what the search would stand on
        look("b", 1, 0.7, 9e5),
    ]})
    assert [(p.dev_accuracy, p.label) for p in curve.standing] == [(0.9, "a"), (0.9, "a"), (0.6, "a"), (0.7, "b")]
    assert curve.at(4e5).label == "a" and curve.at(5e4) is None


def test_the_lead_changes_hands_where_the_standings_cross():
    search = EffortCurve("prompt_search", "prompt", (), (EffortPoint(1.0, 0.6, "x", 10), EffortPoint(4.0, 0.7, "y", 30)), 4.0, "")
    grid = EffortCurve("lora", "finetune", (), (EffortPoint(2.0, 0.5, "e1", 50), EffortPoint(3.0, 0.7, "e2", 50),
                                                EffortPoint(6.0, 0.8, "e3", 50)), 6.0, "")
    changes = overtakes(search, grid)
    # At 4.0 the search catches up (0.7 = 0.7): a tie keeps the leader.
    assert [(c["flops"], c["leader"]) for c in changes] == [(2.0, "prompt_search"), (3.0, "lora")]
    assert changes[1]["dev_accuracy"] == 0.7 and changes[1]["other_dev_accuracy"] == 0.6
    assert (changes[0]["items"], changes[0]["other_items"]) == (10, 50)  # the search's early lead rests on 10 items
    # Each lead is judged at its end: the search's at 2.0 (60% on 10 items against 50% on 50), lora's at 6.0,
    # the last budget (80% on 50 against 70% on 30); both within noise.
    assert [c["until_flops"] for c in changes] == [2.0, 6.0]
    assert (changes[1]["until_dev_accuracy"], changes[1]["until_other_items"]) == (0.8, 30)
    assert [c["beyond_noise"] for c in changes] == [False, False]


def test_the_sentence_says_which_leads_on_dev_are_beyond_noise_at_their_end():
    def comparison(search_points, grid_points):
        search = EffortCurve("prompt_search", "prompt", (), tuple(search_points), 9.0, "")
        grid = EffortCurve("lora", "finetune", (), tuple(grid_points), 9.0, "")
        return effort_curves_sentence(search, grid)

    # The cities run's story: a search leading on 6 dev items, then level within a few points on 40.
    noisy = comparison([EffortPoint(1.0, 5 / 6, "a", 6), EffortPoint(4.0, 0.75, "b", 28)],
                       [EffortPoint(2.0, 0.775, "e1", 40), EffortPoint(3.0, 0.8, "e2", 40)])
    assert noisy.endswith("No lead here is beyond dev noise (at the end of each lead the two scores' 95% Wilson "
                          "intervals overlap): the test figures decide.")
    # The search's early lead on 10 items is noise; 95% on 200 items against its 70% on 10 is not.
    clear = comparison([EffortPoint(1.0, 0.7, "a", 10)],
                       [EffortPoint(0.5, 0.6, "e1", 200), EffortPoint(3.0, 0.95, "e2", 200)])
    assert "1 of these 2 leads are within dev noise" in clear
    # The SmolLM2 capitals run's story: the search's first look, 83.3% on 6 items, far ahead of LoRA's 20.0% on
    # 40; at the end the search's pick scores 57.1% on 28 against LoRA's 25.0%, and the lead is judged there:
    # within noise.
    early, lora = [EffortPoint(1.0, 5 / 6, "a", 6)], [EffortPoint(2.0, 0.2, "e1", 40), EffortPoint(3.0, 0.25, "e2", 40)]
    faded = comparison(early + [EffortPoint(4.0, 16 / 28, "b", 28)], lora)
    assert ", and holds the lead to the end, 4 FLOPs (57.1% on 28 dev items against 25.0% on 40)." in faded
    assert faded.endswith("No lead here is beyond dev noise (at the end of each lead the two scores' 95% Wilson "
                          "intervals overlap): the test figures decide.")
    held = comparison(early + [EffortPoint(4.0, 21 / 28, "b", 28)], lora)
    assert held.endswith("This lead is beyond dev noise (at its end the two scores' 95% Wilson intervals do not overlap).")


def effort_curves_sentence(search: EffortCurve, grid: EffortCurve) -> str:
    from tuneorprompt.effort import overtake_sentence

    return overtake_sentence(search, grid, overtakes(search, grid))


def test_the_report_carries_each_curve_and_the_sentence_that_compares_them():
    search = search_row([look("a", 0, 0.55, 1e6), look("a", 1, 0.6, 3e6)], 3e6)
    grid = lora_row({"0.001": [0.3, 0.8]})
    effort = effort_curves([search, grid], N_DEV)
    assert [c["arm"] for c in effort["curves"]] == ["prompt_search", "lora"]
    (comparison,) = effort["comparisons"]
    assert comparison["sentence"].startswith("Once both have a dev score")
    assert "prompt_search leads (60.0% on 20 dev items against 30.0% on 50)" in comparison["sentence"]
    assert "lora overtakes at" in comparison["sentence"]
    assert effort_curves([grid], N_DEV)["comparisons"] == []
    assert effort_curves([summarize_arm("baseline", "baseline", [arm_records("baseline", range(5))], [{}],
                                        num_parameters=PARAMS, family="prompt", backend="hf")], N_DEV) is None


def test_the_page_shows_the_search_its_winning_prompt_top_candidates_and_the_effort_plot(tmp_path):
    import io

    from rich.console import Console

    from tests.test_scoring_views import inputs
    from tuneorprompt.report import build_report, write_report

    trajectory = [look("a", 0, 0.55, 1e6), look("a", 1, 0.6, 3e6)]
    search_info = {
        "trajectory": trajectory, "spent_flops": 3e6, "budget_flops": 4e6, "calls": 30, "chosen": "2 given demos",
        "dev_items": {"search": 40, "holdout": 10, "holdout_fraction": 0.2}, "holdout_score": 0.5,
        "best_search_score": 0.6, "dev_optimism": 0.1, "candidates_looked_at": 2, "candidates_in_space": 9,
        "winning_prompt": "Q: What is the capital of <Land0>?\nA:",
        "top": [{"candidate": "2 given demos", "id": "a", "rung": 1, "items": 20, "dev_score": 0.6,
                 "search_flops": 3e6, "prompt_tokens_per_query": 40, "flops_per_query": 9.6e4}],
    }
    lora = lora_info({"0.001": [0.3, 0.8]})
    case = inputs({
        "prompt_search": ("prompt_search", [arm_records("prompt_search", range(40))], [search_info]),
        "lora": ("lora", [arm_records("lora", range(50), style="short")], [lora]),
    }, 0.3)
    console = Console(file=io.StringIO(), width=300)
    write_report(build_report(**case), tmp_path, console)
    assert "Effort: Once both have a dev score" in console.file.getvalue()
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Prompt search: prompt_search</h2>" in page and "dev optimism +10.0 points" in page
    assert "<td>2 given demos</td><td>60.0</td><td>20</td>" in page
    assert "<pre>Q: What is the capital of &lt;Land0&gt;?\nA:</pre>" in page  # escaped, as the model saw it
    assert "<h3>Effort: dev accuracy against one-time FLOPs</h3>" in page
