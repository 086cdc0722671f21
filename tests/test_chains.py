"""Chains of prompt and weights, as DSPy's BetterTogether builds them (issue 17, item 5):
`lora+prompt_search` searches the prompt on the base model, then trains and queries with it (p -> w)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.fakes import ScriptedBackend
from tests.test_experiment import write_task
from tests.test_prompt_search import INSTRUCTIONS, planted_answer
from tuneorprompt.config import ConfigError, FineTuneArm, PromptSearchArm, config_from_dict

BASE = {"model": {"path": "m"}, "data": {"file": "d.jsonl"}}
# A small space, so that the search on the planted backend is quick (as in test_prompt_search.run_config), with
# a budget that looks at all of it (the tiny model's training would buy two looks).
SEARCH = {"k": [0, 2], "selections": ["random"], "draws": 1, "orders": ["forward"], "proposals": 1, "budget": 1e10}


def test_the_shorthand_chains_a_search_before_fine_tuning_and_refuses_what_the_search_chooses():
    arms = config_from_dict({**BASE, "arms": ["lora+prompt_search", "full+prompt_search+search_again",
                                              {"kind": "lora", "prompt_search": True, "epochs": 1}]}).arms
    assert [a.name for a in arms] == ["lora+prompt_search", "full+prompt_search+search_again", "lora+prompt_search"]
    assert arms[0] == FineTuneArm(kind="lora", prompt_search=PromptSearchArm()) and not arms[0].search_again
    assert arms[1].search_again and arms[1].prompt_search == PromptSearchArm()
    for bad, said in [("lora+instruction+prompt_search", "drop `instruction`"),
                      ({"kind": "lora", "search_again": True}, "needs prompt_search"),
                      ({"kind": "lora", "prompt_search": {}, "few_shot_k": 2}, "drop `few_shot_k`"),
                      ("lora+prompt_serch", "unknown arm modifier 'prompt_serch'")]:
        with pytest.raises(ConfigError, match=said):
            config_from_dict({**BASE, "arms": [bad]})


def chain_config(data: dict, model_dir: Path, arms: list) -> dict:
    return {
        "name": "chain",
        "model": {"path": str(model_dir), "num_threads": 1, "chat_template": False},
        "data": data,
        "arms": arms,
        "generation": {"max_new_tokens": 6},
        "prompt": {"instructions": INSTRUCTIONS, "builtin_instructions": False},
        "target": {"accuracy": 0.5},
    }


def test_a_chain_trains_with_the_searched_prompt_reuses_the_search_and_counts_both_costs(tiny_gpt2_dir, tmp_path):
    from tuneorprompt.experiment import run_experiment

    data = write_task(tmp_path / "data")
    console = Console(file=open(tmp_path / "terminal.txt", "w"), width=200)
    lora = {"kind": "lora", "learning_rates": [1e-3], "epochs": 1}
    arms = [{"kind": "prompt_search", **SEARCH}, lora | {"prompt_search": SEARCH}]
    scripted = ScriptedBackend(planted_answer(0))
    result = run_experiment(chain_config(data, tiny_gpt2_dir, arms), tmp_path / "run", backend=scripted,
                            console=console)
    report = result.report.to_dict()
    by_name = {a["name"]: a for a in report["arms"]}
    searched, chain = by_name["prompt_search"]["details"][0], by_name["lora+prompt_search"]
    notes = chain["details"][0]
    # One search, the same for both: same settings, same budget (match_finetune), so the same pick.
    (first,) = notes["searches"]
    assert first["budget_flops"] == searched["budget_flops"] and first["chosen_id"] == searched["chosen_id"]
    assert first["spent_flops"] == searched["spent_flops"] > 0
    assert notes["trained_with"]["instruction"] == searched["instruction"]
    assert notes["trained_with"]["format_line"] == searched["format_line"]
    # Trained with the searched prompt: the job names it, and the fine-tuned model is queried with it, without demos.
    (job_file,) = (tmp_path / "run" / "models").glob("lora+prompt_search-seed0-*/job.json")
    assert json.loads(job_file.read_text())["searched_prompt"]["id"] == searched["chosen_id"]
    placed = "\n".join(t for t in (searched["instruction"], searched["format_line"]) if t)
    test_prompts = [r.prompt for r in result.records["lora+prompt_search"][0]]
    assert placed and all(p.startswith(placed + "\n") and p.count("Question: ") == 1 for p in test_prompts)
    # The page shows that prompt, not the search's winner with its demos.
    assert notes["query_prompt"].startswith(placed + "\n") and notes["query_prompt"].count("Question: ") == 1
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "<h2 id=\"chain-1\">Chain: lora+prompt_search</h2>" in page
    # The cost counts both: the search's FLOPs (counted though every look was read back) and the training's.
    training = chain["training"]
    assert training["extra"][0]["search_flops"] == searched["spent_flops"]
    assert training["flops"] == pytest.approx(training["extra"][0]["training_flops"] + searched["spent_flops"])
    cost = next(c for c in report["costs"] if c["arm"] == "lora+prompt_search")
    assert cost["one_time"]["flops"] == pytest.approx(training["flops"])
    estimates = {e["name"]: e for e in report["cost_order"]}
    assert estimates["lora+prompt_search"]["one_time_flops"] > searched["budget_flops"]  # training + the search
    # The chain's search generated nothing: every look was the prompt_search arm's, read back from the store.
    alone = ScriptedBackend(planted_answer(0))
    run_experiment(chain_config(data, tiny_gpt2_dir, [{"kind": "prompt_search", **SEARCH}, lora]),
                   tmp_path / "alone", backend=alone, console=console)
    assert len(scripted.prompts_seen) == len(alone.prompts_seen)
    # A re-run reads everything back: no generation, no training, the same report.
    again = run_experiment(chain_config(data, tiny_gpt2_dir, arms), tmp_path / "run", backend=ScriptedBackend(
        planted_answer(0)), console=console)
    assert again.cache_misses == 0
    assert {a["name"]: a["accuracy"] for a in again.report.to_dict()["arms"]} == {
        a["name"]: a["accuracy"] for a in report["arms"]}


def test_search_again_searches_on_the_fine_tuned_model_queries_with_its_pick_and_a_rerun_reads_it_back(
        tiny_gpt2_dir, tmp_path):
    """p -> w -> p: the second search runs on the fine-tuned weights (so nothing of the first search's
    looks is read back for it), the arm answers test with that search's pick, the one-time cost counts
    both searches and the training, and a re-run makes the same choices from the store."""
    from tuneorprompt.experiment import run_experiment

    data = write_task(tmp_path / "data")
    console = Console(file=open(tmp_path / "terminal.txt", "w"), width=200)
    chain = {"kind": "lora", "learning_rates": [1e-3], "epochs": 1, "prompt_search": SEARCH, "search_again": True}
    result = run_experiment(chain_config(data, tiny_gpt2_dir, [chain]), tmp_path / "run",
                            backend=ScriptedBackend(planted_answer(0)), console=console)
    arm = {a["name"]: a for a in result.report.to_dict()["arms"]}["lora+prompt_search+search_again"]
    notes = arm["details"][0]
    first, second = notes["searches"]
    assert first["budget_flops"] == second["budget_flops"] and first["spent_flops"] > 0 and second["spent_flops"] > 0
    # On the planted base model the search finds the planted instruction; the model is trained with it.
    assert first["instruction"] == notes["trained_with"]["instruction"] == "Bravo."
    # The test prompts are the second search's pick, as the model saw it, not the first one's. (The tiny
    # model's context of 256 tokens also holds fewer wrong replies than a reflection shows by default: the
    # proposer's prompt is cut to fit, not sent too long.)
    records = result.records["lora+prompt_search+search_again"][0]
    before_question = {r.prompt.split("Question: ")[0] for r in records}
    assert before_question == {second["winning_prompt"].split("Question: ")[0]}
    assert second["chosen_id"] != first["chosen_id"] and "Bravo." not in "".join(before_question)
    assert notes["query_prompt"].split("Question: ")[0] in before_question
    training = arm["training"]["extra"][0]
    assert training["search_flops"] == pytest.approx(first["spent_flops"] + second["spent_flops"])
    assert training["search_flops_before_training"] == first["spent_flops"]
    assert training["one_time"] == "prompt search, then training, then prompt search again"
    assert arm["training"]["flops"] == pytest.approx(training["training_flops"] + training["search_flops"])
    # The terminal gives each search's pick, where it was judged and what it spent, in the chain's order.
    console.file.flush()
    terminal = " ".join((tmp_path / "terminal.txt").read_text().split())
    line = terminal.split("Search: lora+prompt_search+search_again: ")[1].split("Search:")[0]
    assert line.startswith(f"searched on the base model: picked {first['chosen']}, ")
    assert f"; searched on the fine-tuned model: picked {second['chosen']}, " in line
    # The effort curve ends with the search on the fine-tuned model: its spend counts, and its pick is the standing.
    (curve,) = [c for c in result.report.to_dict()["effort"]["curves"] if c["arm"] == arm["name"]]
    last = curve["standing"][-1]
    assert last["label"] == f"searched again: {second['chosen']}" and last["dev_accuracy"] == second["best_search_score"]
    assert curve["total_flops"] == last["flops"] == pytest.approx(curve["points"][-2]["flops"] + second["spent_flops"])
    # The page shows the chain's steps in order, with what each spent, and the prompt test was answered with.
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    chain_section = page.split("<h2 id=\"chain-1\">Chain: lora+prompt_search+search_again</h2>")[1].split("<h2")[0]
    steps = [chain_section.index(step) for step in ("prompt search on the base model", "<td>training</td>",
                                                   "prompt search on the fine-tuned model")]
    assert steps == sorted(steps) and "searched again on the fine-tuned model" in chain_section
    # The second search generated on the fine-tuned model: its looks are in the store under another model.
    again = run_experiment(chain_config(data, tiny_gpt2_dir, [chain]), tmp_path / "run",
                           backend=ScriptedBackend(planted_answer(0)), console=console)
    assert again.cache_misses == 0
    assert again.report.to_dict()["arms"][0]["details"][0]["searches"] == notes["searches"]


def test_a_chain_leaves_the_runs_search_budget_as_plain_fine_tuning_sets_it(tiny_gpt2_dir, tmp_path):
    """match_finetune matches fine-tuning without a search: adding a chain to a run must not raise the
    budget of its prompt_search arm (a chain's dev queries are estimated at the search's stand-in prompt,
    demos included), and a run whose only fine-tuning arm is a chain gets the budget its training alone sets."""
    from tuneorprompt.experiment import plan_run

    data = write_task(tmp_path / "data")
    matched = {key: value for key, value in SEARCH.items() if key != "budget"}  # match_finetune, the default
    lora = {"kind": "lora", "learning_rates": [1e-3], "epochs": 1}

    def budgets(arms: list) -> dict[str, float]:
        plan = plan_run(config_from_dict(chain_config(data, tiny_gpt2_dir, arms)), tmp_path / "run",
                        backend=ScriptedBackend(planted_answer(0)))
        return plan.search_budgets

    alone = budgets([{"kind": "prompt_search", **matched}, lora])["prompt_search"]
    assert budgets([{"kind": "prompt_search", **matched}, lora, lora | {"prompt_search": matched}]) == {
        "prompt_search": alone, "lora+prompt_search": alone}
    assert budgets([lora | {"prompt_search": matched, "search_again": True}]) == {
        "lora+prompt_search+search_again": alone}


def test_the_run_hands_arms_the_test_answers_to_guard_against_and_nothing_else_of_test(tiny_gpt2_dir, tmp_path):
    from tuneorprompt.experiment import plan_run

    data = write_task(tmp_path / "data")
    plan = plan_run(config_from_dict(chain_config(data, tiny_gpt2_dir, [{"kind": "prompt_search", **SEARCH}, "lora"])),
                    tmp_path / "run", backend=ScriptedBackend(planted_answer(0)))
    assert plan.task.test_answers == tuple(sorted(f"Place te{i}" for i in range(30)))
    assert not any(e.id.startswith("te") for e in (*plan.task.train, *plan.task.dev))


def test_search_again_reuses_the_training_of_the_same_chain_without_it(tiny_gpt2_dir, tmp_path):
    """p -> w -> p trains exactly what p -> w trains (the same searched prompt, settings and seed): one job
    folder serves both, and the second arm finds it finished instead of training again."""
    from tuneorprompt.experiment import run_experiment

    data = write_task(tmp_path / "data")
    chain = {"kind": "lora", "learning_rates": [1e-3], "epochs": 1, "prompt_search": SEARCH}
    result = run_experiment(chain_config(data, tiny_gpt2_dir, [chain, chain | {"search_again": True}]), tmp_path / "run",
                            backend=ScriptedBackend(planted_answer(0)),
                            console=Console(file=open(tmp_path / "terminal.txt", "w"), width=200))
    arms = {a["name"]: a for a in result.report.to_dict()["arms"]}
    once, twice = arms["lora+prompt_search"]["details"][0], arms["lora+prompt_search+search_again"]["details"][0]
    assert [p.name.split("-seed")[0] for p in (tmp_path / "run" / "models").iterdir()] == ["lora+prompt_search"]
    assert once["model_dir"] == twice["model_dir"]
    extras = [arms[name]["training"]["extra"][0] for name in ("lora+prompt_search", "lora+prompt_search+search_again")]
    assert extras[0]["dev_scores"] == extras[1]["dev_scores"] and extras[0]["training_flops"] == extras[1]["training_flops"]


def test_a_chain_whose_search_picked_only_demos_is_warned_to_have_trained_on_the_plain_prompt():
    from tests.test_effort import PARAMS, lora_info
    from tests.test_scoring_views import arm_records
    from tuneorprompt.report.checks import chains_trained_plain
    from tuneorprompt.summary import summarize_arm

    def chain(trained_with: list[dict]):
        return summarize_arm("lora+prompt_search", "lora", [arm_records("c", range(20))] * len(trained_with),
                             [lora_info({"0.001": [0.5]}) | {"trained_with": t} for t in trained_with],
                             num_parameters=PARAMS, family="finetune", backend="hf")

    demos_only = {"instruction": None, "placement": None, "format_line": None, "demos_dropped": {"k": 2}}
    instructed = demos_only | {"instruction": "Bravo.", "placement": "prompt"}
    (warning,) = chains_trained_plain([chain([demos_only, instructed, demos_only])])
    assert warning["code"] == "chain_trained_plain" and warning["seeds"] == [0, 2]
    assert warning["message"].startswith("lora+prompt_search: on 2 of its 3 seeds the search picked no instruction")
    assert chains_trained_plain([chain([instructed]), summarize_arm(
        "lora", "lora", [arm_records("lora", range(20))], [lora_info({"0.001": [0.5]})], num_parameters=PARAMS,
        family="finetune", backend="hf")]) == []
