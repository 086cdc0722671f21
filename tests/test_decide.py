"""The recommendation rule and its wording on hand-built outcomes (no model). The rule's
repeated-sampling behaviour is in test_simulation.py."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tuneorprompt import decide, stats
from tests.fakes import family_of
from tuneorprompt.decide import ArmOutcome

N = 200


def right_on(start: int, stop: int) -> np.ndarray:
    """One seed's outcomes [N]: right on items start..stop-1, wrong elsewhere."""
    outcome = np.zeros(N)
    outcome[start:stop] = 1
    return outcome


def arm(name: str, seeds: list[np.ndarray], per_query: float, one_time: float = 0.0) -> ArmOutcome:
    return ArmOutcome(name, np.array(seeds), per_query_flops=per_query, one_time_flops=one_time)


BASELINE = arm("baseline", [right_on(0, 120)], 1.0e9)  # 60%
INSTRUCTION = arm("instruction", [right_on(0, 150)], 1.2e9)  # 75%
# 90%: three demo draws that disagree on items 176-183.
FEW_SHOT = arm("few_shot", [right_on(0, 176), right_on(0, 180), right_on(0, 184)], 6.0e9)
# 92%: three fine-tuning seeds that agree; wrong on items 0-3 that few_shot gets right, right on
# 176-187 where few_shot is sometimes or always wrong: a small difference either way.
LORA = arm("lora", [right_on(4, 188)] * 3, 1.0e9, one_time=5e15)


def test_ladder_order_puts_every_untrained_arm_first_without_a_query_volume():
    order = decide.ladder_order([LORA, FEW_SHOT, INSTRUCTION, BASELINE])
    assert [a.name for a in order] == ["baseline", "instruction", "few_shot", "lora"]


def test_ladder_order_by_total_cost_at_an_expected_query_volume():
    # At 1e7 queries lora costs 5e15 + 1e16 = 1.5e16 FLOPs, few_shot 6e16.
    order = decide.ladder_order([LORA, FEW_SHOT, INSTRUCTION, BASELINE], expected_queries=1e7)
    assert [a.name for a in order] == ["baseline", "instruction", "lora", "few_shot"]
    # At 1e5 queries training dominates again.
    order = decide.ladder_order([LORA, FEW_SHOT], expected_queries=1e5)
    assert [a.name for a in order] == ["few_shot", "lora"]


def test_ladder_order_keeps_the_given_order_for_equal_costs():
    unknown = [arm(name, [right_on(0, 100)], 0.0) for name in ("c", "a", "b")]  # served endpoint: FLOPs unknown
    assert [a.name for a in decide.ladder_order(unknown)] == ["c", "a", "b"]


def test_meets_target_uses_the_lower_bound_unless_lenient():
    correct = np.r_[np.ones(82), np.zeros(18)]  # 82%, Wilson 95% CI about 73.3-88.3%
    assert not decide.meets_target(correct, 0.80)
    assert decide.meets_target(correct, 0.80, lenient=True)
    assert decide.meets_target(correct, 0.73)
    assert decide.meets_target(correct, 0.80, level=0.5) is False  # 50% CI lower bound ~0.79


def test_recommend_the_cheapest_arm_that_meets_the_target():
    result = decide.recommend([LORA, FEW_SHOT, INSTRUCTION, BASELINE], 0.8)
    assert result.arm == "few_shot"
    assert result.order == ("baseline", "instruction", "few_shot", "lora")
    assert result.meets_target == {"baseline": False, "instruction": False, "few_shot": True, "lora": True}
    assert result.runner_up == "lora"  # the next arm that also meets the target
    assert result.comparison.test == "mcnemar_clustered"
    assert result.comparison.difference == pytest.approx(-0.02)
    interval = result.accuracy["few_shot"]
    assert interval.low >= 0.8
    assert result.status == decide.RECOMMENDED and result.states["few_shot"] == decide.MEETS
    assert result.headline.startswith(
        f"Use few_shot: it meets the 80.0% accuracy target at 90.0% (95% CI {interval.low:.1%}-{interval.high:.1%}).")
    assert result.headline.count(". ") <= 2  # at most three sentences lead
    assert result.details.startswith("few_shot is the cheapest arm that meets the target")
    assert result.reason == f"{result.headline} {result.details}"
    assert "6e+09 FLOPs per query, no training" in result.reason
    assert "5e+15 training FLOPs" in result.reason


