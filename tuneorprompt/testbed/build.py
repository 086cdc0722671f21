"""Build the testbed: world -> corpus -> tokenizer -> pretrained model -> task files -> model card.

    python -m tuneorprompt.testbed.build --out tuneorprompt/testbed   # regenerates the bundled files

Everything is a function of the seed: fixed step counts (never a time budget), seeded shuffles and
initialisation, and one CPU thread, so a rebuild on the same torch version reproduces the committed
weights bit for bit (tested by hashing model.safetensors of two short builds).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tuneorprompt.testbed.card import write_card
from tuneorprompt.testbed.corpus import (
    TASK_QUESTIONS,
    CorpusSpec,
    build_corpus,
    passage,
    value,
)
from tuneorprompt.testbed.world import Country, World, WorldSpec, make_world

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TrainSpec:
    """Pretraining settings. About 2 optimizer steps per second on one CPU thread here."""

    vocab_size: int = 2048
    context: int = 256  # tokens per training sequence and the model's maximum context
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    mlp: int = 384
    steps: int = 2400
    batch: int = 16  # sequences per step: 16 x 256 = 4,096 tokens
    lr: float = 4e-3
    warmup: int = 60
    final_lr_fraction: float = 0.05  # cosine decay from lr to lr * this at the last step
    weight_decay: float = 0.1


@dataclass(frozen=True)
class TaskSplit:
    train: int
    dev: int
    test: int


CAPITALS_SPLIT = TaskSplit(train=160, dev=60, test=200)  # countries; one question each
NEWFACTS_SPLIT = TaskSplit(train=50, dev=25, test=75)  # countries; three questions each
NEWFACTS_RELATIONS = ("capital", "language", "currency")
N_CORPUS_DISTRACTORS = 100  # passages about pretraining countries added to the newfacts corpus


# ---- tokenizer ---------------------------------------------------------------------------------


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style): every string is encodable, and " Tashket" after "Answer:" is
    tokenised the same way in pretraining, prompts and fine-tuning data.

    One special token, EOS, separates documents in pretraining and is also the pad and the BOS
    token: encoding with special tokens (as prompts are encoded) puts it first, as Llama tokenizers
    put <s>. So a prompt starts the way every pretraining document did, right after EOS; without it
    the model reads a prompt as the middle of some document, and measured here it then answered a
    plain question and an instructed one in nearly the same way. The pretraining stream is encoded
    without special tokens (`token_stream`)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=TrainSpec.context
    )


# ---- pretraining -------------------------------------------------------------------------------


def token_stream(docs: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """All documents as one 1-D tensor of token ids, each document followed by EOS."""
    ids: list[int] = []
    for encoded in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def make_model(spec: TrainSpec, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden, intermediate_size=spec.mlp,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.context, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warmup, then cosine decay to final_lr_fraction * lr at the last step."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (spec.final_lr_fraction + (1 - spec.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model: LlamaForCausalLM, stream: torch.Tensor, spec: TrainSpec, seed: int, log=print) -> list[float]:
    """Next-token training on random 256-token windows of the stream; returns the loss every 50 steps.

    Windows are drawn by a seeded generator, so the data order is fixed. Everything runs in fp32:
    bf16 autocast was measured no faster for a model this small on one CPU thread."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=spec.weight_decay)
    n_windows = len(stream) - spec.context - 1
    losses, running = [], 0.0
    model.train()
    for step in range(spec.steps):
        starts = torch.randint(0, n_windows, (spec.batch,), generator=generator)
        batch = torch.stack([stream[s : s + spec.context] for s in starts.tolist()])  # (batch, context)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, spec)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % 50 == 0:
            losses.append(round(running / 50, 4))
            log(f"step {step + 1}/{spec.steps} loss {losses[-1]:.4f}")
            running = 0.0
    model.eval()
    return losses


# ---- task files --------------------------------------------------------------------------------


