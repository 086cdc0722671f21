"""`metric.choice_by_loglikelihood`: each answer is the label the model finds likeliest after the
prompt, scored by the one evaluator like a generated answer; refused where the model cannot score."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import ScriptedBackend
from tuneorprompt.backends.hf import load_hf_backend
from tuneorprompt.backends.openai import OpenAIBackend
from tuneorprompt.config import ConfigError, ModelConfig, OpenAIModelConfig, config_from_dict
from tuneorprompt.evaluate import LabelChoice, choose_labels
from tuneorprompt.experiment import run_experiment

LABELS = ["yes", "no"]


def write_parity_task(folder: Path, n: int = 12) -> dict:
    """"Is N even?" with answers yes/no, half of each in every split."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for offset, split in enumerate(("train", "dev", "test")):
        rows = [{"id": f"{split}{i}", "input": f"Is {100 * offset + i} even?", "target": LABELS[i % 2]} for i in range(n)]
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {split: str(path) for split, path in paths.items()}


def config(tmp_path: Path, **metric) -> dict:
    return {
        "name": "label-choice",
        "model": {"path": "unused-with-an-injected-backend"},
        "data": write_parity_task(tmp_path / "data"),
        "arms": ["baseline", {"kind": "few_shot", "k": [2]}],
        "seeds": [0],
        "metric": {"accuracy": "choice", "labels": LABELS, "choice_by_loglikelihood": True, **metric},
    }


def true_parity(prompt: str, continuation: str) -> float:
    """Likeliest: the right answer to the prompt's last question (demos come before it)."""
    number = int(re.findall(r"Is (\d+) even\?", prompt)[-1])
    return 0.0 if continuation == " " + LABELS[number % 2] else -5.0


def test_answers_are_the_likeliest_labels_scored_like_generations(tmp_path):
    backend = ScriptedBackend(lambda prompt: " unused", likelihood=true_parity)
    result = run_experiment(config(tmp_path), tmp_path / "run", backend=backend)
    assert backend.prompts_seen == [] and (result.cache_hits, result.cache_misses) == (0, 0)  # nothing generated
    # Each label is scored as the reply the prompt format writes after the prompt: answer_prefix + label.
    assert {continuation for _, continuation in backend.scored} == {" yes", " no"}
    for arm in result.report.to_dict()["arms"]:
        assert arm["accuracy"]["value"] == 1.0 and arm["accuracy_lenient"]["value"] == 1.0
    for record in result.records["baseline"][0]:
        assert record.completion == record.answer == record.targets[0]
        assert record.generated_tokens == 0 and record.prompt_tokens == backend.count_tokens(record.prompt)


def test_the_scores_decide_even_against_the_reference(tmp_path):
    # The fake's default finds shorter replies likelier: " no" beats " yes" on every question.
    result = run_experiment(config(tmp_path), tmp_path / "run", backend=ScriptedBackend(lambda prompt: " unused"))
    assert {r.completion for r in result.records["baseline"][0]} == {"no"}
    assert {a["name"]: a["accuracy"]["value"] for a in result.report.to_dict()["arms"]} == {"baseline": 0.5, "few_shot@2": 0.5}


def test_equal_scores_choose_the_earlier_label():
    backend = ScriptedBackend(lambda prompt: "", likelihood=lambda prompt, continuation: 0.0)
    choice = LabelChoice(("b", "a"), (" b", " a"))
    assert [c.text for c in choose_labels(backend, ["x", "y"], choice)] == ["b", "b"]


def test_a_model_that_cannot_score_is_refused_before_the_run(tmp_path):
    spec = OpenAIModelConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", context_length=512, mode="chat")
    raw = {**config(tmp_path), "model": spec.model_dump(mode="json")}
    with pytest.raises(ValueError, match=r"^metric\.choice_by_loglikelihood: model\.kind openai \(OpenAIBackend\) cannot score"):
        run_experiment(raw, tmp_path / "run", backend=OpenAIBackend(client=None, spec=spec))
    assert not (tmp_path / "run").exists()


def test_choice_by_loglikelihood_needs_the_choice_matcher(tmp_path):
    raw = config(tmp_path, accuracy="exact")
    with pytest.raises(ConfigError, match=r"metric: choice_by_loglikelihood needs accuracy: choice"):
        config_from_dict(raw)


def test_a_tiny_model_answers_with_its_likeliest_label(tmp_path, tiny_gpt2_dir):
    labels = ["Paris", "Rome", "Madrid"]
    backend = load_hf_backend(ModelConfig(path=str(tiny_gpt2_dir), device="cpu", num_threads=1))
    raw = {**config(tmp_path, labels=labels), "arms": ["baseline"]}
    raw["data"]["allow_overlap"] = True  # the same few questions in every split: only the test answers matter
    for split in ("train", "dev", "test"):  # capitals questions, the fixture tokenizer's own words
        rows = [{"id": f"{split}{i}", "input": f"What is the capital of {country}?", "target": city}
                for i, (country, city) in enumerate(zip(["France", "Italy", "Spain"] * 2, labels * 2))]
        Path(raw["data"][split]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_experiment(raw, tmp_path / "run", backend=backend)
    records = result.records["baseline"][0]
    for record in records:
        scores = backend.loglikelihood([(record.prompt, " " + label) for label in labels])
        assert record.completion == labels[int(np.argmax(scores))]
        assert record.correct == float(record.completion == record.targets[0])
    assert result.report.to_dict()["arms"][0]["accuracy"]["value"] == pytest.approx(np.mean([r.correct for r in records]))
