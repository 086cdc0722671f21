"""Training examples as the Trainer sees them: tokens, labels, and batches.

Tokenise each example as the model will see it at inference: `encode_prompt(prompt)` (the one
function the HF backend uses), then the answer tokenised on its own, then EOS. Labels are -100 on
the prompt, so the loss covers the answer and EOS only; TRL's collator pads each batch to its own
longest sequence and pads labels with -100 (not with the pad id), so EOS stays supervised even when
pad == eos. Batches are random but of similar lengths (`LengthGroupedSampler`), and the output head
runs only where the next token is supervised (`SupervisedLogitsTrainer`): on prompts of varied
length (SmolLM2-135M full fine-tuning, 46-275 tokens, batch 8, one CPU thread) that trains 2.4x the
real tokens per second of random batches with every position through the head (grouping 2.0x, as
padding falls from 2.02x to 1.09x the real tokens; the head 1.2x; benchmarks/bench_training.py).
Neither changes what an example contributes (its loss and gradient are the same in any batch); the
grouping changes which examples share a step, so it is part of the job description (`BATCHING`).
Packing several examples into one row is not used: without a varlen attention kernel (flash
attention) it relies on a block-diagonal mask derived from position ids, which costs attention over
the whole packed row, and changes the number of optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from datasets import Dataset
from transformers import Trainer

from tuneorprompt.backends.hf import HFBackend, encode_prompt
from tuneorprompt.records import Prompt

class TrainingDataError(ValueError):
    """A training example that cannot be trained on; the message names its id."""

@dataclass(frozen=True)
class TrainingExample:
    id: str
    prompt: Prompt  # the exact inference prompt, e.g. "Question: ...\nAnswer:", or a chat conversation
    answer: str  # the completion to learn, e.g. " Paris" (or "Paris" after a chat template's assistant

def tokenize_example(tokenizer, example: TrainingExample, chat_template: bool) -> dict[str, list[int]]:
    """input_ids = inference prompt ids + answer ids + EOS; labels = -100 on the prompt, the ids after.

    Boundary: the prompt part is exactly `encode_prompt` (what generation is given, BOS and chat
    template included) and the answer is tokenised on its own without special tokens, which is what
    the model must then generate. Tokenising prompt + answer as one string (as TRL's prompt-completion
    path does) can merge a token across the boundary and so change the training prompt; here the two
    parts cannot interact. A leading space belongs to the answer (" Paris" -> "ĠParis" on byte-level
    BPE); SentencePiece-style tokenizers mark a word start the same way with or without it ("Paris" and
    " Paris" -> "▁Paris"). With a chat template the answer follows the rendered generation prompt (the
    assistant's header), without a leading space (`PromptFormat.answer`), and the tokenizer's EOS (an
    instruct model's end-of-turn token, e.g. <|im_end|>) closes it: the reply and its end of turn are
    all that is supervised, and the prompt ids are the ones inference gives the model.

    Nothing is ever truncated (`_check_fits` rejects what does not fit the context), so with a
    non-empty prompt and answer every example keeps its answer and EOS as supervised tokens.
    """
    if tokenizer.eos_token_id is None:
        raise TrainingDataError(
            f"tokenizer {tokenizer.name_or_path!r} has no EOS token: a fine-tuned model could not learn to stop"
        )
    prompt_ids = encode_prompt(tokenizer, example.prompt, chat_template)
    if not prompt_ids:
        raise TrainingDataError(f"training example {example.id!r}: the prompt encodes to no tokens")
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise TrainingDataError(
            f"training example {example.id!r}: the answer {example.answer!r} encodes to no tokens, nothing to learn"
        )
    completion = answer_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + completion, "labels": [-100] * len(prompt_ids) + completion}

def training_dataset(tokenizer, examples: Sequence[TrainingExample], chat_template: bool) -> Dataset:
    """The pre-tokenised dataset the Trainer trains on (columns input_ids, labels)."""
    rows = [tokenize_example(tokenizer, example, chat_template) for example in examples]
    return Dataset.from_dict({key: [row[key] for row in rows] for key in ("input_ids", "labels")})

def check_fits(dataset: Dataset, examples: Sequence[TrainingExample], backend: HFBackend) -> None:
    """Every sequence fits the context, whole (nothing is truncated, so no example loses its answer),
    and the EOS it ends with is one generation stops at."""
    eos = backend.model.generation_config.eos_token_id
    stops = set(eos) if isinstance(eos, list) else {eos}
    if backend.tokenizer.eos_token_id not in stops:
        raise TrainingDataError(
            f"the tokenizer's EOS id {backend.tokenizer.eos_token_id} is not among the ids generation stops at "
            f"({sorted(stops)}): a model trained to end its answers with it would not stop"
        )
    for example, ids in zip(examples, dataset["input_ids"]):
        if len(ids) > backend.context_length:
            raise TrainingDataError(
                f"training example {example.id!r}: prompt + answer + EOS is {len(ids)} tokens, more than the "
                f"model's context of {backend.context_length}"
            )

# How examples are put into batches and which positions reach the output head. Part of the job
# description (`describe_job`): a fine-tune stored under another recipe is not re-used for this one.
BATCHING = {"order": "length-grouped", "group_batches": 50, "logits": "supervised"}

class LengthGroupedSampler(torch.utils.data.Sampler):
    """Random batches of similar lengths, so that padding to a batch's longest sequence costs little.

    Each epoch: shuffle, cut into groups of `group_batches` batches, sort each group by length, cut it
    into batches, then shuffle the order of the batches (the one batch short of `batch_size`, if any,
    stays last so the loader cuts every other batch where this sampler did). Unlike transformers'
    LengthGroupedSampler (groups of min(n / (4 x batch), 50) batches, each group's batches in descending
    length), a pool of tens of examples still groups well and batch order carries no length trend.
    Draws from torch's global RNG, as Trainer's random sampler does, so a resumed run (Trainer restores
    the RNG state) draws the same batches as an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, group_batches: int = BATCHING["group_batches"]):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group = batch_size * group_batches

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.lengths)).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.group):
            # Ties keep their random order; within a group, equal lengths mix freely.
            group = sorted(order[start : start + self.group], key=self.lengths.__getitem__)
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        short = [batch for batch in batches if len(batch) < self.batch_size]
        full = [batch for batch in batches if len(batch) == self.batch_size]
        return [full[i] for i in torch.randperm(len(full)).tolist()] + short

    def __iter__(self) -> Iterator[int]:
        return iter([index for batch in self.batches() for index in batch])

