"""The stale-result matrix: change one setting, re-run into the same run directory, and the report
must equal a fresh run's in a new directory, while the cache counts show what was re-used.

A report whose numbers were produced by another config than the one it shows is the worst bug a
measurement tool can have; every row below once could, or easily could, produce one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.conftest import build_tiny_gpt2
from tuneorprompt.experiment import run_experiment

COUNTRIES = ["France", "Italy", "Spain", "Peru", "Chile", "Kenya", "Japan", "Egypt", "Cuba", "Iran", "Oman", "Fiji",
             "Mali", "Chad", "Laos", "Togo"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|endoftext|>{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny GPT-2 with a chat template (so chat_template on/off is a real change), and another
    model of the same shape and tokenizer but other weights."""
    dirs = {}
    for name, seed in (("model", 0), ("other", 1)):
        directory = build_tiny_gpt2(tmp_path_factory.mktemp(name), seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(directory)
        dirs[name] = directory
    return dirs


def task(folder: Path, answers: dict[str, str] | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"c{i}", "input": f"What is the capital of {c}?", "target": (answers or {}).get(c, f"City{i}")}
            for i, c in enumerate(COUNTRIES)]
    paths = {}
    for split, part in (("train", rows[:8]), ("dev", rows[8:12]), ("test", rows[12:])):
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in part))
    return {k: str(v) for k, v in paths.items()}


def base_config(folder: Path, model: Path) -> dict:
    return {
        "name": "stale",
        "model": {"path": str(model), "batch_size": 4, "num_threads": 1, "chat_template": False},
        "data": {**task(folder), "max_test": 3},
        "prompt": {"builtin_instructions": False, "instructions": ["Answer briefly.", "Name the city."]},
        "generation": {"max_new_tokens": 5},
        "arms": ["baseline", "instruction", {"kind": "few_shot", "k": [1]}],
        "seeds": [0, 1],
    }


def comparable(report: dict) -> dict:
    """The report without what legitimately differs between two runs of the same config: wall times,
    peak memory, and paths of the run directory."""
    arms = []
    for arm in report["arms"]:
        details = [{k: v for k, v in d.items() if k not in ("model_dir", "peak_rss_mb")} for d in arm["details"]]
        arms.append({
            "name": arm["name"], "accuracy": arm["accuracy"], "relevance": round(arm["relevance"]["value"], 6),
            "prompt_tokens": arm["prompt_tokens"], "generated_tokens": arm["generated_tokens"], "details": details,
            "learning_rates": [e["learning_rate"] for e in arm["training"]["extra"]] if arm["training"] else None,
        })
    return {"arms": arms, "recommendation": report["recommendation"]["arm"], "protocol": report["protocol"]}


def with_change(config: dict, change: str, models: dict[str, Path], folder: Path) -> dict:
    config = json.loads(json.dumps(config))
    if change == "metric":
        config["metric"] = {"accuracy": "contains"}
    elif change == "template":
        config["prompt"]["template"] = "Q: {{ input }}\nA:"
    elif change == "instruction list":
        config["prompt"]["instructions"].append("Reply with one word.")
    elif change == "chat template":
        config["model"]["chat_template"] = True
    elif change == "dtype":
        config["model"]["dtype"] = "bfloat16"
    elif change == "max_new_tokens":
        config["generation"]["max_new_tokens"] = 3
    elif change == "stop":
        config["generation"]["stop"] = ["\n", "."]
    elif change == "extraction":
        config["generation"]["extract"] = "full"
    elif change == "max_test":
        config["data"]["max_test"] = 4
    elif change == "model weights":
        config["model"]["path"] = str(models["other"])
    elif change == "data file content":
        config["data"] = {**task(folder / "edited", answers={"Mali": "Bamako"}), "max_test": 3}
    return config