def _split(countries: list[Country], sizes: TaskSplit, seed: int) -> dict[str, list[Country]]:
    if len(countries) < sizes.train + sizes.dev + sizes.test:
        raise ValueError(f"the world has {len(countries)} countries for a split of {asdict(sizes)}")
    shuffled = sorted(countries, key=lambda c: c.name)
    random.Random(seed).shuffle(shuffled)
    return {
        "train": shuffled[: sizes.train],
        "dev": shuffled[sizes.train : sizes.train + sizes.dev],
        "test": shuffled[sizes.train + sizes.dev : sizes.train + sizes.dev + sizes.test],
    }


def _item(task: str, country: Country, relation: str) -> dict:
    return {
        "id": f"{task}-{country.name.lower()}-{relation}",
        "input": TASK_QUESTIONS[relation].format(c=country.name),
        "target": value(country, relation),
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_tasks(world: World, tasks_dir: Path, seed: int) -> dict[str, dict[str, int]]:
    """capitals: one question per `capitals` country. newfacts: three questions per `newfacts`
    country, split by country (no country in two splits), plus the reference corpus."""
    sizes: dict[str, dict[str, int]] = {"capitals": {}, "newfacts": {}}
    for split, countries in _split(world.with_role("capitals"), CAPITALS_SPLIT, seed).items():
        rows = [_item("capitals", c, "capital") for c in countries]
        _write_jsonl(tasks_dir / "capitals" / f"{split}.jsonl", rows)
        sizes["capitals"][split] = len(rows)
    newfacts = world.with_role("newfacts")
    for split, countries in _split(newfacts, NEWFACTS_SPLIT, seed).items():
        rows = [_item("newfacts", c, r) for c in countries for r in NEWFACTS_RELATIONS]
        _write_jsonl(tasks_dir / "newfacts" / f"{split}.jsonl", rows)
        sizes["newfacts"][split] = len(rows)
    rng = random.Random(seed)
    described = newfacts + rng.sample(world.with_role("regular"), N_CORPUS_DISTRACTORS)
    rng.shuffle(described)
    corpus = [{"id": f"passage-{c.name.lower()}", "text": passage(c, rng)} for c in described]
    _write_jsonl(tasks_dir / "newfacts" / "corpus.jsonl", corpus)
    sizes["newfacts"]["corpus"] = len(corpus)
    return sizes


# ---- the build ---------------------------------------------------------------------------------


def build_testbed(out_dir: Path, *, seed: int = 0, steps: int | None = None, log=print) -> Path:
    """Build the testbed under `out_dir` (as `model/` and `tasks/`) and return `out_dir`.

    `steps` overrides the pretraining step count (for quick checks); the bundled model uses the default."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = TrainSpec() if steps is None else TrainSpec(steps=steps)
    world_spec, corpus_spec = WorldSpec(), CorpusSpec()
    world = make_world(seed, world_spec)
    docs = build_corpus(world, seed, corpus_spec)
    tokenizer = train_tokenizer(docs, spec.vocab_size)
    stream = token_stream(docs, tokenizer)
    log(f"corpus: {len(docs)} documents, {len(stream)} tokens")
    model = make_model(spec, tokenizer, seed)
    losses = pretrain(model, stream, spec, seed, log=log)

    model_dir = Path(out_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    GenerationConfig(
        do_sample=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    ).save_pretrained(model_dir)
    task_sizes = write_tasks(world, Path(out_dir) / "tasks", seed)
    write_card(
        model_dir / "README.md", seed=seed, default_build=steps is None and seed == 0, train=asdict(spec), world=asdict(world_spec), corpus=asdict(corpus_spec),
        n_documents=len(docs), n_tokens=len(stream), losses=losses, task_sizes=task_sizes,
        n_params=sum(p.numel() for p in model.parameters()),
    )
    log(f"built {out_dir} in {time.perf_counter() - started:.0f}s")
    return Path(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write model/ and tasks/ into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help=f"pretraining steps (default {TrainSpec.steps})")
    args = parser.parse_args(argv)
    build_testbed(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