def test_reason_never_claims_a_difference_the_test_does_not_support():
    # lora is 2 points ahead, winning 12 items and losing 4.
    result = decide.recommend([FEW_SHOT, LORA], 0.8)
    assert not result.comparison.significant
    assert "No significant difference in accuracy between few_shot and lora at 95%" in result.reason
    assert "significantly more" not in result.reason
    assert "few_shot minus lora = -2.0 points" in result.reason


def test_reason_states_a_significant_difference_with_its_direction():
    strong = arm("full", [right_on(0, 196)], 1.0e9, one_time=2e16)  # 98%, never wrong where few_shot is right
    result = decide.recommend([FEW_SHOT, strong], 0.8)
    assert result.arm == "few_shot" and result.runner_up == "full"
    assert result.comparison.significant and result.comparison.difference == pytest.approx(-0.08)
    assert "full is significantly more accurate than few_shot at 95%" in result.reason


def test_runner_up_is_the_most_accurate_other_arm_when_no_costlier_arm_meets_the_target():
    result = decide.recommend([BASELINE, INSTRUCTION, FEW_SHOT], 0.8)
    assert result.arm == "few_shot"
    assert result.runner_up == "instruction"
    assert "the most accurate other arm (it does not meet the target)" in result.reason


def test_no_arm_meets_the_target():
    hint = "The lora curve is still rising at n = 512: more labelled data may reach the target."
    result = decide.recommend([BASELINE, INSTRUCTION, LORA], 0.95, learning_curve_hint=hint)
    assert result.arm is None and result.runner_up is None and result.comparison is None
    assert result.best == "lora"
    assert result.shortfall == pytest.approx(0.95 - result.accuracy["lora"].low)
    assert result.status == decide.UNDECIDED and result.states["lora"] == decide.UNDECIDED
    assert result.headline.startswith("Undecided: this experiment cannot tell whether lora meets the 95.0% accuracy")
    assert "No arm meets the target" in result.details
    assert "lora meets the 95.0% accuracy target; its 92.0%" in result.headline
    assert "lora is 3.0 points short of it, its lower bound" in result.details
    assert result.reason.endswith(hint) and result.hint == hint


def test_no_arm_meets_the_target_because_of_the_interval_only():
    result = decide.recommend([arm("instruction", [right_on(0, 164)], 1e9)], 0.8)  # 82% at n = 200: lower bound ~76%
    assert result.arm is None and result.shortfall > 0
    assert "instruction's point estimate reaches the target, but its lower bound is" in result.reason
    assert "more test items would narrow the interval" in result.reason
    lenient = decide.recommend([arm("instruction", [right_on(0, 164)], 1e9)], 0.8, lenient=True)
    assert lenient.arm == "instruction" and "(lenient)" in lenient.reason and "only arm" in lenient.reason


def test_the_ladder_stops_where_the_recommendation_points():
    # The ladder strategy calls meets_target arm by arm; it must agree with recommend's verdicts.
    arms = [LORA, FEW_SHOT, INSTRUCTION, BASELINE]
    result = decide.recommend(arms, 0.8)
    first = next(a for a in decide.ladder_order(arms) if decide.meets_target(a.correct, 0.8))
    assert first.name == result.arm
    assert all(decide.meets_target(a.correct, 0.8) == result.meets_target[a.name] for a in arms)


def test_recommendation_is_json_friendly():
    result = decide.recommend([FEW_SHOT, LORA], 0.8)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["arm"] == "few_shot" and data["comparison"]["test"] == "mcnemar_clustered"
    assert data["accuracy"]["few_shot"]["method"] == "wilson_design_effect"


def test_bad_arms_are_named():
    with pytest.raises(decide.DecisionError, match="repeated: lora"):
        decide.recommend([LORA, LORA], 0.8)
    with pytest.raises(decide.DecisionError, match="different numbers of test items"):
        decide.recommend([LORA, ArmOutcome("short", np.ones(10), 1e9)], 0.8)
    with pytest.raises(decide.DecisionError, match="target = 80"):
        decide.recommend([LORA], 80)
    with pytest.raises(decide.DecisionError, match="no arms"):
        decide.recommend([], 0.8)
    with pytest.raises(decide.DecisionError, match="arm 'x': one_time_flops = -1.0"):
        ArmOutcome("x", np.ones(5), 1.0, -1.0)
    with pytest.raises(stats.StatsError, match=r"arm 'x': correct\[seed row 0, item 2\] = 2.0"):
        ArmOutcome("x", np.array([1.0, 0.0, 2.0]), 1.0)


# ---- the lenient view: stated beside the decision, never changing it --------------------------------


