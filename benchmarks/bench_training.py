"""Training throughput: tuneorprompt's fine-tuning path against the quick-notebook way, same model and data.

    python benchmarks/bench_training.py --model tuneorprompt/testbed/model \
        --data tuneorprompt/testbed/tasks/capitals/train.jsonl --threads 1

- ours: `tuneorprompt.finetune.build_trainer` as `finetune` runs it (transformers' Trainer on the
  inference prompt ids + answer + EOS, loss on the answer only, each batch padded to its own longest
  sequence, a checkpoint per epoch), without the dev scoring between epochs;
- naive: what a notebook does: prompt + answer + EOS joined and tokenised as one string, every example
  padded to the longest in the whole set, labels = input_ids (the whole sequence, padding included),
  transformers' Trainer with the default collator, no checkpoints.

Both train the same model from the same weights for the same epochs and batch size, so they process
the same real (non-pad) tokens; the figure compared is real tokens per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from tuneorprompt.config import FineTuneArm, ModelConfig
from tuneorprompt.finetune import TrainingExample, build_trainer, training_dataset

TEMPLATE = "Question: {input}\nAnswer:"  # PromptConfig's default template, answer_prefix " "
TESTBED = Path(__file__).resolve().parents[1] / "tuneorprompt" / "testbed"


def load_examples(path: Path | None, n_synthetic: int, seed: int) -> list[TrainingExample]:
    if path is not None:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [TrainingExample(row["id"], TEMPLATE.format(input=row["input"]), " " + row["target"]) for row in rows]
    # Synthetic Q/A of varied length, as real questions are.
    rng = random.Random(seed)
    words = "what which city river country capital language largest oldest north south of the is in".split()
    examples = []
    for i in range(n_synthetic):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(4, 24))) + "?"
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        examples.append(TrainingExample(f"syn-{i}", TEMPLATE.format(input=question), " " + answer))
    return examples


def run_ours(model_dir: str, examples, epochs: int, batch_size: int, lr: float, seed: int, out: Path) -> float:
    base = ModelConfig(path=model_dir, device="cpu")
    arm = FineTuneArm(kind="full", learning_rates=[lr], epochs=epochs, batch_size=batch_size)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = training_dataset(tokenizer, examples, chat_template=False)
    trainer = build_trainer(base, arm, lr, dataset, tokenizer, out, seed)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def run_naive(
    model_dir: str, examples, epochs: int, batch_size: int, lr: float, seed: int, out: Path
) -> tuple[float, int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = [e.prompt + e.answer + tokenizer.eos_token for e in examples]
    encoded = tokenizer(texts, padding="longest")  # one global longest: every row has the same length
    rows = {**encoded, "labels": encoded["input_ids"]}
    args = TrainingArguments(
        output_dir=str(out), seed=seed, learning_rate=lr, num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, save_strategy="no", logging_strategy="epoch",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_dict(rows)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, len(texts) * len(encoded["input_ids"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TESTBED / "model"), help="model directory (default: the testbed model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="JSONL with input/target (default: testbed capitals train if built)")
    source.add_argument("--synthetic", type=int, help="N synthetic Q/A of varied length (default 200 without data)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path, alternating; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = args.data
    if data is None and args.synthetic is None and (TESTBED / "tasks" / "capitals" / "train.jsonl").exists():
        data = TESTBED / "tasks" / "capitals" / "train.jsonl"
    examples = load_examples(data, args.synthetic or 200, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    real_per_epoch = sum(len(ids) for ids in training_dataset(tokenizer, examples, chat_template=False)["input_ids"])
    real = real_per_epoch * args.epochs

    # The fastest of a few alternating runs: on a shared machine the slower ones measure the neighbours.
    naive_runs, ours_runs = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            settings = (examples, args.epochs, args.batch_size, args.lr, args.seed)
            seconds, padded_per_epoch = run_naive(args.model, *settings, Path(scratch) / f"naive-{repeat}")
            naive_runs.append(seconds)
            ours_runs.append(run_ours(args.model, *settings, Path(scratch) / f"ours-{repeat}"))
    naive_seconds, ours_seconds = min(naive_runs), min(ours_runs)

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(args.model).parameters())
    print(f"model {args.model} ({params / 1e6:.2f}M params), data {data or f'synthetic x{len(examples)}'}")
    print(f"{len(examples)} examples, {args.epochs} epochs, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, full fine-tuning, fastest of {args.repeats} runs each")
    print(f"real tokens {real} ({real_per_epoch}/epoch); naive pads to {padded_per_epoch}/epoch "
          f"({padded_per_epoch / real_per_epoch:.2f}x)")
    print(f"{'path':<8}{'wall s':>10}{'real tok/s':>14}")
    for name, seconds in (("naive", naive_seconds), ("ours", ours_seconds)):
        print(f"{name:<8}{seconds:>10.2f}{real / seconds:>14.0f}")
    print(f"speed-up {naive_seconds / ours_seconds:.2f}x")


if __name__ == "__main__":
    main()
