"""Fine-tuning throughput: tuneorprompt's training path against a naive Trainer loop, on data of varied lengths.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_training --threads 1            # SmolLM2-135M-Instruct
    OMP_NUM_THREADS=1 python -m benchmarks.bench_training --model testbed --smoke  # CI: seconds

Three sides train the same model from the same weights on the same token ids (the inference prompt, the
answer, EOS), one epoch at the same batch size, full fine-tuning:
- naive: transformers' Trainer as a notebook uses it: random batches, each padded to its longest
  sequence, loss on the whole sequence (padding masked), logits at every position;
- grouped: `tuneorprompt.finetune.build_trainer` with the stock loss (logits at every position): what
  length-grouped batches alone give;
- ours: `build_trainer` as `finetune` runs it: length-grouped batches, the output head only at positions
  whose next token is supervised.
Timed from the first step to the end of the epoch (checkpoint writing excluded). The figures are real
(non-pad) tokens per second; ratios are between sides measured in this process, one after another.

Data: the real-world tasks' training examples (capitals and cities, tuneorprompt/realworld) for SmolLM2,
the testbed's (capitals, newfacts) for the testbed model, each prompt in the model's own format (its chat
template when it has one) with 0, 0, 1, 2, 4 or 8 demonstrations drawn per example (seeded): prompts
of about 40 to 300 tokens, as few-shot and retrieved-context prompts vary in practice.

Fraction of the matmul peak: FLOPs per second over torch's float32 n=2048 matmul rate, measured in this
process at the same thread count (best of before and after training). FLOPs, full fine-tuning
(forward 2, backward 4 per weight per token): useful = 6 x N_body x real tokens + 6 x N_head x supervised
tokens, where N_head = vocabulary x hidden (the output head, tied to the embedding) and N_body = the other
parameters (the embedding lookup is not a matmul); attention's own T^2 terms (~3% at these lengths) are
not counted. LoRA (--kind lora): the frozen weights cost 4 (forward, input gradient) instead of 6, and
each adapter weight 6 per token. `executed` counts what each side computed instead: 6 x N_body x padded tokens plus
6 x N_head x the positions given to the head (every padded position for naive and grouped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks.common import model_dir, update_results
from tuneorprompt.config import FineTuneArm, ModelConfig, PromptConfig
from tuneorprompt.finetune import _lora_config, build_trainer
from tuneorprompt.training_data import TrainingExample, training_dataset
from tuneorprompt.prompts import PromptFormat, PromptRecipe
from tuneorprompt.records import Example

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "smollm2": [ROOT / "tuneorprompt" / "realworld" / "tasks" / t / "train.jsonl" for t in ("capitals", "cities")],
    "testbed": [ROOT / "tuneorprompt" / "testbed" / "tasks" / t / "train.jsonl" for t in ("capitals", "newfacts")],
}
DEMOS = (0, 0, 1, 2, 4, 8)


@dataclass(frozen=True)
class DrawnDemos:
    """Each example's own seeded draw of demonstrations, as a `PromptRecipe` demo source."""

    by_id: dict[str, list[Example]]
    k: int = max(DEMOS)

    def __call__(self, example: Example) -> list[Example]:
        return self.by_id[example.id]


def varied_examples(files: list[Path], tokenizer, context: int, n: int, seed: int) -> tuple[list[TrainingExample], bool]:
    """Each example's prompt, built by the tool's own `PromptRecipe`, with a seeded number of
    demonstrations; the farthest demos are dropped until it fits `context`."""
    pool = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                pool.append(Example(row["id"], row["input"], (row["target"],)))
    chat = tokenizer.chat_template is not None  # chat_template: auto
    fmt = PromptFormat(PromptConfig(), chat=chat)
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(n, len(pool)))
    drawn = {}
    for example in chosen:
        count = rng.choice(DEMOS)
        drawn[example.id] = rng.sample([d for d in pool if d.id != example.id], count)
    recipe = PromptRecipe(fmt, demos=DrawnDemos(drawn))
    examples = []
    for example in chosen:
        for kept in range(len(drawn[example.id]), -1, -1):
            candidate = TrainingExample(example.id, recipe.build(example, max_demos=kept), fmt.answer(example))
            if kept == 0 or len(training_dataset(tokenizer, [candidate], chat)["input_ids"][0]) <= context:
                break
        examples.append(candidate)
    return examples, chat