def view_arm(name: str, kind: str, strict: np.ndarray, lenient: np.ndarray, per_query: float = 1e9,
             one_time: float = 0.0) -> ArmOutcome:
    return ArmOutcome(name, strict, per_query_flops=per_query, one_time_flops=one_time, family=family_of(kind),
                      correct_lenient=lenient)


# Chat-style prompt arms: 0% strict, right in 40% / 70% of replies; lora answers short (48% both).
CHAT = [
    view_arm("baseline", "baseline", right_on(0, 0), right_on(0, 80)),
    view_arm("instruction", "instruction", right_on(0, 0), right_on(0, 140), per_query=1.2e9),
    view_arm("lora", "lora", right_on(100, 196), right_on(100, 196), one_time=5e15),
]


def test_the_lenient_view_never_changes_the_decision():
    with_views = decide.recommend(CHAT, 0.4)
    without = decide.recommend([ArmOutcome(a.name, a.correct, a.per_query_flops, a.one_time_flops) for a in CHAT], 0.4)
    assert with_views.arm == without.arm == "lora"
    assert with_views.meets_target == without.meets_target
    # The same test; only its Holm adjustment differs, as the lenient view adds members to the family.
    assert with_views.comparison.p_value == without.comparison.p_value
    assert with_views.comparison.p_adjusted >= without.comparison.p_adjusted
    assert without.prompt_vs_finetune is None  # no families: nothing says which arm is fine-tuned


def test_the_best_prompt_arm_breaks_a_strict_tie_on_the_lenient_view():
    versus = decide.recommend(CHAT, 0.4).prompt_vs_finetune
    assert (versus.prompt_arm, versus.finetuned_arm) == ("instruction", "lora")
    assert versus.gain == pytest.approx(0.48) and versus.content == pytest.approx(0.48 - 0.70)
    assert versus.format == pytest.approx(0.70)


def test_a_cheaper_fine_tuned_arm_recommended_gets_its_own_split():
    full = view_arm("full", "full", right_on(60, 200), right_on(60, 200), one_time=5e16)  # 70%, the best
    result = decide.recommend([*CHAT, full], 0.4)
    assert result.arm == "lora" and result.prompt_vs_finetune.finetuned_arm == "full"
    assert "Of full's +70.0 points over instruction in the strict view, +70.0 points are format" in result.reason
    assert "Of lora's +48.0 points over instruction in the strict view, +70.0 points are format" in result.reason


def test_the_format_hint_says_when_the_lenient_view_would_meet_the_target():
    result = decide.recommend(CHAT, 0.6)
    assert result.arm is None
    assert result.hint.startswith("Format, not knowledge, is what is missing: in the lenient view")
    assert "instruction is right on 70.0% of replies against 0.0% strict, which would meet the target" in result.hint
    assert "a context arm" not in result.hint  # the facts are there: retrieval is not the remedy


def test_fine_tuning_that_learned_content_is_said_so():
    prompt = view_arm("instruction", "instruction", right_on(0, 60), right_on(0, 70))  # views 5 points apart
    tuned = view_arm("lora", "lora", right_on(0, 150), right_on(0, 150), one_time=5e15)
    hint = decide.recommend([prompt, tuned], 0.9).hint
    assert hint.startswith("Fine-tuning learned content: lora is right on +40.0 points more replies than instruction")


def test_fine_tuning_that_lost_what_the_model_knew_is_said_so():
    # A real case (SmolLM2 on capitals): lora 15.8% in both views against instruction's 35.8%.
    prompt = view_arm("instruction", "instruction", right_on(0, 70), right_on(0, 70))
    tuned = view_arm("lora", "lora", right_on(0, 30), right_on(0, 30), one_time=5e15)
    result = decide.recommend([prompt, tuned], 0.9)
    assert "Fine-tuning lost content: lora is right on 20.0 points fewer replies than instruction" in result.hint
    assert "no significant" not in result.hint
    assert "lora is -20.0 points against instruction in the strict view" in result.reason
    assert "over instruction" not in result.reason


def test_a_context_arm_that_hurts_is_said_so():
    # A real case: a BM25 retriever led by function words gave SmolLM2 the wrong city's passage.
    prompt = view_arm("baseline", "baseline", right_on(0, 120), right_on(0, 120))
    context = view_arm("context", "context", right_on(0, 40), right_on(0, 40), per_query=3e9)
    hint = decide.recommend([prompt, context], 0.9).hint
    assert "Retrieval hurt: context is 40.0 points behind baseline in the lenient view" in hint
    assert "did not supply" not in hint