class SupervisedLogitsTrainer(Trainer):
    """Trainer whose loss computes the output head only where the next token is supervised.

    The loss is the answer tokens' mean cross-entropy, as before; the logits of prompt and padding
    positions never reach it, and over a 32k-150k vocabulary they are a large share of the step (the
    head's matmul, and a batch x length x vocab float tensor through log-softmax and back). The model is
    asked for the logits of the positions (columns of the batch) where any row's next label is
    supervised, through transformers' `logits_to_keep`; a row's other columns in that set are masked by
    their -100 labels. Normalised exactly as transformers' causal-LM loss: summed cross-entropy over
    `num_items_in_batch` (the supervised tokens of the whole accumulated batch) when Trainer gives it.
    """

    supervised_logits_only = True  # False: the stock loss over every position (benchmark ablation)
    step_loss: torch.Tensor | None = None  # the last optimizer step's loss

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler([len(ids) for ids in dataset["input_ids"]], self.args.train_batch_size)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = loss  # detached; fine-tuning's progress shows it (`finetune._TrainingProgress`)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.supervised_logits_only:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        targets = inputs.pop("labels")[:, 1:]  # position t predicts token t + 1
        keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
        outputs = model(**inputs, logits_to_keep=keep)
        picked = targets[:, keep]
        total = torch.nn.functional.cross_entropy(
            outputs.logits.float().flatten(0, 1), picked.flatten(), ignore_index=-100, reduction="sum"
        )
        if num_items_in_batch is None:
            loss = total / (picked != -100).sum()
        else:
            loss = total / num_items_in_batch
            # As Trainer.compute_loss: each process divided by the token count of all processes, and the
            # gradients are averaged over processes.
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss
