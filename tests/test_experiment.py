"""The experiment spine with a scripted backend: selection on dev only, caching, resume, report."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.fakes import ScriptedBackend
from tuneorprompt.cli import app
from tuneorprompt.experiment import run_experiment
from tuneorprompt.prompts import BUILTIN_INSTRUCTIONS

DEV_WINNER, TEST_WINNER = BUILTIN_INSTRUCTIONS[0], BUILTIN_INSTRUCTIONS[1]


def write_task(folder: Path, n: int = 30) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, prefix in (("train", "tr"), ("dev", "dv"), ("test", "te")):
        rows = [{"id": f"{prefix}{i}", "input": f"Where is item {prefix}{i}?", "target": f"Place {prefix}{i}"}
                for i in range(n)]
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {k: str(v) for k, v in paths.items()}


def answer_by_instruction(prompt: str) -> str:
    """Right on dev items only under DEV_WINNER, right on test items only under TEST_WINNER;
    otherwise right on every third item. An evaluator that looked at test to choose would pick TEST_WINNER."""
    question = prompt.rsplit("Question: ", 1)[-1]
    item = question.split("item ", 1)[1].split("?")[0]
    right = f" Place {item}\n"
    if DEV_WINNER in prompt and item.startswith("dv"):
        return right
    if TEST_WINNER in prompt and item.startswith("te"):
        return right
    return right if int(item[2:]) % 3 == 0 else " no idea\n"


def config(tmp_path: Path, **extra) -> dict:
    return {
        "name": "scripted",
        "model": {"path": "unused-with-an-injected-backend"},
        "data": write_task(tmp_path / "data"),
        "arms": ["baseline", "instruction", {"kind": "few_shot", "k": [2]}],
        "seeds": [0, 1],
        "target": {"accuracy": 0.5},
        **extra,
    }


def test_instruction_is_chosen_on_dev_and_test_is_only_evaluated(tmp_path):
    backend = ScriptedBackend(answer_by_instruction)
    result = run_experiment(config(tmp_path), tmp_path / "run", backend=backend)
    arms = {a.name: a for a in result.report.arms}
    instruction = arms["instruction"]
    assert instruction.details[0]["instruction"] == DEV_WINNER
    # The dev winner scores like the baseline on test: the choice did not peek at test.
    assert instruction.accuracy.value == pytest.approx(10 / 30)
    assert arms["baseline"].accuracy.value == pytest.approx(10 / 30)
    # Test prompts carrying the test winner were never generated.
    assert not any(TEST_WINNER in p and "item te" in p for p in backend.prompts_seen)


def test_report_fields_and_seeds(tmp_path):
    result = run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["baseline", "instruction", "few_shot@2"]
    for arm in report["arms"]:
        assert 0 <= arm["accuracy"]["value"] <= 1 and arm["accuracy"]["n"] == 30
        assert 0 <= arm["relevance"]["value"] <= 100
        assert arm["accuracy"]["ci_low"] <= arm["accuracy"]["value"] <= arm["accuracy"]["ci_high"]
        for cost in ("prompt_tokens", "generated_tokens", "seconds_per_query"):
            assert arm[cost] > 0
    few_shot = report["arms"][2]
    assert few_shot["seeds"] == [0, 1] and len(few_shot["accuracy"]["per_seed"]) == 2
    assert report["arms"][0]["seeds"] == [0]  # deterministic arms run once
    assert "recommendation" in report and "reason" in report["recommendation"]
    # Paired tests: every arm against baseline on the same items, the test named.
    against_baseline = {t["arm"]: t for t in report["paired_tests"] if t["against"] == "baseline"}
    assert set(against_baseline) == {"instruction", "few_shot@2"}
    assert against_baseline["instruction"]["accuracy"]["test"] == "mcnemar"
    assert against_baseline["instruction"]["accuracy"]["p_value"] == pytest.approx(1.0)  # identical outcomes
    assert [c["arm"] for c in report["costs"]] == ["baseline", "instruction", "few_shot@2"]
    assert (tmp_path / "run" / "config.yaml").exists()
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["packages"]["torch"]
    assert result.records["few_shot@2"][1][0].seed == 1


def test_prices_turn_costs_into_money(tmp_path):
    raw = config(tmp_path, costs={"price_per_1k_tokens": 2.0, "expected_queries": 1000})
    report = run_experiment(raw, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction)).report
    baseline = report.costs[0]
    assert baseline.query_price == pytest.approx(2.0 * baseline.query_tokens / 1000)
    assert baseline.total_price_at_expected_queries == pytest.approx(1000 * baseline.query_price)


def without_memory(arms: list[dict]) -> list[dict]:
    """The arms as a re-run must reproduce them: all but the peak memory measured while each ran."""
    return [
        {**arm, "peak_rss_mb": None, "details": [{**d, "peak_rss_mb": None} for d in arm["details"]]} for arm in arms
    ]


def test_rerun_hits_the_cache_for_every_generation_and_a_new_model_misses(tmp_path):
    first = run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert first.cache_misses > 0
    # Same run directory, finished arms deleted so that every prompt is asked again.
    import sqlite3

    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:
        db.execute("DELETE FROM arm_results")
    again = ScriptedBackend(answer_by_instruction)
    second = run_experiment(config(tmp_path), tmp_path / "run", backend=again)
    assert second.cache_misses == 0 and second.cache_hits > 0 and again.prompts_seen == []
    assert without_memory(second.report.to_dict()["arms"]) == without_memory(first.report.to_dict()["arms"])
    other = ScriptedBackend(answer_by_instruction, fingerprint="another-model")
    third = run_experiment(config(tmp_path), tmp_path / "run-other", backend=other)
    assert third.cache_hits == 0


def test_finished_arms_are_read_back_not_recomputed(tmp_path):
    run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    again = ScriptedBackend(answer_by_instruction)
    run_experiment(config(tmp_path), tmp_path / "run", backend=again)
    # Only the instruction candidates on dev are re-scored (from the cache); no backend call at all.
    assert again.prompts_seen == []


def test_ladder_stops_at_the_first_arm_meeting_the_target(tmp_path):
    always_right = ScriptedBackend(lambda p: " Place " + p.rsplit("item ", 1)[1].split("?")[0])
    result = run_experiment(config(tmp_path, strategy="ladder"), tmp_path / "run", backend=always_right)
    assert [a.name for a in result.report.arms] == ["baseline"]
    assert result.report.stopped_early_at == "baseline"
    assert result.report.recommendation.arm == "baseline"


# ---- CLI: user errors are one clear line and a non-zero exit -----------------------------------


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_bad_config_key_exits_2_with_its_name(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("model: {path: m}\ndata: {file: x.jsonl}\ntarget: {acuracy: 0.9}\n")
    result = run_cli("check-data", str(path))
    assert result.exit_code == 2
    assert "target.acuracy: unknown key" in result.output


def test_cli_check_data_names_file_line_and_field(tmp_path):
    paths = write_task(tmp_path / "data", n=5)
    Path(paths["dev"]).write_text('{"id": "d1", "input": "q?", "target": "a"}\n{"id": "d2", "input": "r?"}\n')
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps({"model": {"path": "m"}, "data": paths}))
    result = run_cli("check-data", str(path))
    assert result.exit_code == 2
    assert "dev.jsonl:2" in result.output and "target" in result.output


def test_cli_init_writes_a_config_check_data_accepts(tmp_path, tiny_gpt2_dir):
    target = tmp_path / "experiment.yaml"
    assert run_cli("init", str(target)).exit_code == 0
    assert run_cli("init", str(target)).exit_code == 2  # no silent overwrite
    # The written config as a user would edit it: its model and data files pointed at real ones,
    # every other key (prompts, arms with fine-tuning, metric, seeds) exactly as `init` wrote it.
    data = write_task(tmp_path / "data", n=10)
    edits = [f"model.path={tiny_gpt2_dir}"] + [f"data.{split}={path}" for split, path in data.items()]
    checked = run_cli("check-data", str(target), *(arg for edit in edits for arg in ("--set", edit)))
    assert checked.exit_code == 0, checked.output
    assert "train 10, dev 10, test 10 examples" in checked.output
    assert "loads; every arm's prompts fit its context of 256 tokens" in checked.output
    assert "lora+instruction" in checked.output  # every arm of the example was planned, fine-tuning too


# ---- one cost order ------------------------------------------------------------------------------


def test_ladder_runs_cheapest_first_by_estimate_and_stops_at_the_recommended_arm(tmp_path):
    # Right whenever the prompt carries a demonstration: both few-shot arms meet the target, the
    # baseline does not. few_shot_knn@1 has the shorter prompts, so it is cheaper than few_shot@8
    # although it is listed (and was once laddered) after it.
    with_demos = ScriptedBackend(lambda p: (" Place " + p.rsplit("item ", 1)[1].split("?")[0]) if "\n\n" in p else " ?")
    arms = ["baseline", {"kind": "few_shot", "k": [8]}, {"kind": "few_shot_knn", "k": [1]}]
    ladder = run_experiment(config(tmp_path, arms=arms, strategy="ladder"), tmp_path / "ladder", backend=with_demos)
    report = ladder.report
    assert [e.name for e in report.cost_order] == ["baseline", "few_shot_knn@1", "few_shot@8"]
    assert [a.name for a in report.arms] == ["baseline", "few_shot_knn@1"]
    assert report.stopped_early_at == report.recommendation.arm == "few_shot_knn@1"

    full = run_experiment(config(tmp_path, arms=arms), tmp_path / "full", backend=with_demos).report
    assert full.recommendation.arm == "few_shot_knn@1"
    assert list(full.recommendation.order) == ["baseline", "few_shot_knn@1", "few_shot@8"]


# ---- run lifecycle -------------------------------------------------------------------------------


def run_statuses(run_dir: Path) -> list[tuple[str, str | None]]:
    from tuneorprompt.store import Store

    store = Store(run_dir / "store.sqlite")
    try:
        return [(row.status, row.error) for row in store.runs()]
    finally:
        store.close()


def test_each_run_records_how_it_ended_and_a_reuse_says_so(tmp_path):
    def broken(prompt: str) -> str:
        if "item te" in prompt:
            raise RuntimeError("the server went away")
        return " no idea"

    with pytest.raises(RuntimeError):
        run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(broken))

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(interrupted))

    console = Console(record=True, width=200)
    run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction), console=console)
    shown = console.export_text()
    assert "the previous run" in shown and "interrupted" in shown
    statuses = run_statuses(tmp_path / "run")
    assert [s for s, _ in statuses] == ["failed", "interrupted", "finished"]
    assert "RuntimeError: the server went away" in statuses[0][1]


def test_a_second_run_into_a_directory_in_use_fails_at_once(tmp_path):
    from tuneorprompt.rundir import RunDirError, RunLock

    (tmp_path / "run").mkdir()
    backend = ScriptedBackend(answer_by_instruction)
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()}"):
            run_experiment(config(tmp_path), tmp_path / "run", backend=backend)
    assert backend.prompts_seen == []  # refused before anything ran


def test_a_directory_in_use_is_reported_before_the_checks(tmp_path):
    from tuneorprompt.rundir import RunDirError, RunLock

    (tmp_path / "run").mkdir()
    broken = config(tmp_path, arms=[{"kind": "few_shot", "k": [31]}])  # a check that would fail later
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()}"):
            run_experiment(broken, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))


def test_out_naming_someone_elses_directory_is_refused_before_anything_is_written(tmp_path):
    users = tmp_path / "my-project"
    users.mkdir()
    (users / "config.yaml").write_text("# my experiment, with comments\n")
    (users / "report.html").write_text("my page")
    backend = ScriptedBackend(answer_by_instruction)
    for out in (users, Path("/")):
        with pytest.raises(ValueError, match=f"run directory {out} is not empty and is not a tuneorprompt run"):
            run_experiment(config(tmp_path), out, backend=backend)
    assert sorted(p.name for p in users.iterdir()) == ["config.yaml", "report.html"]
    assert (users / "config.yaml").read_text() == "# my experiment, with comments\n"
    assert backend.prompts_seen == []
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="a-file exists and is not a directory"):
        run_experiment(config(tmp_path), tmp_path / "a-file", backend=backend)
    # A directory of ours is re-used (a re-run, a resume), and so is an empty one.
    (tmp_path / "empty").mkdir()
    run_experiment(config(tmp_path), tmp_path / "empty", backend=backend)
    run_experiment(config(tmp_path), tmp_path / "empty", backend=backend)


def test_cli_out_dot_keeps_the_users_experiment_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("# my comments\n" + json.dumps(config(tmp_path)) + "\n")
    before = experiment.read_text()
    result = run_cli("run", str(experiment), "--out", ".")
    assert result.exit_code == 2
    assert "is not a tuneorprompt run directory" in result.output
    assert experiment.read_text() == before and not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("link", ["store.sqlite", "models", "report.html", "config.yaml", "models/adapter"])
def test_a_link_inside_the_run_directory_is_refused_before_any_work(tmp_path, link):
    run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = tmp_path / "run" / link
    path.parent.mkdir(exist_ok=True)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(elsewhere if "." not in link else elsewhere / link)
    backend = ScriptedBackend(answer_by_instruction)
    with pytest.raises(ValueError, match=f"{path} is a symbolic link inside run directory"):
        run_experiment(config(tmp_path, seeds=[0, 1, 2]), tmp_path / "run", backend=backend)
    assert backend.prompts_seen == [] and list(elsewhere.iterdir()) == []


def test_temporaries_a_killed_run_left_are_removed_by_the_next_run(tmp_path):
    run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    # What `kill -9` in the middle of write_text_atomic leaves behind.
    stale = [tmp_path / "run" / ".report.html.0123456789abcdef.tmp", tmp_path / "run" / ".config.yaml.fedcba9876543210.tmp"]
    for path in stale:
        path.write_text("half a page")
    (tmp_path / "run" / "notes.tmp").write_text("not ours to delete")
    run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "run" / "notes.tmp").exists()


# ---- checked before anything is written ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": [{"kind": "few_shot", "k": [31]}]}, "k=31 but the training pool has only 30"),
        ({"arms": ["context"]}, "needs data.corpus"),
        ({"prompt": {"template": "Question: {{ inptu }}"}}, "inptu"),
        ({"prompt": {"template": "{% if %}"}}, "prompt.template: template syntax error"),
        ({"prompt": {"instructions": [], "builtin_instructions": False}}, "nothing to try"),
    ],
)
def test_a_run_that_cannot_work_fails_before_its_directory_exists(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(config(tmp_path, **change), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert not (tmp_path / "run").exists()


def test_prompts_that_cannot_fit_the_context_are_named_before_the_run(tmp_path):
    raw = config(tmp_path)
    test_file = Path(raw["data"]["test"])
    rows = test_file.read_text().splitlines()
    long_row = json.loads(rows[4]) | {"input": "Where is item te4? " + "very " * 50}
    test_file.write_text("\n".join(rows[:4] + [json.dumps(long_row)] + rows[5:]) + "\n")
    short_context = ScriptedBackend(answer_by_instruction, context_length=40)
    with pytest.raises(ValueError, match=r"arm baseline: 1 prompts do not fit .* 'te4' \(.*test.jsonl:5\)"):
        run_experiment(raw, tmp_path / "run", backend=short_context)
    assert not (tmp_path / "run").exists() and short_context.prompts_seen == []


# ---- clear errors on what a run reads back ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_a_damaged_store_is_one_clear_error_naming_it(tmp_path, damage):
    store = tmp_path / "run" / "store.sqlite"
    if damage == "truncated":
        run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
        data = store.read_bytes()
        store.write_bytes(data[: len(data) // 3])
        for journal in store.parent.glob("store.sqlite-*"):  # the write-ahead log would repair nothing
            journal.unlink()
    else:
        store.parent.mkdir()
        store.write_text("these are my notes, not a database\n")
    with pytest.raises(ValueError, match=r"store\.sqlite: not a readable tuneorprompt store"):
        run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))


def test_a_user_metric_that_raises_names_the_example(tmp_path, monkeypatch):
    (tmp_path / "my_metric.py").write_text(
        "def score(answer, targets):\n"
        "    if answer == 'no idea':\n"
        "        raise KeyError('unexpected answer')\n"
        "    return answer in targets\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = config(tmp_path, metric={"accuracy": "my_metric:score"}, arms=["baseline"])
    with pytest.raises(ValueError, match=r"example 'te1' \(.*test.jsonl:2\).*my_metric:score.*KeyError"):
        run_experiment(raw, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))


def test_an_edited_user_metric_scores_again_in_the_same_directory(tmp_path, monkeypatch):
    """A user metric is keyed by its code, not its name: after an edit, a re-run into the same
    directory reports the new function's numbers, not the stored ones."""
    import sys

    module = tmp_path / "edited_metric.py"
    module.write_text("def score(answer, targets):\n    return answer in targets\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within the same second reads fresh
    raw = config(tmp_path, metric={"accuracy": "edited_metric:score"}, arms=["baseline"], seeds=[0])
    first = run_experiment(raw, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert 0 < first.report.arms[0].accuracy.value < 1

    module.write_text("def score(answer, targets):\n    return 1.0  # everything counts now\n")
    monkeypatch.delitem(sys.modules, "edited_metric")  # as a new process would import it
    second = run_experiment(raw, tmp_path / "run", backend=ScriptedBackend(answer_by_instruction))
    assert second.report.arms[0].accuracy.value == 1.0


def test_a_model_that_cannot_be_trained_is_refused_before_any_arm_runs(tmp_path, tiny_gpt2_dir):
    import shutil

    quantized = shutil.copytree(tiny_gpt2_dir, tmp_path / "quantized")
    model_config = json.loads((quantized / "config.json").read_text())
    model_config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (quantized / "config.json").write_text(json.dumps(model_config))
    raw = config(tmp_path, arms=["baseline", "lora"], model={"path": str(quantized)})
    backend = ScriptedBackend(answer_by_instruction)
    with pytest.raises(ValueError, match=r"is quantized \(gptq\); its weights cannot be trained"):
        run_experiment(raw, tmp_path / "run", backend=backend)
    assert backend.prompts_seen == [] and not (tmp_path / "run").exists()


class FirstAnswerAsked(Exception):
    """Raised by a backend at its first generation: the run got that far."""


def refuse_to_answer(prompt: str) -> str:
    raise FirstAnswerAsked


@pytest.mark.parametrize(("max_test", "warned"), [(None, True), (10_001, False)])
def test_a_large_test_split_without_max_test_is_said_before_any_answer(tmp_path, max_test, warned):
    raw = config(tmp_path, arms=["baseline"], seeds=[0])
    raw["data"]["max_test"] = max_test
    Path(raw["data"]["test"]).write_text("".join(
        json.dumps({"id": f"te{i}", "input": f"Where is item te{i}?", "target": f"Place te{i}"}) + "\n"
        for i in range(10_001)
    ))
    output = Console(file=io.StringIO(), width=400)
    with pytest.raises(FirstAnswerAsked):
        run_experiment(raw, tmp_path / "run", backend=ScriptedBackend(refuse_to_answer), console=output)
    said = "Warning: the test split has 10,001 items and data.max_test is unset" in output.file.getvalue()
    assert said == warned