def test_a_context_arm_that_adds_nothing_is_said_so():
    context = view_arm("context", "context", right_on(0, 0), right_on(0, 138), per_query=3e9)
    hint = decide.recommend([*CHAT, context], 0.9).hint
    assert "Retrieval did not supply measurable facts: context minus instruction is -1.0 points" in hint


def test_the_lenient_outcomes_must_match_the_strict_ones():
    with pytest.raises(decide.DecisionError, match=r"arm 'x': correct_lenient has shape \(1, 4\), correct \(1, 5\)"):
        ArmOutcome("x", np.ones(5), 1.0, correct_lenient=np.ones(4))


# ---- what it would take to decide -------------------------------------------------------------------


def right_of(n: int, right: int) -> np.ndarray:
    return np.r_[np.ones(right), np.zeros(n - right)]


def test_an_arm_whose_interval_straddles_the_target_is_undecided_and_the_items_that_would_decide_are_given():
    # A real case: a plain-prompt model at 77.5% [62.5, 87.7] on 40 items against an 80% target.
    best = ArmOutcome("few_shot", right_of(40, 31), 1e9, family="prompt", correct_lenient=right_of(40, 33))
    other = ArmOutcome("baseline", right_of(40, 20), 5e8, family="prompt", correct_lenient=right_of(40, 22))
    result = decide.recommend([other, best], 0.8)
    assert result.arm is None and result.status == decide.UNDECIDED
    assert result.states == {"baseline": decide.FALLS_SHORT, "few_shot": decide.UNDECIDED}
    needed = result.items_to_decide["few_shot"]
    assert needed > 40 and result.items_to_decide.keys() == {"few_shot"}
    assert result.headline.startswith("Undecided: this experiment cannot tell whether few_shot meets the 80.0%")
    assert f"About {needed:,} test items would decide it (this run has 40)" in result.headline
    # The lenient view straddles the target too: nothing shows facts are missing.
    assert "facts are missing" not in result.reason


def test_facts_are_missing_only_when_every_lenient_interval_lies_below_the_target():
    # A served case: 85.0% [64.0, 94.8] on 20 items against 80%: its point estimate reaches the target.
    arm_85 = ArmOutcome("instruction", right_of(20, 17), 1e9, family="prompt", correct_lenient=right_of(20, 17))
    result = decide.recommend([arm_85], 0.8)
    assert result.status == decide.UNDECIDED and "facts are missing" not in result.reason
    far_below = ArmOutcome("instruction", right_of(200, 60), 1e9, family="prompt", correct_lenient=right_of(200, 70))
    result = decide.recommend([far_below], 0.8)
    assert result.status == decide.FALLS_SHORT
    assert "Even the lenient view falls short (every arm's interval lies below the target), so facts are missing" \
        in result.hint


def test_a_run_where_every_arm_falls_short_states_the_label_forecast_in_its_headline():
    labels = decide.LabelsForecast("lora", labels_used=400, needed=1800.0, low=1100.0, high=3900.0, level=0.9,
                                   horizon=10)
    result = decide.recommend([BASELINE, INSTRUCTION], 0.9, labels_forecast=labels)
    assert result.status == decide.FALLS_SHORT
    assert result.headline.startswith("No arm meets the 90.0% accuracy target: the most accurate, instruction")
    assert ("lora's learning curve forecasts about 1,800 labelled examples to reach it (90% band 1,100 to 3,900; "
            "400 were used).") in result.headline
    unreachable = decide.LabelsForecast("lora", 400, None, None, None, 0.9, 10)
    assert "does not forecast the target within 10x the 400 labels used" in decide.recommend(
        [BASELINE, INSTRUCTION], 0.9, labels_forecast=unreachable).headline


def test_the_verdicts_tests_are_holm_adjusted_over_all_pairs_and_the_wording_follows_the_adjusted_p():
    result = decide.recommend(CHAT, 0.4)  # lora recommended; runner-up baseline; versus: instruction and lora
    versus = result.prompt_vs_finetune
    assert result.runner_up == "baseline" and (versus.prompt_arm, versus.finetuned_arm) == ("instruction", "lora")
    pairs = [("baseline", "instruction"), ("baseline", "lora"), ("instruction", "lora")]
    arms = {arm.name: arm for arm in CHAT}
    for view, tests in (("correct", {("baseline", "lora"): result.comparison, ("instruction", "lora"): versus.strict}),
                        ("correct_lenient", {("instruction", "lora"): versus.lenient})):
        raw = [stats.paired_accuracy_test(getattr(arms[a], view), getattr(arms[b], view)).p_value for a, b in pairs]
        adjusted = dict(zip(pairs, stats.holm(raw)))
        for pair, test in tests.items():
            assert test.p_adjusted == adjusted[pair] >= test.p_value
    assert f"Holm-adjusted {versus.lenient.p_adjusted:.3g}" in result.reason
    # A test that is significant raw but not after adjustment is worded as not significant.
    borderline = replace(versus.lenient, p_value=0.03)
    adjusted = decide._adjusted(borderline, ("instruction", "lora"), {frozenset(("instruction", "lora")): 0.06})
    assert not adjusted.significant
    assert "No significant difference" in decide._Wording(0.4, False, 0.95, 0.02, None, result.accuracy) \
        .comparison_sentence("lora", "instruction", adjusted)


