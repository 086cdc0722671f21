"""`tuneorprompt run` end to end on a real Hugging Face model directory (the tiny GPT-2 fixture):
files written, report fields, cache behaviour across re-runs and across models."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tests.conftest import build_tiny_gpt2
from tuneorprompt.cli import app
from tuneorprompt.experiment import run_experiment

COUNTRIES = ["France", "Italy", "Spain", "Peru", "Chile", "Kenya", "Japan", "Egypt", "Cuba", "Iran", "Oman", "Fiji"]


def write_experiment(folder: Path, model_dir: Path) -> Path:
    rows = [{"id": f"c{i}", "input": f"What is the capital of {c}?", "target": f"City{i}"}
            for i, c in enumerate(COUNTRIES)]
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "name": "tiny",
        "model": {"path": str(model_dir), "batch_size": 4, "num_threads": 1},
        "data": {"file": "capitals.jsonl", "split": {"train": 0.5, "dev": 0.25, "test": 0.25}},
        "generation": {"max_new_tokens": 6},
        "arms": ["baseline", "instruction", {"kind": "few_shot", "k": [1]}, {"kind": "few_shot_knn", "k": [2]}],
        "seeds": [0, 1],
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_run_writes_the_run_directory_and_report(tmp_path, tiny_gpt2_dir):
    config = write_experiment(tmp_path, tiny_gpt2_dir)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in ("config.yaml", "environment.json", "store.sqlite", "report.json", "report.html"):
        assert (run / name).exists(), name
    report = json.loads((run / "report.json").read_text())
    # Cheapest first, by the cost estimated before the run (the order the ladder and the recommendation use).
    assert [a["name"] for a in report["arms"]] == [e["name"] for e in report["cost_order"]]
    assert sorted(a["name"] for a in report["arms"]) == ["baseline", "few_shot@1", "few_shot_knn@2", "instruction"]
    assert all(a["accuracy"]["n"] == 3 and a["prompt_tokens"] > 0 for a in report["arms"])
    # Demos lengthen prompts: the cost columns must show it.
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["few_shot_knn@2"]["prompt_tokens"] > arms["few_shot@1"]["prompt_tokens"] > arms["baseline"]["prompt_tokens"]
    assert "baseline" in result.output  # the terminal table


def test_unchanged_rerun_generates_nothing_and_a_changed_model_misses(tmp_path, tiny_gpt2_dir):
    config = write_experiment(tmp_path, tiny_gpt2_dir)
    first = run_experiment(config, tmp_path / "run")
    assert first.cache_misses > 0
    second = run_experiment(config, tmp_path / "run", overrides=["name=tiny-again"])
    assert second.cache_misses == 0
    assert [a.accuracy for a in second.report.arms] == [a.accuracy for a in first.report.arms]

    # Another model written to the same path: same prompts, new weights -> nothing may come from the cache.
    build_tiny_gpt2(tiny_gpt2_dir.parent / "other", seed=1)
    other_config = tmp_path / "other.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["model"]["path"] = str(tiny_gpt2_dir.parent / "other")
    other_config.write_text(yaml.safe_dump(raw))
    import sqlite3

    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:
        db.execute("DELETE FROM arm_results")  # force every arm to ask again in the same store
    third = run_experiment(other_config, tmp_path / "run")
    assert third.cache_hits == 0 and third.cache_misses > 0


def test_check_data_names_the_prompts_that_cannot_fit_the_model(tmp_path, tiny_gpt2_dir):
    config = write_experiment(tmp_path, tiny_gpt2_dir)
    rows = [json.loads(line) for line in (tmp_path / "capitals.jsonl").read_text().splitlines()]
    rows[7]["input"] = "Paris is the capital. " * 60 + "What is the capital of Spain?"  # ~360 tokens; c7 is a test item
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    checked = CliRunner().invoke(app, ["check-data", str(config)])
    output = " ".join(checked.output.split())  # rich wraps long lines
    assert checked.exit_code == 2
    assert "'c7' (" in output and "capitals.jsonl:8" in output and "context of 256" in output
    ran = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert ran.exit_code == 2 and not (tmp_path / "run").exists()
