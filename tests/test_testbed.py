"""The bundled testbed: world and corpus invariants, the committed model, and the task files.

No pretraining here (the build takes minutes); the build's bit-for-bit reproducibility is checked by
hashing two short builds (see tuneorprompt/testbed/build.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneorprompt.testbed import MODEL_DIR, TASKS_DIR
from tuneorprompt.testbed.build import write_tasks
from tuneorprompt.testbed.corpus import QUESTIONS, build_corpus
from tuneorprompt.testbed.world import make_world

TASK_FILES = {"capitals": ("train", "dev", "test"), "newfacts": ("train", "dev", "test")}


@pytest.fixture(scope="module")
def world():
    return make_world(0)


@pytest.fixture(scope="module")
def corpus_words(world):
    """Every word of the pretraining corpus, and the corpus itself."""
    docs = build_corpus(world, 0)
    return set(re.findall(r"[A-Za-z]+", " ".join(docs))), docs


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_world_is_a_function_of_its_seed(world):
    assert make_world(0) == world
    other = make_world(1)
    assert [c.name for c in other.countries] != [c.name for c in world.countries]
    names = [n.lower() for c in world.countries for n in (c.name, c.capital)]
    assert len(names) == len(set(names)), "country and city names must be unique"


def test_corpus_states_task_capitals_only_in_prose(world, corpus_words):
    words, docs = corpus_words
    text = "\n".join(docs)
    answer_lines = re.findall(r"^Answer: (.*)$", text, flags=re.MULTILINE)
    answer_words = set(re.findall(r"[A-Za-z]+", " ".join(answer_lines)))
    for country in world.with_role("capitals"):
        assert country.capital not in answer_words
        for template in QUESTIONS["capital"]:
            assert template.format(c=country.name) not in text
        assert country.capital in words  # ...but the fact itself is in the prose
    regular = world.with_role("regular")[0]
    assert regular.capital in answer_words  # the other countries' capitals do appear as Q/A


def _answers(doc: str) -> list[str]:
    return re.findall(r"^Answer: (.*)$", doc, flags=re.MULTILINE)


def _is_few_shot_block(doc: str) -> bool:
    return doc.startswith("Question: ") and "\n\nQuestion: " in doc


def test_listed_capitals_are_asked_only_inside_few_shot_blocks(world, corpus_words):
    _, docs = corpus_words
    is_block = [_is_few_shot_block(d) for d in docs]
    block_answers = " ".join(a for d, b in zip(docs, is_block) if b for a in _answers(d))
    other_answers = " ".join(a for d, b in zip(docs, is_block) if not b for a in _answers(d))
    block_words, other_words = set(re.findall(r"[A-Za-z]+", block_answers)), set(re.findall(r"[A-Za-z]+", other_answers))
    listed = world.with_role("listed")
    assert listed
    assert all(c.capital not in other_words for c in listed)
    assert sum(c.capital in block_words for c in listed) > 0.9 * len(listed)


def test_each_few_shot_block_keeps_one_answer_style(corpus_words):
    """Demonstrations show the format: a block is bare (one word per answer) or chatty throughout."""
    _, docs = corpus_words
    blocks = [_answers(d) for d in docs if _is_few_shot_block(d)]
    styles = [{" " in a for a in answers} for answers in blocks]
    assert len(blocks) > 1000 and all(len(s) == 1 for s in styles)
    assert 0.05 < sum(s == {True} for s in styles) / len(blocks) < 0.3


def test_newfacts_countries_never_appear_in_pretraining(world, corpus_words):
    words, _ = corpus_words
    newfacts = world.with_role("newfacts")
    assert newfacts
    for country in newfacts:
        assert country.name not in words and country.capital not in words


def test_bundled_model_loads_and_is_small():
    files = list(MODEL_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    assert (MODEL_DIR / "model.safetensors").exists() and not list(MODEL_DIR.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.config.vocab_size == len(tokenizer) == 2048


def test_bundled_tokenizer_starts_every_prompt_like_a_document():
    """Pretraining documents follow <|endoftext|>; prompts must start the same way, or the model
    reads them as the middle of some other document."""
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    ids = tokenizer("Question: What is the capital of Zed?\nAnswer:")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.eos_token_id
    assert ids[1:] == tokenizer("Question: What is the capital of Zed?\nAnswer:", add_special_tokens=False)["input_ids"]


def test_bundled_model_knows_the_world_it_was_trained_on(world):
    """Capitals of well-known regular countries, asked in the corpus's Q/A format: the bundled
    weights must belong to the seed-0 world, not to some other build."""
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    famous = sorted(world.with_role("regular"), key=lambda c: -c.fame)[:20]
    prompts = [f"Question: What is the capital of {c.name}?\nAnswer:" for c in famous]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    answers = [t.split("\n")[0].strip() for t in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]
    correct = sum(a == c.capital for a, c in zip(answers, famous))
    assert correct >= 15, list(zip(answers, [c.capital for c in famous]))


def test_task_files_are_valid_and_disjoint():
    for task, splits in TASK_FILES.items():
        rows = {s: _read_jsonl(TASKS_DIR / task / f"{s}.jsonl") for s in splits}
        for items in rows.values():
            for item in items:
                assert set(item) == {"id", "input", "target"}
                assert all(isinstance(item[k], str) and item[k] for k in item)
        ids = [item["id"] for items in rows.values() for item in items]
        assert len(ids) == len(set(ids))
        country = lambda item: re.search(r"(?:of|in) (\w+)\?$", item["input"]).group(1)  # noqa: E731
        countries = {s: {country(i) for i in items} for s, items in rows.items()}
        assert not (countries["train"] & countries["test"] or countries["dev"] & countries["test"] or countries["train"] & countries["dev"])
        assert len(rows["test"]) >= 200 and len(rows["train"]) >= 150 and len(rows["dev"]) >= 60


def test_newfacts_corpus_holds_every_answer():
    passages = _read_jsonl(TASKS_DIR / "newfacts" / "corpus.jsonl")
    assert all(set(p) == {"id", "text"} for p in passages)
    for item in _read_jsonl(TASKS_DIR / "newfacts" / "test.jsonl"):
        subject = re.search(r"(?:of|in) (\w+)\?$", item["input"]).group(1)
        assert any(subject in p["text"] and item["target"] in p["text"] for p in passages), item["id"]


def test_bundled_task_files_are_the_seed_0_build(world, tmp_path):
    write_tasks(world, tmp_path, seed=0)
    for path in sorted(tmp_path.rglob("*.jsonl")):
        assert path.read_text() == (TASKS_DIR / path.relative_to(tmp_path)).read_text(), path.name