# change -> (generations re-used, generations made) in the re-run, given 3 test and 4 dev items; the
# arms are baseline (1 seed), instruction (2 candidates on dev, 1 seed) and few_shot@1 (2 seeds).
PROMPT_MATRIX = {
    "metric": "all",  # re-scored, nothing generated
    "extraction": "all",
    "data file content": "all",  # a test answer changed, not a prompt
    "instruction list": "new candidate",  # only the new candidate's dev prompts are new
    "max_test": "new item",  # only the added test item is new, for each arm and seed
    "template": "none",
    "chat template": "none",
    "dtype": "none",
    "max_new_tokens": "none",
    "stop": "none",
    "model weights": "none",
}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("stale")
    config = base_config(folder, models["model"])
    first = run_experiment(config, folder / "base-run")
    return folder, config, first


@pytest.mark.parametrize("change", list(PROMPT_MATRIX))
def test_a_changed_setting_reruns_into_the_same_directory_as_a_fresh_run(change, base_run, models, tmp_path):
    folder, config, first = base_run
    same_dir = tmp_path / "reused"
    shutil.copytree(folder / "base-run", same_dir)
    changed = with_change(config, change, models, tmp_path)

    rerun = run_experiment(changed, same_dir)
    fresh = run_experiment(changed, tmp_path / "fresh")

    assert comparable(rerun.report.to_dict()) == comparable(fresh.report.to_dict())
    assert rerun.report.protocol != first.report.protocol
    on_disk = json.loads((same_dir / "report.json").read_text())
    assert comparable(on_disk) == comparable(rerun.report.to_dict())
    calls = rerun.cache_hits + rerun.cache_misses
    expected_misses = {
        "all": 0,
        "new candidate": 4,  # the new instruction on the 4 dev items
        "new item": 4,  # baseline, instruction and few_shot@1 x 2 seeds, on the one new test item
        "none": calls,
    }[PROMPT_MATRIX[change]]
    if PROMPT_MATRIX[change] == "none":
        assert rerun.cache_hits == 0 and rerun.cache_misses > 0
    else:
        assert rerun.cache_misses == expected_misses and rerun.cache_hits > 0


def test_a_changed_learning_rate_grid_trains_only_the_new_rate(tmp_path, models):
    config = base_config(tmp_path, models["model"])
    config["arms"] = ["baseline", {"kind": "lora", "learning_rates": [1e-3], "epochs": 1, "batch_size": 4}]
    config["seeds"] = [0]
    run_experiment(config, tmp_path / "run")
    config["arms"][1]["learning_rates"] = [1e-3, 3e-3]
    rerun = run_experiment(config, tmp_path / "run")
    fresh = run_experiment(config, tmp_path / "fresh")
    assert comparable(rerun.report.to_dict()) == comparable(fresh.report.to_dict())
    # The 1e-3 run was read back: only the 3e-3 model's dev answers (and the selected model's test
    # answers, if it is the new one) were generated.
    assert 0 < rerun.cache_misses <= 4 + 3
    runs = sorted(p.name for p in (tmp_path / "run" / "models").glob("lora-seed0-*/lr-*"))
    assert runs == ["lr-0.001", "lr-0.003"]


def test_a_changed_metric_reselects_the_fine_tuned_epoch_without_generating(tmp_path, models):
    config = base_config(tmp_path, models["model"])
    config["arms"] = [{"kind": "lora", "learning_rates": [1e-3], "epochs": 2, "batch_size": 4}]
    config["seeds"] = [0]
    first = run_experiment(config, tmp_path / "run")
    config["metric"] = {"accuracy": "contains"}
    rerun = run_experiment(config, tmp_path / "run")
    fresh = run_experiment(config, tmp_path / "fresh")
    assert comparable(rerun.report.to_dict()) == comparable(fresh.report.to_dict())
    # Retrained under the new dev scoring (the epoch choice depends on it), bit for bit the same weights:
    # every dev and test answer came from the cache.
    assert rerun.cache_misses == 0 and rerun.cache_hits > 0
    assert len(list((tmp_path / "run" / "models").glob("lora-seed0-*"))) == 2
    assert first.report.protocol["metric"]["accuracy"] == "exact"
    assert rerun.report.protocol["metric"]["accuracy"] == "contains"