def test_not_significant_is_said_with_the_smallest_difference_the_test_could_detect():
    result = decide.recommend([FEW_SHOT, LORA], 0.8)
    assert not result.comparison.significant and result.comparison.detectable is not None
    assert (f"this test detects a difference of {100 * result.comparison.detectable:.1f} points or more with 80% "
            "power") in result.details


def test_a_cheaper_arm_is_called_as_good_only_when_the_non_inferiority_test_passes():
    # few_shot (90%) is recommended; lora (92%) is more accurate; 2 points is too close to call at n = 200.
    result = decide.recommend([FEW_SHOT, LORA], 0.8)
    ni = result.noninferiority
    assert ni is not None and not ni.passes and ni.difference == pytest.approx(-0.02)
    assert "lora is more accurate (+2.0 points), and few_shot is not shown to be within 2.0 points of it" \
        in result.headline
    assert "as good as" not in result.headline
    # With 2,000 items on which the arms differ only on a handful, equivalence within 2 points is shown.
    cheap = arm("instruction", [right_of(2000, 1700)], 1e9)
    costly = arm("lora", [right_of(2000, 1704)], 1e9, one_time=5e15)
    result = decide.recommend([cheap, costly], 0.8)
    assert result.arm == "instruction" and result.noninferiority.passes
    assert "It is as good as the most accurate arm, lora, within 2.0 points (non-inferiority p = " in result.headline
    # The recommended arm that is the most accurate needs no such test.
    assert decide.recommend([LORA], 0.8).noninferiority is None


def test_differences_against_the_recommended_arm_resample_items_and_seeds():
    result = decide.recommend([BASELINE, INSTRUCTION, FEW_SHOT, LORA], 0.8)
    assert result.differences.keys() == {"baseline", "instruction", "lora"}
    versus_lora = result.differences["lora"]
    assert versus_lora.value == pytest.approx(-0.02) and versus_lora.low < -0.02 < versus_lora.high
    assert versus_lora.seed_spread is not None  # few_shot's three demo draws disagree
    assert result.differences["baseline"].value == pytest.approx(0.30)


def test_an_arm_at_the_target_itself_is_undecided_with_no_number_of_items_claimed():
    at_target = ArmOutcome("instruction", right_of(100, 80), 1e9)  # exactly 80% against an 80% target
    result = decide.recommend([at_target], 0.8)
    assert result.status == decide.UNDECIDED and result.items_to_decide == {"instruction": None}
    assert "No practical number of test items would decide it" in result.headline


def test_a_recommendation_over_a_cheaper_undecided_arm_says_so_in_its_headline():
    # The real continents case: a chain at 87.5% [80.4, 92.3] meets 80%; lora, a quarter of its one-time cost,
    # is 0.8 points behind at 86.7% [79.4, 91.6] and undecided. The verdict rests on that, not on lora falling short.
    chain = ArmOutcome("lora+prompt_search", right_of(120, 105), 2.4e10, one_time_flops=3.6e13, family="finetune")
    lora = ArmOutcome("lora", right_of(120, 104), 1.2e10, one_time_flops=9.0e12, family="finetune")
    few_shot = ArmOutcome("few_shot@2", right_of(120, 85), 2.0e10, family="prompt")
    result = decide.recommend([few_shot, lora, chain], 0.8)
    assert result.arm == "lora+prompt_search" and result.states["lora"] == decide.UNDECIDED
    needed = result.items_to_decide["lora"]
    assert result.headline.count(". ") == 2  # still three sentences: what to do, how sure, what it costs
    assert (f"It is the most accurate arm measured; lora costs less and is undecided at 86.7% (95% CI 79.4%-91.6%): "
            f"about {needed:,} test items would decide whether it meets the target too.") in result.headline
    # Without a cheaper undecided arm the headline is as before.
    alone = decide.recommend([few_shot, chain], 0.8)
    assert "It is the most accurate arm measured. Cost:" in alone.headline
