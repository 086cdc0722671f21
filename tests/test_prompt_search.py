"""The prompt_search arm: it finds a planted best prompt within its budget, never spends more than the
budget, resumes from the store with the same choices, and rejects degenerate proposals."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import ScriptedBackend
from tuneorprompt.arms import Base, DevJudge, TaskData
from tuneorprompt.backends.cached import CacheCounts
from tuneorprompt.config import ConfigError, PromptSearchArm, config_from_dict
from tuneorprompt.evaluate import Scorer
from tuneorprompt.metrics import extract_answer, lenient_match, make_matcher
from tuneorprompt.model import ResolvedModel
from tuneorprompt.prompt_search import Candidate, Demos, rejection, search
from tuneorprompt.prompts import PromptFormat
from tuneorprompt.records import Example, GenerationSettings
from tuneorprompt.store import Store

PARAMS = 1_000_000  # the planted model's size: FLOPs are 2e6 per token
INSTRUCTIONS = ["Alpha.", "Bravo.", "Charlie."]
FORMAT_LINE = "Be brief."
# The planted best: "Bravo." with the format line and 2 demos answers right with probability 0.9; every
# other candidate at most 0.6 (Bravo +0.15, two demos +0.05, the format line +0.05 over 0.4).
BEST = Candidate("Bravo.", "prompt", FORMAT_LINE, Demos(2, "random", 0, "forward", "given"))
BEST_P, RUNNER_UP_P = 0.9, 0.6
SPEC = PromptSearchArm(
    k=[0, 2, 4], selections=["random"], draws=1, orders=["forward"], sources=["given"], format_lines=[FORMAT_LINE],
    proposals=1,
)


def planted_answer(salt: int):
    def answer(prompt: str) -> str:
        if prompt.endswith("Better instruction:"):
            return " Delta.\n"  # the proposer's rewrite: a new, ordinary instruction
        query = prompt.rsplit("Question: ", 1)[1]
        item = query.split("item ", 1)[1].split("?")[0]
        demos = prompt.count("Question: ") - 1
        bravo, formatted = "Bravo." in prompt, FORMAT_LINE in prompt
        p = BEST_P if (bravo and formatted and demos == 2) else 0.4 + 0.15 * bravo + 0.05 * (demos == 2) + 0.05 * formatted
        # Each distinct prompt its own draw: the noise of a finite dev split, fresh for every salt.
        u = int(hashlib.sha256(f"{salt}|{prompt}".encode()).hexdigest()[:8], 16) / 16**8
        return f" Place {item}\n" if u < p else " no idea\n"

    return answer


def examples(prefix: str, n: int) -> tuple[Example, ...]:
    return tuple(Example(f"{prefix}{i}", f"Where is item {prefix}{i}?", (f"Place {prefix}{i}",)) for i in range(n))


def embed(texts: list[str]) -> np.ndarray:
    """Letter counts, L2-normalised: enough for nearest demos to be deterministic."""
    vectors = np.array([[text.count(c) + 1e-3 for c in "abcdefghijklmnopqrstuvwxyz0123456789"] for text in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass
class Setup:
    task: TaskData
    dev: DevJudge
    base: Base
    backend: ScriptedBackend
    counts: CacheCounts


def setup(answer, store: Store, tmp_path: Path, n_dev: int = 150, fingerprint: str = "planted",
          instructions=INSTRUCTIONS, metric: dict | None = None) -> Setup:
    config = config_from_dict({
        "model": {"path": "planted"}, "data": {"file": "unused.jsonl"},
        "prompt": {"instructions": instructions, "builtin_instructions": False},
        "generation": {"max_new_tokens": 8}, **({"metric": metric} if metric else {}),
    })
    task = TaskData(examples("tr", 40), examples("dv", n_dev), PromptFormat(config.prompt), embed)
    scorer = Scorer(partial(extract_answer, rule="first_line"), make_matcher(config.metric), lenient_match, None)
    counts = CacheCounts()
    settings = GenerationSettings(8, ("\n",))
    dev = DevJudge(task, config, settings, scorer, store, counts, "protocol")
    backend = ScriptedBackend(answer, fingerprint=fingerprint)
    model = ResolvedModel(config.model, "planted", fingerprint, False, PARAMS, None)
    return Setup(task, dev, Base(backend, model, tmp_path / "models"), backend, counts)


# The budget at which the plan gives every candidate of the planted space a first look, whatever the
# seed (24 candidates; from 5e10 FLOPs most seeds do), then its rungs, the proposal and the held-out pick.
BUDGET = 6e10


def planted_run(seed: int, budget: float, tmp_path: Path):
    """One search of the planted space; a world of its own per seed (the answers' noise is salted by it)."""
    store = Store(Path(":memory:"))  # the real store, in memory: 400 searches in seconds
    try:
        s = setup(planted_answer(seed), store, tmp_path, fingerprint=f"planted-{seed}")
        return search(SPEC, budget, s.task, s.dev, s.base, seed)
    finally:
        store.close()


def find_rate(budget: float, runs: int, tmp_path: Path) -> tuple[float, float]:
    """Share of seeded runs whose pick is the planted best, and the most any run spent (FLOPs)."""
    found, most = 0, 0.0
    for seed in range(runs):
        result = planted_run(seed, budget, tmp_path)
        found += result.candidate == BEST
        most = max(most, result.info["spent_flops"])
    return found / runs, most


@pytest.mark.slow
def test_the_planted_best_is_found_in_at_least_95_percent_of_200_seeded_runs_within_budget(tmp_path, capsys):
    rate, most = find_rate(BUDGET, 200, tmp_path)
    quarter, quarter_most = find_rate(BUDGET / 4, 200, tmp_path)
    with capsys.disabled():
        print(f"\nplanted best found: {rate:.1%} of 200 runs at the budget, {quarter:.1%} at a quarter of it")
    # Measured: 100% (97.0% when a tie at a rung's cut went to the earlier candidate: the 6 misses were
    # the best dropped on its first look at 6 items); 0% at a quarter, where the first looks reach the
    # anchors and a few others, not the planted best.
    assert rate >= 0.95
    assert most <= BUDGET and quarter_most <= BUDGET / 4


def test_candidates_tied_at_a_rungs_cut_go_on_together(tmp_path):
    # The seeds where the planted best tied others on its first 6 items and lost the tie to the space's
    # order, when ties went to the earlier candidate.
    for seed in (5, 11, 115, 133, 135, 190):
        assert planted_run(seed, BUDGET, tmp_path).candidate == BEST, seed


def test_the_planted_best_is_found_within_budget_in_a_few_seeded_runs(tmp_path):
    rate, most = find_rate(BUDGET, 20, tmp_path)
    assert rate >= 0.9 and most <= BUDGET


# ---- the store: a re-run reads every look back, a killed search resumes with the same choices ----------


def without_wall_time(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "training"} | {"flops": info["training"].flops}


def test_a_rerun_reads_every_look_back_and_makes_the_same_choices(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    first = setup(planted_answer(7), store, tmp_path)
    before = search(SPEC, BUDGET, first.task, first.dev, first.base, 7)
    assert first.counts.misses > 0
    again = setup(planted_answer(7), store, tmp_path)
    after = search(SPEC, BUDGET, again.task, again.dev, again.base, 7)
    assert again.counts.misses == 0 and again.counts.hits > 0 and again.backend.prompts_seen == []
    assert without_wall_time(after.info) == without_wall_time(before.info)
    # The spend is the search's own, not what the store happened to hold.
    assert after.info["spent_flops"] == before.info["spent_flops"] > 0


# A search in a process of its own, on the planted backend and a store file, that stops answering at its
# `hang_at`-th generation and waits there to be killed.
SEARCH_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_prompt_search import BUDGET, SPEC, planted_answer, setup
from tuneorprompt.prompt_search import search
from tuneorprompt.store import Store

answer, calls = planted_answer(3), []

def hangs_midway(prompt):
    calls.append(prompt)
    if len(calls) == {hang_at}:
        Path({ready!r}).write_text("ready")
        time.sleep(600)
    return answer(prompt)

s = setup(hangs_midway, Store(Path({store!r})), Path({tmp!r}))
search(SPEC, BUDGET, s.task, s.dev, s.base, 3)
"""


def test_a_search_killed_with_kill_9_midway_resumes_from_the_store_with_identical_choices(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    whole = setup(planted_answer(3), Store(tmp_path / "whole.sqlite"), tmp_path)
    uninterrupted = search(SPEC, BUDGET, whole.task, whole.dev, whole.base, 3)
    answered = len(whole.backend.prompts_seen)

    store, ready = tmp_path / "killed.sqlite", tmp_path / "ready"
    script = SEARCH_CHILD.format(root=str(Path(__file__).parents[1]), hang_at=answered // 2, ready=str(ready),
                                 store=str(store), tmp=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "the search never got half way"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    resumed = setup(planted_answer(3), Store(store), tmp_path)
    result = search(SPEC, BUDGET, resumed.task, resumed.dev, resumed.base, 3)
    assert without_wall_time(result.info) == without_wall_time(uninterrupted.info)
    # What the killed search had stored was read back, not asked again.
    assert resumed.counts.hits >= answered // 2 - 64  # the evaluator asks in chunks of 64 prompts
    assert resumed.counts.misses < answered


# ---- proposals --------------------------------------------------------------------------------------------------


def test_degenerate_proposals_are_rejected_with_their_reason():
    references = ["Place dv3", "Paris"]
    assert rejection("", 1, 64, references, set()) == "empty"
    assert rejection("Answer with the", 64, 64, references, set()).startswith("truncated")
    assert rejection("Reply like: the answer is place DV3.", 9, 64, references, set()) == (
        "contains the reference answer 'Place dv3'")
    assert rejection("Name the city, e.g. Parisian places.", 8, 64, references, set()) is None  # whole words only
    assert rejection("Bravo.", 2, 64, references, {"Bravo."}) == "repeats an instruction already tried"
    assert rejection("Name the place only.", 5, 64, references, set()) is None


def test_a_proposal_copying_a_dev_answer_is_recorded_and_never_tried(tmp_path):
    planted = planted_answer(0)

    def copies_answers(prompt: str) -> str:
        if prompt.endswith("Better instruction:"):
            copied = prompt.split("Correct answer: ", 1)[1].split("\n", 1)[0]
            return f" Always answer {copied}.\n"
        return planted(prompt)

    s = setup(copies_answers, Store(Path(":memory:")), tmp_path)
    spec = SPEC.model_copy(update={"proposals": 2})
    result = search(spec, BUDGET, s.task, s.dev, s.base, 0)
    proposals = result.info["proposals"]
    assert proposals and all(not p["accepted"] for p in proposals)
    rejected = [p for p in proposals if "text" in p]
    assert rejected and all(p["reason"].startswith("contains the reference answer") for p in rejected)
    assert not any("Always answer" in t["candidate"] for t in result.info["trajectory"])


def test_a_proposal_holding_a_test_answer_is_rejected_though_the_search_never_reads_test(tmp_path):
    """The search sees the test split's reference answers only as strings a prompt must not contain: an
    instruction holding one would put a test answer into every test prompt."""
    planted = planted_answer(1)

    def names_a_test_answer(prompt: str) -> str:
        return " Answer like Place te7 does.\n" if prompt.endswith("Better instruction:") else planted(prompt)

    s = setup(names_a_test_answer, Store(Path(":memory:")), tmp_path)
    spec = SPEC.model_copy(update={"proposals": 1})
    unguarded = search(spec, BUDGET, s.task, s.dev, s.base, 1).info["proposals"]
    assert [p["accepted"] for p in unguarded] == [True]  # no training or dev item has that answer
    guarded_task = replace(s.task, test_answers=("Place te7", "Place te8"))
    (proposal,) = search(spec, BUDGET, guarded_task, s.dev, s.base, 1).info["proposals"]
    assert not proposal["accepted"] and proposal["reason"] == "contains the reference answer 'Place te7'"


def test_an_accepted_proposal_rewrites_a_leader_and_races_like_any_candidate(tmp_path):
    s = setup(planted_answer(1), Store(Path(":memory:")), tmp_path)
    result = search(SPEC.model_copy(update={"proposals": 3}), BUDGET, s.task, s.dev, s.base, 1)
    accepted = [p for p in result.info["proposals"] if p["accepted"]]
    assert [p["text"] for p in accepted] == ["Delta."]  # the same rewrite again is a repeat, rejected as such
    assert any(t["candidate"].startswith("instruction 'Delta.'") for t in result.info["trajectory"])


# ---- in a run: the budget matches fine-tuning, the spend is the arm's one-time cost --------------------------


def test_bad_prompt_search_settings_are_one_line_naming_the_key(tmp_path):
    for arm, line in [({"budget": "lots"}, "arms.0.budget: use match_finetune or a number of model FLOPs"),
                      ({"holdout": 1.5}, "arms.0.holdout: Input should be less than 1"),
                      ({"sources": []}, "arms.0.sources: must list at least one choice")]:
        with pytest.raises(ConfigError) as error:
            config_from_dict({"model": {"path": "m"}, "data": {"file": "d.jsonl"}, "arms": [{"kind": "prompt_search", **arm}]})
        assert str(error.value).splitlines()[1:] == [f"  {line}" + str(error.value).split(line, 1)[1]]
    # YAML reads 1e15 as a string; it is the number it spells.
    spec = config_from_dict({"model": {"path": "m"}, "data": {"file": "d.jsonl"},
                             "arms": [{"kind": "prompt_search", "budget": "1e15"}]}).arms[0]
    assert spec.budget == 1e15


def run_config(tmp_path: Path, data: dict, model_dir: Path, lora: dict, search: dict | None = None) -> dict:
    return {
        "name": "search",
        "model": {"path": str(model_dir), "num_threads": 1, "chat_template": False},
        "data": data,
        "arms": ["baseline", {"kind": "prompt_search", "k": [0, 2], "selections": ["random"], "draws": 1,
                              "orders": ["forward"], "proposals": 1, **(search or {})},
                 {"kind": "lora", "learning_rates": [1e-3], **lora}],
        "generation": {"max_new_tokens": 6},
        "prompt": {"instructions": INSTRUCTIONS, "builtin_instructions": False},
        "target": {"accuracy": 0.5},
    }


def test_the_search_matches_the_fine_tuning_budget_and_its_spend_is_the_arms_one_time_cost(tiny_gpt2_dir, tmp_path):
    from rich.console import Console

    from tests.test_experiment import write_task
    from tuneorprompt.experiment import run_experiment

    data = write_task(tmp_path / "data")
    console = Console(file=open(tmp_path / "terminal.txt", "w"), width=200)
    run = lambda lora: run_experiment(run_config(tmp_path, data, tiny_gpt2_dir, lora), tmp_path / "run",  # noqa: E731
                                      backend=ScriptedBackend(planted_answer(0)), console=console)
    result = run({"epochs": 1})
    report = result.report.to_dict()
    arm = next(a for a in report["arms"] if a["name"] == "prompt_search")
    details = arm["details"][0]
    estimates = {e["name"]: e for e in report["cost_order"]}
    lora = estimates["lora"]
    # match_finetune: the lora arm's estimated training plus one dev evaluation per epoch and learning rate.
    assert details["budget_flops"] == estimates["prompt_search"]["one_time_flops"] == pytest.approx(
        lora["one_time_flops"] + 1 * 1 * 30 * lora["per_query_flops"])
    assert details["budget_basis"].startswith("match_finetune: lora")
    assert 0 < details["spent_flops"] <= details["budget_flops"]
    # The spend is the arm's one-time cost, where fine-tuning's training cost is.
    assert arm["training"]["flops"] == details["spent_flops"]
    cost = next(c for c in report["costs"] if c["arm"] == "prompt_search")
    assert cost["one_time"]["flops"] == details["spent_flops"]
    assert details["trajectory"] and len(details["top"]) <= 5 and "Question: Where is item dv" in details["winning_prompt"]
    assert details["dev_optimism"] == details["best_search_score"] - details["holdout_score"]

    assert run({"epochs": 1}).cache_misses == 0  # a re-run evaluates nothing new
    # Another fine-tuning arm is another budget: the search runs again, not read back under the old one.
    longer = next(a for a in run({"epochs": 2}).report.to_dict()["arms"] if a["name"] == "prompt_search")
    assert longer["details"][0]["budget_flops"] > details["budget_flops"]


@pytest.mark.slow
def test_on_the_testbed_the_search_is_at_least_as_accurate_as_the_best_fixed_prompt_arm(tmp_path):
    """capitals, seed 0: the search (budget of a default lora arm, estimated) against instruction and
    few_shot@2/@8 on the 200 test items. Measured: prompt_search 90.5%, few_shot@2 90.5%, few_shot@8 80.0%,
    instruction 76.5%."""
    from rich.console import Console

    from tuneorprompt.experiment import run_experiment
    from tuneorprompt.testbed.demo import demo_config

    raw = demo_config("capitals").model_dump(mode="json") | {
        "arms": ["instruction", {"kind": "few_shot", "k": [2, 8]}, "prompt_search"],
        "learning_curve": {"enabled": False}, "seeds": [0],
    }
    report = run_experiment(raw, tmp_path / "run", console=Console(file=open(tmp_path / "out.txt", "w"))).report
    accuracy = {arm.name: arm.accuracy.value for arm in report.arms}
    best_fixed = max(accuracy[name] for name in ("instruction", "few_shot@2", "few_shot@8"))
    assert accuracy["prompt_search"] >= best_fixed - 0.02


def test_break_even_repays_only_what_training_costs_beyond_the_searched_prompt():
    from tuneorprompt.decide import ArmOutcome
    from tuneorprompt.report.build import break_even

    right = np.ones((1, 10))
    searched = ArmOutcome("prompt_search", right, per_query_flops=3e9, one_time_flops=5e14, family="prompt")
    tuned = ArmOutcome("lora", right, per_query_flops=1e9, one_time_flops=8e14, family="finetune")
    (row,) = break_even([searched, tuned])
    assert row.queries == pytest.approx((8e14 - 5e14) / 2e9)


# ---- coverage: the first looks span every dimension, the budget is spent, proposals are instructions ----------


FULL = PromptSearchArm(k=[0, 2, 4], draws=2, format_lines=[FORMAT_LINE], proposals=0, bootstrap_examples=8)


def test_the_first_looks_cover_each_demo_source_and_selection_and_the_format_line(tmp_path):
    s = setup(planted_answer(2), Store(Path(":memory:")), tmp_path)
    result = search(FULL, BUDGET, s.task, s.dev, s.base, 2)
    assert result.info["bootstrap"]["kept"] >= 2
    first = [t["candidate"] for t in result.info["trajectory"] if t["rung"] == 0]
    # Before the first look at anything outside the anchors (an instruction with demos, say), every demo
    # source and selection and the format line had one.
    anchors = first[: next(i for i, c in enumerate(first) if c.startswith("instruction") and "demos" in c)]
    for wanted in ("2 given demos (random set 0)", "2 given demos (nearest)", "2 bootstrapped demos (random set 0)",
                   "2 bootstrapped demos (nearest)", f"no instruction, format line {FORMAT_LINE!r}"):
        assert any(c.endswith(wanted) for c in anchors), wanted


def test_a_schedule_that_finishes_under_budget_runs_further_rounds_on_fresh_candidates(tmp_path):
    s = setup(planted_answer(2), Store(Path(":memory:")), tmp_path)
    budget = 2 * BUDGET  # round 0 of the full space spends about 3.8e10 FLOPs, leaving room for more rounds
    info = search(FULL, budget, s.task, s.dev, s.base, 2).info
    rounds = info["rounds"]
    assert len(rounds) >= 2 and all(r["first_looks"] >= 1 for r in rounds)
    # Round 0 left part of the budget; the further rounds spend it, and never more.
    assert rounds[0]["flops_after"] < rounds[-1]["flops_after"] and 0.7 * budget < info["spent_flops"] <= budget
    assert info["stopped"].startswith("budget spent")
    later = [t for t in info["trajectory"] if t["round"] >= 1]
    assert later and {t["id"] for t in later if t["rung"] == 0}.isdisjoint(
        {t["id"] for t in info["trajectory"] if t["round"] == 0})  # fresh candidates only
    # The best so far are carried into the later rungs without being looked at again.
    assert rounds[1]["carried"] and not {t["id"] for t in later} & set(rounds[1]["carried"])


def test_a_proposal_about_one_item_is_not_an_instruction_and_is_rejected_with_its_reason():
    from tuneorprompt.prompt_search import Questions

    questions = Questions.of([f"What is the capital of {c}?" for c in ("French Guiana", "France", "Chad", "Peru")]
                             + [f"What is the capital of country {i}?" for i in range(40)])
    reject = partial(rejection, generated=12, cap=64, references=[], tried=set(), questions=questions)
    assert reject("The answer to the question what is the capital of French Guiana is Paris.") == (
        "not an instruction: quotes a question ('what is the capital')")
    assert reject("The model answered this question correctly: The capital of French Guiana is Paris.") == (
        "not an instruction: quotes a question ('the capital of french')")
    assert reject("Recall what you know of French Guiana first.") == "not an instruction: names an item's subject ('french')"
    assert reject("Name the city only.", replies=["Paris"]) is None
    assert reject("Reply with Paris or a city like it.", replies=["Paris"]) == (
        "not an instruction: states an answer ('Paris', a reply it was shown)")
    # The task's own words are not an item's subject: "capital" is in every question, "Name" opens none.
    assert reject("Name the capital city, in one word.") is None


def test_a_named_proposer_writes_the_proposals_and_the_task_model_is_never_asked(tiny_gpt2_dir, tmp_path):
    """`proposer:` a model spec (here a local model directory): the reflection prompts go to it, not to the
    task model, and its calls are charged to the search at its own size."""
    from rich.console import Console

    from tests.test_experiment import write_task
    from tuneorprompt.experiment import run_experiment

    from tests.conftest import build_tiny_gpt2

    data = write_task(tmp_path / "data")
    scripted = ScriptedBackend(planted_answer(0))
    proposer = build_tiny_gpt2(tmp_path / "proposer", seed=1, positions=2048)  # room for a reflection prompt
    config = run_config(tmp_path, data, tiny_gpt2_dir, {"epochs": 1},
                        {"proposer": {"path": str(proposer)}, "proposer_max_new_tokens": 8, "budget": 1e10})
    result = run_experiment(config, tmp_path / "run", backend=scripted,
                            console=Console(file=open(tmp_path / "terminal.txt", "w"), width=200))
    details = next(a for a in result.report.to_dict()["arms"] if a["name"] == "prompt_search")["details"][0]
    assert not any(prompt.endswith("Better instruction:") for prompt in scripted.prompts_seen)
    proposals = details["proposals"]
    assert proposals and all("text" in p and p["text"] != "Delta." for p in proposals)
    # Each proposal is a call of the tiny model (random weights): its gibberish is judged like any proposal.
    assert all(p["accepted"] or p["reason"] for p in proposals)