class Clock(TrainerCallback):
    """Wall time from the start of training to the end of the epoch (before any checkpoint is written)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started


class Counting:
    """Wraps a collator; counts padded positions and the positions the output head is given."""

    def __init__(self, collate, supervised_head: bool):
        self.collate, self.supervised_head = collate, supervised_head
        self.padded = self.head = 0

    def __call__(self, rows):
        batch = self.collate(rows)
        rows_, width = batch["input_ids"].shape
        self.padded += rows_ * width
        if self.supervised_head:
            self.head += rows_ * int((batch["labels"][:, 1:] != -100).any(dim=0).sum())
        else:
            self.head += rows_ * width
        return batch


def naive_collate(pad: int):
    """Right padding to the batch's longest row; labels = input_ids (the whole sequence), padding -100."""

    def collate(rows):
        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
            mask[i, : len(row["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    return collate


def train_side(side: str, path: str, dataset, tokenizer, args, out: Path) -> dict:
    clock = Clock()
    if side == "naive":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collate = Counting(naive_collate(pad), supervised_head=False)
        training = TrainingArguments(
            output_dir=str(out), seed=args.seed, data_seed=args.seed, learning_rate=args.lr, num_train_epochs=1,
            per_device_train_batch_size=args.batch_size, lr_scheduler_type="linear", save_strategy="no",
            logging_strategy="epoch", report_to="none", use_cpu=True, disable_tqdm=True,
        )
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if args.kind == "lora":
            model = get_peft_model(model, _lora_config(FineTuneArm(kind="lora")))
        trainer = Trainer(model=model, args=training, train_dataset=dataset.select_columns(["input_ids"]),
                          data_collator=collate, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # with tqdm off, Trainer would print every log dict
    else:
        base = ModelConfig(path=path, device="cpu")
        arm = FineTuneArm(kind=args.kind, learning_rates=[args.lr], epochs=1, batch_size=args.batch_size)
        trainer = build_trainer(base, arm, args.lr, dataset, tokenizer, out, args.seed, [clock])
        trainer.supervised_logits_only = side == "ours"
        collate = Counting(trainer.data_collator, supervised_head=side == "ours")
        trainer.data_collator = collate
    trainer.train()
    return {"seconds": clock.seconds, "padded": collate.padded, "head": collate.head}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), testbed, or a model directory")
    parser.add_argument("--examples", type=int, default=96, help="training examples (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kind", choices=("full", "lora"), default="full")
    parser.add_argument("--lr", type=float, help="default 1e-5 (full), 1e-4 (lora)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default="naive,grouped,ours", help="comma-separated, run in this order")
    parser.add_argument("--smoke", action="store_true", help="testbed model, 24 examples; results.json untouched")
    parser.add_argument("--no-write", action="store_true", help="leave benchmarks/results.json untouched")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.examples = "testbed", min(args.examples, 24)

    args.lr = args.lr or {"full": 1e-5, "lora": 1e-4}[args.kind]
    torch.set_num_threads(args.threads)
    path = str(model_dir(args.model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoModelForCausalLM.from_pretrained(path).config
    files = TASKS.get(args.model, TASKS["smollm2"])
    examples, chat = varied_examples(files, tokenizer, config.max_position_embeddings, args.examples, args.seed)
    dataset = training_dataset(tokenizer, examples, chat)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    real = sum(lengths)
    supervised = sum(sum(label != -100 for label in labels) for labels in dataset["labels"])

    model = AutoModelForCausalLM.from_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    body = params - head
    adapter = 0
    if args.kind == "lora":
        adapter = sum(p.numel() for p in get_peft_model(model, _lora_config(FineTuneArm(kind="lora"))).parameters()
                      if p.requires_grad)
    del model

    peak = matmul_gflops()
    sides = args.sides.split(",")
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for side in sides:
            runs[side] = train_side(side, path, dataset, tokenizer, args, Path(scratch) / side)
    peak = max(peak, matmul_gflops())

    print(f"model {args.model} ({params / 1e6:.1f}M params: head {head / 1e6:.1f}M, body {body / 1e6:.1f}M), "
          f"chat template {chat}, {args.kind} fine-tuning ({adapter} adapter params), 1 epoch, "
          f"batch {args.batch_size}, lr {args.lr:g}")
    print(f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{len(examples)} examples, tokens min/median/max {min(lengths)}/{statistics.median(lengths):g}/"
          f"{max(lengths)}, real {real}, supervised {supervised}")
    # Full: 6 per weight per token. LoRA: the frozen weights cost the forward (2) and the input
    # gradient (2), not the weight gradient; the adapter costs 6 per weight (its matmuls' share).
    frozen = 6 if args.kind == "full" else 4
    useful = frozen * body * real + frozen * head * supervised + 6 * adapter * real
    print(f"matmul_peak_gflops {peak:.1f} GFLOP/s (1.00)")
    figures: dict = {"matmul_peak_gflops": round(peak, 1), "ft_threads": torch.get_num_threads()}
    reference = runs.get("naive")
    for side, run in runs.items():
        rate = real / run["seconds"]
        ratio = reference["seconds"] / run["seconds"] if reference else 1.0
        executed = frozen * body * run["padded"] + frozen * head * run["head"] + 6 * adapter * run["padded"]
        print(f"{side}_seconds {run['seconds']:.1f} s ({ratio:.2f})")
        print(f"{side}_tokens_per_second {rate:.1f} real tok/s ({ratio:.2f})")
        print(f"{side}_padded_tokens {run['padded']} tokens ({run['padded'] / real:.2f})")
        print(f"{side}_padded_tokens_per_second {run['padded'] / run['seconds']:.1f} tok/s "
              f"({run['padded'] / real:.2f} of real)")
        useful_fraction = useful / run["seconds"] / 1e9 / peak
        executed_fraction = executed / run["seconds"] / 1e9 / peak
        print(f"{side}_useful_fraction_of_peak {useful_fraction:.3f} of peak ({useful / run['seconds'] / 1e9:.1f} GFLOP/s)")
        print(f"{side}_executed_fraction_of_peak {executed_fraction:.3f} of peak "
              f"({executed / run['seconds'] / 1e9:.1f} GFLOP/s)")
        if side == "ours":
            figures.update(ft_tokens_per_second=round(rate, 1), ft_fraction_of_matmul_peak=round(useful_fraction, 3),
                           ft_executed_fraction_of_matmul_peak=round(executed_fraction, 3))
        if side == "naive":
            figures["ft_naive_tokens_per_second"] = round(rate, 1)
    if reference and "ours" in runs:
        speedup = reference["seconds"] / runs["ours"]["seconds"]
        figures["ft_speedup_vs_naive"] = round(speedup, 2)
        print(f"ft_speedup_vs_naive {speedup:.2f} x (1.00)")
        if "grouped" in runs:
            print(f"grouping_speedup {reference['seconds'] / runs['grouped']['seconds']:.2f} x (naive/grouped)")
            print(f"supervised_head_speedup {runs['grouped']['seconds'] / runs['ours']['seconds']:.2f} x (grouped/ours)")
    if args.smoke or args.no_write:
        return
    if args.model != "smollm2" or args.kind != "full" or set(sides) != {"naive", "grouped", "ours"}:
        print("results.json: written only for --model smollm2, full, all sides", file=sys.stderr)
        return
    update_results(figures)


if __name__ == "__main__":
    main()
