"""The two scoring views in the report, on synthetic chat-style replies scored by the real matchers.

The motivating case (a real run of SmolLM2-135M-Instruct on capitals, `exact` matcher): every prompt
arm answers in sentences ("The capital of Land3 is Town3.") and scores 0% strict although ~40% of
its replies are right; LoRA learned the short answer format and scores 48% in both views. Read on
the strict view alone, fine-tuning "beats prompting by 48 points"; in the lenient view the gap is
7 points and not significant. The report must say so before anything else.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from rich.console import Console

from tuneorprompt import stats
from tests.fakes import family_of
from tuneorprompt.config import config_from_dict
from tuneorprompt.curves import curve_hint
from tuneorprompt.data import OverlapReport
from tuneorprompt.metrics import exact_match, extract_answer, lenient_match
from tuneorprompt.records import ExampleRecord
from tuneorprompt.report import build_report, write_report
from tuneorprompt.report.html import render_html
from tuneorprompt.summary import outcome_matrix, summarize_arm

N = 100  # test items
# A flat fine-tuning curve: 47% at 250 training examples, 48% at 500.
FINETUNE_CURVE = [{"x": 250, "arm": "lora@n=250", "accuracy": 0.47, "ci_low": 0.37, "ci_high": 0.57},
                  {"x": 500, "arm": "lora", "accuracy": 0.48, "ci_low": 0.38, "ci_high": 0.58}]
CURVE_HINT = curve_hint(FINETUNE_CURVE)
LEARNING_CURVE = {"x_label": "labelled examples used", "finetune_kind": "lora", "crossover": None, "hint": CURVE_HINT,
                  "few_shot": [{"x": 0, "arm": "baseline", "accuracy": 0.0, "ci_low": 0.0, "ci_high": 0.04}],
                  "finetune": FINETUNE_CURVE}


def reply(i: int, style: str, right: bool) -> str:
    """A reply to "What is the capital of Land{i}?" (reference Town{i}): a sentence as chat models
    write, a short answer as a fine-tuned model learns to, or nothing."""
    city = f"Town{i}" if right else "Atlantis"
    return {"sentence": f"The capital of Land{i} is {city}.", "short": city, "empty": ""}[style]


def arm_records(arm: str, right_on: range, style: str = "sentence", seed: int = 0,
                empty_on: range = range(0)) -> list[ExampleRecord]:
    """N records scored as the evaluator scores them: first-line extraction, the exact matcher on
    the answer (strict), `lenient_match` on the whole reply (lenient)."""
    rows = []
    for i in range(N):
        question, targets = f"What is the capital of Land{i}?", (f"Town{i}",)
        completion = reply(i, "empty" if i in empty_on else style, i in right_on)
        answer = extract_answer(completion, "first_line")
        rows.append(ExampleRecord(
            arm=arm, seed=seed, split="test", example_id=f"te{i}", targets=targets, prompt=question,
            completion=completion, answer=answer, correct=max(exact_match(answer, t) for t in targets),
            correct_lenient=lenient_match(completion, targets, question), relevance=0.5,
            prompt_tokens=30 if arm == "baseline" else 40, generated_tokens=8, seconds=0.01,
        ))
    return rows


def training(dev_scores: dict[str, list[float]] | None = None) -> dict:
    return {"wall_seconds": 60.0, "train_tokens": 1000, "trainable_params": 10, "total_params": 1000,
            "peak_rss_mb": 1.0, "peak_gpu_mb": None, "adapter_mb": 1.0, "flops": 1e12,
            "extra": {"learning_rate": 1e-4, "epoch": 2, "dev_scores": dev_scores or {"0.0001": [0.3, 0.45, 0.4]}}}


INSTRUCTION_DEV = {"Answer the question.": 0.02, "Answer with the name of the city only.": 0.05}


def inputs(by_arm: dict[str, tuple[str, list[list[ExampleRecord]], list[dict]]], target: float) -> dict:
    """build_report's inputs for arms given as name -> (kind, records per seed, info per seed)."""
    config = config_from_dict({
        "name": "capitals-chat",
        "model": {"path": "unused"},
        "data": {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
        "arms": ["baseline", "instruction", "lora"],
        "target": {"accuracy": target},
    })
    summaries = [summarize_arm(name, kind, records, infos, num_parameters=1000, family=family_of(kind), backend="hf")
                 for name, (kind, records, infos) in by_arm.items()]
    return dict(config=config, summaries=summaries, records={n: r for n, (_, r, _) in by_arm.items()},
                overlap=OverlapReport(N, ()), split_sizes={"train": 500, "dev": 50, "test": N},
                environment={"packages": {"tuneorprompt": "test"}, "git_commit": None},
                learning_curve=LEARNING_CURVE)


def plus_48_case(target: float = 0.3, instruction_dev: dict = INSTRUCTION_DEV, lora_dev: dict | None = None) -> dict:
    """Prompt arms answer in sentences (0% strict; 30% and 41% lenient); lora answers short (48% both).
    instruction is right on items 0-40, lora on 10-57: lora wins 17 items and loses 10 in the lenient view."""
    return inputs({
        "baseline": ("baseline", [arm_records("baseline", range(30), empty_on=range(95, 100))], [{}]),
        "instruction": ("instruction", [arm_records("instruction", range(41))],
                        [{"instruction": "Answer the question.", "dev_accuracy_by_instruction": instruction_dev}]),
        "lora": ("lora", [arm_records("lora", range(10, 58), style="short")], [{"training": training(lora_dev)}]),
    }, target)


def agreeing_case(target: float = 0.3) -> dict:
    """Every arm answers short: the two views score every reply alike."""
    return inputs({
        "baseline": ("baseline", [arm_records("baseline", range(20), style="short")], [{}]),
        "instruction": ("instruction", [arm_records("instruction", range(30), style="short")],
                        [{"instruction": "Answer the question.", "dev_accuracy_by_instruction": INSTRUCTION_DEV}]),
        "lora": ("lora", [arm_records("lora", range(10, 58), style="short")], [{"training": training()}]),
    }, target)


def report_json(**case) -> dict:
    """report.json's content for build_report's inputs."""
    return build_report(**case).to_dict()


def warning(report: dict, code: str) -> dict | None:
    return next((w for w in report["warnings"] if w["code"] == code), None)


# ---- 1. accuracy in both views ------------------------------------------------------------------------


def test_every_arm_reports_lenient_accuracy_in_the_shape_of_accuracy():
    case = plus_48_case()
    report = report_json(**case)
    arms = {a["name"]: a for a in report["arms"]}
    assert {n: (round(a["accuracy"]["value"], 2), round(a["accuracy_lenient"]["value"], 2)) for n, a in arms.items()} \
        == {"baseline": (0.0, 0.3), "instruction": (0.0, 0.41), "lora": (0.48, 0.48)}
    lenient = arms["instruction"]["accuracy_lenient"]
    assert lenient.keys() == arms["instruction"]["accuracy"].keys()
    interval = stats.accuracy_interval(outcome_matrix(case["records"]["instruction"], "correct_lenient"))
    assert (lenient["ci_low"], lenient["ci_high"]) == (interval.low, interval.high)


# ---- 2. the disagreement warning --------------------------------------------------------------------


def test_the_plus_48_case_warns_that_the_views_disagree_with_example_replies():
    report = report_json(**plus_48_case())
    found = warning(report, "scoring_disagreement")
    assert found is not None and report["warnings"][0] is found  # the first warning
    assert "instruction 0.0% strict against 41.0% lenient" in found["message"]
    assert "baseline 0.0% strict against 30.0% lenient" in found["message"]
    assert "metric.accuracy: exact" in found["message"]
    assert found["arms"] == ["instruction", "baseline"]  # widest gap first; lora's views agree
    examples = found["examples"]
    assert 2 <= len(examples) <= 3 and {e["arm"] for e in examples} == {"instruction", "baseline"}
    first = examples[0]
    assert first == {"arm": "instruction", "seed": 0, "id": "te0", "reply": "The capital of Land0 is Town0.",
                     "answer": "The capital of Land0 is Town0.", "reference": "Town0", "strict": 0.0, "lenient": 1.0}


def test_views_that_agree_give_no_warning():
    report = report_json(**agreeing_case())
    assert report["warnings"] == []
    assert all(a["accuracy"]["value"] == a["accuracy_lenient"]["value"] for a in report["arms"])


def test_arms_that_the_views_order_oppositely_beyond_noise_are_a_disagreement():
    """No arm's views are more than 10 points apart, but an 8-point strict lead (8 items to 0,
    p = 0.0078) becomes a 1-point lenient deficit."""
    ahead = arm_records("few_shot@4", range(50), style="short")
    # instruction is right on 0-41 in short answers and on 42-50 in sentences (right lenient only).
    behind = [replace(r, completion=reply(i, "sentence", True), correct_lenient=1.0) if 42 <= i <= 50 else r
              for i, r in enumerate(arm_records("instruction", range(42), style="short"))]
    report = report_json(**inputs({
        "instruction": ("instruction", [behind], [{}]),
        "few_shot@4": ("few_shot", [ahead], [{}]),
    }, 0.3))
    assert [round(a["accuracy_lenient"]["value"] - a["accuracy"]["value"], 2) for a in report["arms"]] == [0.09, 0.0]
    found = warning(report, "scoring_disagreement")
    assert found is not None and found["arms"] == ["instruction", "few_shot@4"]
    assert ("instruction minus few_shot@4 is -8.0 points strict (p = 0.00781) but +1.0 points lenient"
            in found["message"])
    assert found["examples"][0]["arm"] == "instruction" and found["examples"][0]["lenient"] == 1.0


def test_a_gap_of_exactly_ten_points_is_not_more_than_ten():
    records = [replace(r, correct_lenient=1.0) if 41 <= i <= 50 else r
               for i, r in enumerate(arm_records("instruction", range(41), style="short"))]
    report = report_json(**inputs({"instruction": ("instruction", [records], [{}])}, 0.3))
    assert warning(report, "scoring_disagreement") is None


def test_an_opposite_order_within_noise_is_not_a_disagreement():
    """Strict +1 point (5 items to 4), lenient -1 point: both views say the arms are level."""
    a = arm_records("few_shot@4", range(50), style="short")
    b = [replace(r, correct_lenient=1.0) if r.example_id in ("te54", "te55") else r
         for r in arm_records("instruction", range(5, 54), style="short")]
    report = report_json(**inputs({"few_shot@4": ("few_shot", [a], [{}]), "instruction": ("instruction", [b], [{}])},
                                   0.3))
    arms = {x["name"]: x for x in report["arms"]}
    assert arms["few_shot@4"]["accuracy"]["value"] > arms["instruction"]["accuracy"]["value"]
    assert arms["few_shot@4"]["accuracy_lenient"]["value"] < arms["instruction"]["accuracy_lenient"]["value"]
    assert warning(report, "scoring_disagreement") is None


def test_the_warning_is_shown_first_in_the_terminal_and_the_page(tmp_path):
    console = Console(file=io.StringIO(), width=300)
    report = build_report(**plus_48_case())
    write_report(report, tmp_path, console)
    text = console.file.getvalue()
    shown = text.index("Warning (scoring_disagreement):")
    assert shown < text.index("capitals-chat: 100 test items") < text.index("Recommendation:")
    assert shown == text.index("Warning")  # nothing warns before it
    assert "The capital of Land0 is Town0." in text[shown:text.index("capitals-chat: 100 test items")]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    shown = page.index("Warning (scoring_disagreement):")
    assert shown < page.index('class="verdict') < page.index("<h2>Arms</h2>")
    assert "<td>The capital of Land0 is Town0.</td>" in page[shown:page.index('class="verdict')]
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == report.warnings


# ---- 3. the scoring audit ---------------------------------------------------------------------------


def test_the_scoring_audit_compares_reply_and_reference_lengths_and_shows_disagreements():
    report = report_json(**plus_48_case())
    audit = {a["name"]: a["scoring_audit"] for a in report["arms"]}
    assert audit["instruction"]["reply_words"] == 6.0 and audit["instruction"]["reference_words"] == 1.0
    assert audit["lora"]["reply_words"] == 1.0 and audit["lora"]["empty_replies"] == 0
    assert audit["baseline"]["empty_replies"] == 5 and audit["baseline"]["replies"] == N
    assert (audit["instruction"]["lenient_only"], audit["instruction"]["strict_only"]) == (41, 0)
    assert (audit["lora"]["lenient_only"], audit["lora"]["strict_only"]) == (0, 0)
    assert [e["id"] for e in audit["instruction"]["examples"]] == ["te0", "te1", "te2"]
    assert audit["lora"]["examples"] == []
    page = render_html(build_report(**plus_48_case()), "0" * 64)
    assert "<h2>Scoring audit</h2>" in page and "<td>5 of 100</td>" in page


# ---- 4 and 6. format against content; the prompt-vs-fine-tune test ------------------------------------


def test_the_verdict_says_the_fine_tuning_gain_is_format():
    report = report_json(**plus_48_case(target=0.3))
    reason = report["recommendation"]["reason"]
    assert report["recommendation"]["arm"] == "lora"  # the rule is unchanged: strict view, cheapest adequate arm
    assert ("Of lora's +48.0 points over instruction in the strict view, +41.0 points are format (seen in the "
            "strict view only) and +7.0 points content (seen in both views): the gain is mostly format.") in reason


def test_prompt_against_fine_tune_is_tested_in_both_views_and_stated_in_the_verdict():
    report = report_json(**plus_48_case(target=0.3))
    versus = report["prompt_vs_finetune"]
    # instruction, not baseline: both score 0 strict, and instruction has more right replies lenient.
    assert (versus["prompt_arm"], versus["finetuned_arm"]) == ("instruction", "lora")
    assert versus["strict"]["significant"] and versus["strict"]["difference"] == pytest.approx(0.48)
    assert not versus["lenient"]["significant"] and versus["lenient"]["difference"] == pytest.approx(0.07)
    assert (versus["lenient"]["n_a_better"], versus["lenient"]["n_b_better"]) == (17, 10)
    assert versus["lenient"]["p_value"] == pytest.approx(0.248, abs=0.001)
    assert (versus["gain"], versus["content"], versus["format"]) == pytest.approx((0.48, 0.07, 0.41))
    assert "prompt_vs_finetune" not in report["recommendation"]  # given once, at the top level
    reason = report["recommendation"]["reason"]
    assert "Strict view: lora is significantly more accurate than instruction at 95%" in reason
    assert "Lenient view: No significant difference in accuracy between lora and instruction at 95%" in reason


def test_no_prompt_vs_finetune_without_a_fine_tuned_arm():
    case = plus_48_case()
    for key in ("summaries",):
        case[key] = [s for s in case[key] if s.name != "lora"]
    case["records"].pop("lora")
    report = report_json(**case)
    assert report["prompt_vs_finetune"] is None
    assert "Best prompt arm against best fine-tuned arm" not in report["recommendation"]["reason"]


def test_when_nothing_meets_the_target_the_hint_reads_the_evidence():
    report = report_json(**plus_48_case(target=0.8))
    recommendation = report["recommendation"]
    assert recommendation["arm"] is None
    hint = recommendation["hint"]
    assert hint.startswith("Part of what is missing is format: in the lenient view (a reference answer "
                           "anywhere in the reply) instruction is right on 41.0% of replies against 0.0% strict.")
    assert "Fine-tuning taught mostly the answer format: lora minus instruction is +48.0 points strict but " \
           "+7.0 points lenient" in hint
    assert "a context arm (passages from data.corpus in the prompt) would show whether retrieval" in hint
    assert hint.endswith(CURVE_HINT) and recommendation["reason"].endswith(hint)


def test_a_context_arm_that_adds_facts_is_named_in_the_hint():
    case = plus_48_case(target=0.8)
    context = [arm_records("context", range(70))]  # sentences again, but right far more often
    case["summaries"].append(summarize_arm("context", "context", context, [{}], num_parameters=1000, family="retrieval", backend="hf"))
    case["records"]["context"] = context
    hint = report_json(**case)["recommendation"]["hint"]
    assert "Retrieval supplies facts: context is +29.0 points ahead of instruction in the lenient view" in hint
    assert "would show whether retrieval" not in hint


# ---- 5. ties in dev selection ------------------------------------------------------------------------


def test_an_instruction_choice_where_every_candidate_scored_zero_is_a_tie():
    tied = {"Answer the question.": 0.0, "Answer with the name of the city only.": 0.0, "Be brief.": 0.0}
    report = report_json(**plus_48_case(instruction_dev=tied))
    found = warning(report, "dev_tie")
    assert found["arm"] == "instruction"
    assert found["tied"] == [{"seed": 0, "what": "instruction", "candidates": list(tied), "dev_accuracy": 0.0,
                              "of": 3, "rule": "the earlier candidate"}]
    assert "3 of 3 candidates for the instruction share the best dev accuracy 0.0%" in found["message"]
    assert "'Answer with the name of the city only.'" in found["message"]
    assert "Every candidate scored 0 on dev" in found["message"]
    assert report["warnings"][0]["code"] == "scoring_disagreement"  # the views first


def test_a_tie_at_the_top_of_the_learning_rate_and_epoch_grid_is_reported():
    grid = {"0.0001": [0.3, 0.5, 0.4], "0.0003": [0.5, 0.2, 0.1]}
    report = report_json(**plus_48_case(lora_dev=grid))
    found = warning(report, "dev_tie")
    assert found["arm"] == "lora"
    assert found["tied"][0]["candidates"] == ["learning rate 0.0001 epoch 2", "learning rate 0.0003 epoch 1"]
    assert "2 of 6 candidates for the learning rate and epoch share the best dev accuracy 50.0%" in found["message"]
    assert "Every candidate scored 0" not in found["message"]


def test_a_clear_dev_choice_is_not_a_tie():
    report = report_json(**plus_48_case())  # instruction 2% vs 5%; lora's best epoch alone at 45%
    assert warning(report, "dev_tie") is None


def test_the_tie_is_shown_in_the_terminal_and_the_page(tmp_path):
    tied = {"Answer the question.": 0.0, "Be brief.": 0.0}
    console = Console(file=io.StringIO(), width=300)
    write_report(build_report(**plus_48_case(instruction_dev=tied)), tmp_path, console)
    text = console.file.getvalue()
    assert text.index("Warning (dev_tie): instruction:") < text.index("capitals-chat: 100 test items")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.index("Warning (dev_tie):") < page.index('class="verdict')


def test_records_of_several_seeds_give_one_row_per_seed_in_the_lenient_matrix():
    records = [arm_records("lora", range(40), style="short", seed=s) for s in (0, 1)]
    summary = summarize_arm("lora", "lora", records, [{}, {}], num_parameters=1000, family="finetune", backend="hf")
    assert summary.accuracy_lenient.per_seed == (0.4, 0.4)
    assert np.isclose(summary.accuracy_lenient.value, 0.4)
