"""Fine-tuning arms: LoRA and full supervised fine-tuning of the base model on the training pool.

setup -> train -> select -> write results:
1. Tokenise each example as the model will see it at inference: `encode_prompt(prompt)` (the one
   function the HF backend uses), then the answer tokenised on its own, then EOS. Labels are -100 on
   the prompt, so the loss covers the answer and EOS only; TRL's collator pads each batch to its own
   longest sequence and pads labels with -100 (not with the pad id), so EOS stays supervised even when
   pad == eos. Batches are random but of similar lengths (`_LengthGroupedSampler`), and the output head
   runs only where the next token is supervised (`_SupervisedLogitsTrainer`): on prompts of varied
   length (SmolLM2-135M full fine-tuning, 46-275 tokens, batch 8, one CPU thread) that trains 2.4x the
   real tokens per second of random batches with every position through the head (grouping 2.0x, as
   padding falls from 2.02x to 1.09x the real tokens; the head 1.2x; benchmarks/bench_training.py).
   Neither changes what an example contributes (its loss and gradient are the same in any batch); the
   grouping changes which examples share a step, so it is part of the job description (`BATCHING`).
   Packing several examples into one row is not used: without a varlen attention kernel (flash
   attention) it relies on a block-diagonal mask derived from position ids, which costs attention over
   the whole packed row, and changes the number of optimizer steps.
2. For each learning rate of the grid, transformers' Trainer (PEFT for LoRA) trains `epochs` epochs.
   After every epoch the in-memory model is scored on dev by the caller's `dev_score` and, if it is
   this learning rate's best epoch so far, saved.
3. The best (learning rate, epoch) on dev wins; ties go to the earlier epoch, then the earlier learning
   rate of the grid. It is linked into `out_dir/grid-<key>/model` and loaded through the same loader as
   any model (`load_hf_backend`), so its fingerprint covers the new weights and the test split is read
   by the caller's evaluator alone.

Why transformers' Trainer and not TRL's SFTTrainer: SFTTrainer (TRL 1.16) always computes the loss
through its chunked log-prob kernel, which runs as plain torch ops where there is no Triton (CPU),
and it offers neither of the two savings below; in an earlier measurement on one CPU thread it ran
at 0.72-0.96x the tokens/s of a naive Trainer loop. The loss is the same (mean cross-entropy over
the answer tokens). What this path gains is measured by benchmarks/bench_training.py against that
naive loop (random batches padded to their longest sequence, logits at every position).

Keys and reuse. A learning rate's run depends on the model, the training data, the arm's settings
(all but the grid: epochs shape the schedule), the seed, and how dev is scored (`dev_key`: dev
prompts, decoding, extraction, metric), since that decides which epoch is kept. Those make the job
(`job.json`); the grid only decides which runs are compared. So one `out_dir` serves every grid:
widening the grid trains only the new learning rates, and each grid's selection lives under its own
`grid-<key>/`. The caller names `out_dir` by a content key of the same inputs (see `arms.FineTune`).

Resuming. Everything under `out_dir` is written so that `kill -9` at any moment and the same call
again resume from the last complete epoch and end with the same result (bitwise on CPU: seeds are
fixed, Trainer checkpoints carry the optimizer, scheduler and RNG states):
  job.json                   what is being trained (a different job in the same folder is an error)
  lr-<lr>/state.json         the commit record: an epoch (its dev score, and the Trainer checkpoint
                             written after it) counts only once listed here (written by os.replace)
  lr-<lr>/checkpoint-<step>/ Trainer checkpoints; one not listed in state.json may be half written
                             and is deleted before resuming
  lr-<lr>/epoch-<e>/         the learning rate's best epoch so far (saved under a temporary name, then
                             renamed); kept once the run is finished, its checkpoints are deleted
  grid-<key>/model/          the grid's selected model (hard links to the chosen epoch's files): a
                             PEFT adapter or a transformers model directory
  grid-<key>/result.json     the training cost; once it exists, `finetune` only loads the model

Several GPUs: `accelerate launch` runs this same code in every process; Trainer shards the batches and
saves from the main process, which alone writes the files above. Every process scores dev on its own
replica (greedy decoding, so they agree). Under FSDP or DeepSpeed ZeRO-3 the replica is sharded and
in-training dev generation is not supported.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tuneorprompt.backends import ServeTrained
from tuneorprompt.backends.hf import (
    HFBackend,
    ModelLoadError,
    encode_prompt,
    fingerprint_model,
    forward_parameters,
    load_hf_backend,
    model_load_options,
    uses_chat_template,
)
from tuneorprompt.config import FineTuneArm, ModelConfig
from tuneorprompt.keys import content_key
from tuneorprompt.machine import peak_rss_mb, reset_peak_rss
from tuneorprompt.records import Prompt, TrainingCost
from tuneorprompt.stats import training_flops

logger = logging.getLogger(__name__)

# transformers 5 deprecates `is_gradient_checkpointing`, which PEFT still reads on every forward:
# one FutureWarning per call that says nothing to a tuneorprompt user.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)

# Learning-rate grids searched on dev when the arm gives none. Sized for the small models and small
# training pools this tool is mostly run with (tens to a few thousand examples, 3 epochs at batch 8,
# so tens to hundreds of optimizer steps): LoRA adapters start at zero and need a large rate to move
# in few steps; full fine-tuning moves every weight and needs one about ten times smaller. For 7B+
# models give `learning_rates` explicitly (LoRA ~1e-4 to 3e-4, full ~1e-5 to 3e-5 are usual).
DEFAULT_LEARNING_RATES: dict[str, tuple[float, ...]] = {"lora": (1e-3, 3e-3), "full": (1e-4, 3e-4)}


class TrainingDataError(ValueError):
    """A training example that cannot be trained on; the message names its id."""


class FineTuneStateError(ValueError):
    """An output folder that holds another job's training state."""


@dataclass(frozen=True)
class TrainingExample:
    id: str
    prompt: Prompt  # the exact inference prompt, e.g. "Question: ...\nAnswer:", or a chat conversation
    answer: str  # the completion to learn, e.g. " Paris" (or "Paris" after a chat template's assistant
    # header); EOS (an instruct model's end-of-turn token) is appended here, not by the caller


@dataclass
class FineTuned:
    backend: HFBackend  # the selected model, eval mode; its fingerprint covers the new weights
    model_dir: Path  # PEFT adapter (lora) or transformers model directory (full)
    cost: TrainingCost


# ---- tokenisation ---------------------------------------------------------------------------------------


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


def _check_fits(dataset: Dataset, examples: Sequence[TrainingExample], backend: HFBackend) -> None:
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


# ---- the model as a backend, during training -----------------------------------------------------------


@contextmanager
def _served(model, tokenizer, base: ModelConfig, fingerprint: str) -> Iterator[HFBackend]:
    """`model` behind the HF backend for a while: eval mode and greedy decoding inside; back in train
    mode with its own generation config after (a saved full model keeps the config it shipped with).

    `tokenizer` must not be the training one: the backend switches it to left padding.
    """
    shipped = model.generation_config
    try:
        yield HFBackend(
            model, tokenizer, fingerprint=fingerprint, batch_size=base.batch_size, chat_template=base.chat_template
        )
    finally:
        model.generation_config = shipped
        model.train()


def _weights_fingerprint(model, base_fingerprint: str) -> str:
    """Identifies in-memory weights for the generation cache: the base files plus the bytes of every
    trainable tensor (the adapter for LoRA, all weights for full fine-tuning)."""
    digest = hashlib.sha256(base_fingerprint.encode())
    for name, param in model.named_parameters():
        if param.requires_grad:
            digest.update(name.encode() + b"\0")
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy())
    return "trained-" + digest.hexdigest()


# ---- files that survive kill -9 -------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    """Write to a temporary file, fsync, rename over `path`: a reader sees the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@dataclass
class _Run:
    """One learning rate: its folder and the epochs committed to its state.json."""

    directory: Path
    learning_rate: float
    epochs: list[dict] = field(default_factory=list)  # one record per committed epoch, in order
    params: dict = field(default_factory=dict)  # {"trainable": n, "total": n}

    @classmethod
    def open(cls, directory: Path, learning_rate: float) -> "_Run":
        state = _read_json(directory / "state.json") or {}
        return cls(directory, learning_rate, state.get("epochs", []), state.get("params", {}))

    def finished(self, epochs: int) -> bool:
        return len(self.epochs) >= epochs

    def best(self) -> dict:
        """The committed epoch with the highest dev score; the earliest among equals (it cost less)."""
        return max(self.epochs, key=lambda record: (record["dev_score"], -record["epoch"]))

    def improves(self, epoch: int, score: float) -> bool:
        earlier = [record["dev_score"] for record in self.epochs if record["epoch"] < epoch]
        return not earlier or score > max(earlier)

    def epoch_dir(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch}"

    def resume_checkpoint(self) -> str | None:
        return str(self.directory / self.epochs[-1]["checkpoint"]) if self.epochs else None

    def commit(self, record: dict, write: bool) -> None:
        """Every process keeps the record; the main process (`write`) also writes it."""
        self.epochs = [r for r in self.epochs if r["epoch"] < record["epoch"]] + [record]
        if not write:
            return
        state = {"learning_rate": self.learning_rate, "params": self.params, "epochs": self.epochs}
        _write_json(self.directory / "state.json", state)
        keep = self.epoch_dir(self.best()["epoch"])
        for stale in self.directory.glob("epoch-*"):
            if stale != keep:
                shutil.rmtree(stale)

    def discard_uncommitted(self) -> None:
        """Before (re)starting: drop what a killed run left half done or never committed."""
        committed = {record["checkpoint"] for record in self.epochs}
        keep = {f"epoch-{self.best()['epoch']}"} if self.epochs else set()
        for path in self.directory.glob("*"):
            stale_checkpoint = path.name.startswith("checkpoint-") and path.name not in committed
            stale_epoch = path.name.startswith("epoch-") and path.name not in keep
            if stale_checkpoint or stale_epoch or path.name.endswith(".tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---- training one learning rate -------------------------------------------------------------------------


class _EpochSelection(TrainerCallback):
    """After every epoch: score dev, save the model if it is the run's best epoch so far, and commit
    the epoch once Trainer has written its checkpoint.

    Trainer's order at the end of an epoch is on_epoch_end -> log -> checkpoint -> on_save, so the
    commit in on_save happens only after the checkpoint is complete: a kill before it replays the
    epoch from the previous checkpoint, with the same result.
    """

    def __init__(
        self, run: _Run, dev_score: Callable[[HFBackend], float], tokenizer, base: ModelConfig, base_fingerprint: str
    ):
        self.run = run
        self.dev_score = dev_score
        self.tokenizer = tokenizer
        self.base = base
        self.base_fingerprint = base_fingerprint
        self.trainer: Trainer | None = None  # set once the trainer exists (it takes this callback)
        self.clock = time.perf_counter()
        self.pending: dict = {}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch)
        started = time.perf_counter()
        fingerprint = _weights_fingerprint(model, self.base_fingerprint)
        # fork_rng: whatever dev scoring draws, training continues from the same RNG state.
        with _served(model, self.tokenizer, self.base, fingerprint) as backend, torch.no_grad():
            with torch.random.fork_rng():
                score = float(self.dev_score(backend))
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"dev_score returned {score}, expected an accuracy in [0, 1]")
        if self.run.improves(epoch, score):
            self._save(args, epoch)
        self.pending = {"epoch": epoch, "dev_score": score, "dev_seconds": time.perf_counter() - started}
        logger.info("lr %g epoch %d: dev %.4f", self.run.learning_rate, epoch, score)

    def _save(self, args, epoch: int) -> None:
        temporary = self.run.directory / f"epoch-{epoch}.tmp"
        self.trainer.save_model(str(temporary))  # every process: sharded setups gather here
        if args.should_save:
            (temporary / "training_args.bin").unlink(missing_ok=True)  # Trainer's pickle, not part of the model
            _sort_target_modules(temporary / "adapter_config.json")
            # Renamed only once complete. No epoch dir of an uncommitted epoch survives a restart
            # (discard_uncommitted), so the name is free.
            os.replace(temporary, self.run.epoch_dir(epoch))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs and "loss" in logs:
            self.pending["train_loss"] = logs["loss"]  # mean over the epoch's optimizer steps

    def on_save(self, args, state, control, **kwargs):
        now = time.perf_counter()
        record = {
            **self.pending,
            "checkpoint": f"checkpoint-{state.global_step}",
            # since the previous commit (or this process's start on the run): training, dev scoring,
            # saving. Work lost to a kill and redone is counted once.
            "seconds": now - self.clock,
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        }
        self.run.commit(record, write=args.should_save)
        self.clock, self.pending = now, {}


def _sort_target_modules(adapter_config: Path) -> None:
    """PEFT writes `target_modules` from a set, in an order that changes with each process's string
    hashing; sorted, the same adapter has the same bytes, and so the same fingerprint, every time."""
    if not adapter_config.is_file():  # full fine-tuning saves no adapter
        return
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        _write_json(adapter_config, config)


def _load_model(base: ModelConfig, kind: str):
    """Full fine-tuning keeps float32 master weights (AdamW steps vanish in bf16); LoRA freezes the base
    in its inference dtype and PEFT keeps the adapter in float32."""
    if kind == "full" or base.dtype == "float32":
        dtype = torch.float32
    else:
        dtype = "auto" if base.dtype == "auto" else getattr(torch, base.dtype)
    return AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype, **model_load_options(base))


def _use_cpu(base: ModelConfig) -> bool:
    return base.device == "cpu" or not torch.cuda.is_available()


def _processes(base: ModelConfig) -> PartialState:
    """The processes `accelerate launch` / torchrun started (one without them), as Trainer sees them:
    its TrainingArguments set up the same shared state with the same `cpu` flag."""
    return PartialState(cpu=_use_cpu(base))


def _training_args(
    base: ModelConfig, arm: FineTuneArm, learning_rate: float, directory: Path, seed: int
) -> TrainingArguments:
    use_cpu = _use_cpu(base)
    # Mixed precision on GPU in the dtype inference uses; none on CPU (slow and not what eval runs).
    bf16 = not use_cpu and base.dtype in ("bfloat16", "auto") and torch.cuda.is_bf16_supported()
    fp16 = not use_cpu and base.dtype == "float16"
    return TrainingArguments(
        output_dir=str(directory),
        seed=seed,
        data_seed=seed,
        learning_rate=learning_rate,
        num_train_epochs=arm.epochs,
        per_device_train_batch_size=arm.batch_size,  # per process: under accelerate launch x processes
        lr_scheduler_type="linear",
        save_strategy="epoch",
        save_total_limit=2,  # the last committed checkpoint survives while the next one is written
        logging_strategy="epoch",
        eval_strategy="no",  # dev is scored by generation in _EpochSelection, not by eval loss
        use_cpu=use_cpu,
        bf16=bf16,
        fp16=fp16,
        report_to="none",
        # The experiment shows its own progress; Trainer's tqdm bars and printed log dicts would
        # interleave with it (per-epoch losses are kept by _EpochSelection instead).
        disable_tqdm=True,
    )


# How examples are put into batches and which positions reach the output head. Part of the job
# description (`describe_job`): a fine-tune stored under another recipe is not re-used for this one.
BATCHING = {"order": "length-grouped", "group_batches": 50, "logits": "supervised"}


class _LengthGroupedSampler(torch.utils.data.Sampler):
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


class _SupervisedLogitsTrainer(Trainer):
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

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return _LengthGroupedSampler([len(ids) for ids in dataset["input_ids"]], self.args.train_batch_size)

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


def _lora_config(arm: FineTuneArm) -> LoraConfig:
    return LoraConfig(
        r=arm.lora_r,
        lora_alpha=arm.lora_alpha,
        lora_dropout=arm.lora_dropout,
        target_modules=arm.target_modules,  # "all-linear": every linear layer but the output head
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_trainer(
    base: ModelConfig,
    arm: FineTuneArm,
    learning_rate: float,
    dataset: Dataset,
    tokenizer,
    directory: Path,
    seed: int,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """The Trainer for one learning rate, on a freshly loaded (seeded) copy of the base model."""
    set_seed(seed)  # before the model exists: the LoRA initialisation draws from it
    model = _load_model(base, arm.kind)
    if arm.kind == "lora":
        model = get_peft_model(model, _lora_config(arm))
    # Padded positions are masked out of attention and labels, so which id fills them does not matter.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = _SupervisedLogitsTrainer(
        model=model,
        args=_training_args(base, arm, learning_rate, directory, seed),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=pad),
        processing_class=tokenizer,  # saved beside a full model
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off, Trainer would print every log dict
    # A model whose forward takes no `logits_to_keep` (older remote code) trains with the stock loss.
    trainer.supervised_logits_only = "logits_to_keep" in forward_parameters(model)
    return trainer


def _train_run(
    run: _Run,
    base: ModelConfig,
    arm: FineTuneArm,
    examples: Sequence[TrainingExample],
    dataset: Dataset,
    tokenizers: tuple,
    base_fingerprint: str,
    dev_score: Callable[[HFBackend], float],
    seed: int,
) -> None:
    processes = _processes(base)
    if processes.is_main_process:
        run.directory.mkdir(parents=True, exist_ok=True)
        run.discard_uncommitted()
    processes.wait_for_everyone()
    train_tokenizer, eval_tokenizer = tokenizers
    selection = _EpochSelection(run, dev_score, eval_tokenizer, base, base_fingerprint)
    trainer = build_trainer(base, arm, run.learning_rate, dataset, train_tokenizer, run.directory, seed, [selection])
    selection.trainer = trainer
    with _served(trainer.model, eval_tokenizer, base, base_fingerprint) as probe:
        _check_fits(dataset, examples, probe)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    run.params = {"trainable": trainable, "total": sum(p.numel() for p in trainer.model.parameters())}
    try:
        trainer.train(resume_from_checkpoint=run.resume_checkpoint())
    finally:
        # The callback and the trainer reference each other: free this run's model and optimizer now,
        # before the next learning rate loads its own.
        selection.trainer = None
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- selection and cost ---------------------------------------------------------------------------------


def _select(runs: list[_Run]) -> tuple[_Run, dict]:
    """Best dev score; among equals the earlier epoch (cheaper), then the earlier learning rate."""
    candidates = [(index, run, run.best()) for index, run in enumerate(runs)]
    _, run, record = min(candidates, key=lambda c: (-c[2]["dev_score"], c[2]["epoch"], c[0]))
    return run, record


def _weights_mb(directory: Path) -> float:
    """Size of the saved weights (adapter or full model), without the tokenizer and config files."""
    weights = [path for pattern in ("*.safetensors", "*.bin") for path in directory.glob(pattern)]
    return sum(path.stat().st_size for path in weights) / 2**20


def _cost(kind: str, runs: list[_Run], chosen: _Run, record: dict, dataset: Dataset, model_dir: Path) -> TrainingCost:
    """The cost of the whole search (every learning rate, every epoch), which is what producing the
    arm took; `extra` also gives the selected run alone."""
    tokens_per_epoch = sum(len(ids) for ids in dataset["input_ids"])
    supervised_per_epoch = sum(sum(label != -100 for label in labels) for labels in dataset["labels"])
    epochs_trained = sum(len(run.epochs) for run in runs)
    tokens = tokens_per_epoch * epochs_trained
    records = [r for run in runs for r in run.epochs]
    gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
    trainable, total = chosen.params["trainable"], chosen.params["total"]
    return TrainingCost(
        wall_seconds=sum(r["seconds"] for r in records),
        train_tokens=tokens,
        trainable_params=trainable,
        total_params=total,
        peak_rss_mb=max(r["peak_rss_mb"] for r in records),
        peak_gpu_mb=max(gpu) if gpu else None,
        adapter_mb=_weights_mb(model_dir),
        flops=training_flops(total, tokens, trainable),
        extra={
            "learning_rate": chosen.learning_rate,
            "epoch": record["epoch"],
            "dev_score": record["dev_score"],
            "learning_rates": [run.learning_rate for run in runs],
            "dev_scores": {f"{run.learning_rate:g}": [r["dev_score"] for r in run.epochs] for run in runs},
            "train_loss": {f"{run.learning_rate:g}": [r.get("train_loss") for r in run.epochs] for run in runs},
            "dev_seconds": sum(r["dev_seconds"] for r in records),
            "examples": len(dataset),
            "tokens_per_epoch": tokens_per_epoch,
            "supervised_tokens_per_epoch": supervised_per_epoch,
            "selected_train_tokens": tokens_per_epoch * record["epoch"],
            "selected_flops": training_flops(total, tokens_per_epoch * record["epoch"], trainable),
        },
    )


# ---- the entry point ------------------------------------------------------------------------------------


def check_trainable(base: ModelConfig) -> None:
    """Before any arm runs: the model fine-tuning arms will load exists, is not quantized (its
    weights could not be trained), and has an EOS token a fine-tuned model can learn to stop at."""
    try:
        config = AutoConfig.from_pretrained(base.path, revision=base.revision, trust_remote_code=base.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(
            base.path, revision=base.revision, trust_remote_code=base.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"fine-tuning arms: cannot load the config and tokenizer of {base.path!r}: {error}") from None
    quantization = getattr(config, "quantization_config", None)
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else type(quantization).__name__
        raise TrainingDataError(
            f"fine-tuning arms: model {base.path!r} is quantized ({method}); its weights cannot be trained. "
            "Give an unquantized copy of the model, or drop the lora/full arms"
        )
    if tokenizer.eos_token_id is None:
        raise TrainingDataError(
            f"fine-tuning arms: the tokenizer of {base.path!r} has no EOS token, so a fine-tuned model could not "
            "learn to stop"
        )


def describe_job(
    base: ModelConfig, arm: FineTuneArm, examples: Sequence[TrainingExample], seed: int, dev_key: str
) -> dict:
    """What decides each learning rate's run (see "Keys and reuse" above); a folder holding another
    job's state must not be resumed. The grid is not part of it."""
    data = content_key([[e.id, e.prompt, e.answer] for e in examples])
    model = {key: getattr(base, key) for key in ("path", "revision", "dtype", "chat_template")}
    arm_settings = arm.model_dump(mode="json", exclude={"learning_rates"})
    return {"model": model, "arm": arm_settings, "seed": seed, "data": data, "dev": dev_key, "batching": BATCHING}


def _claim(base: ModelConfig, out_dir: Path, job: dict) -> None:
    found = _read_json(out_dir / "job.json")
    if found is not None and found != job:
        raise FineTuneStateError(
            f"{out_dir} holds another fine-tuning job ({out_dir / 'job.json'} differs from this one: model, arm "
            "settings, seed, training data or dev scoring changed); delete the folder or use another one"
        )
    if found is None and _processes(base).is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "job.json", job)


def finetune(
    base: ModelConfig,
    arm: FineTuneArm,
    train: list[TrainingExample],
    dev_score: Callable[[HFBackend], float],
    out_dir: Path,
    seed: int,
    dev_key: str = "",
    serve: ServeTrained = load_hf_backend,
) -> FineTuned:
    """Fine-tune `base` on `train` (LoRA or full, as `arm` says), choosing the learning rate and epoch
    by `dev_score` (an accuracy in [0, 1] of a backend on the dev split). `dev_key` is a content key
    of everything that decides that score (dev prompts and targets, decoding, extraction, metric).
    Resumes whatever `out_dir` holds of the same job, and re-uses its finished learning rates.
    `serve(model_config, adapter_dir)` serves the selected model for the test split (transformers by
    default); dev scoring during training always uses the in-memory model (`_served`)."""
    out_dir = Path(out_dir)
    if base.chat_template == "auto":  # resolved once, so the job, the training data and dev scoring agree
        tokenizer = AutoTokenizer.from_pretrained(base.path, revision=base.revision, trust_remote_code=base.trust_remote_code)
        base = base.model_copy(update={"chat_template": uses_chat_template("auto", tokenizer)})
    examples = list(train[: arm.max_train_examples]) if arm.max_train_examples else list(train)
    if not examples:
        raise TrainingDataError("no training examples")
    grid = tuple(arm.learning_rates) or DEFAULT_LEARNING_RATES[arm.kind]
    _claim(base, out_dir, describe_job(base, arm, examples, seed, dev_key))
    if base.num_threads is not None:
        torch.set_num_threads(base.num_threads)
    grid_dir = out_dir / f"grid-{content_key(grid)[:12]}"
    if not (grid_dir / "result.json").exists():
        _train_and_select(base, arm, examples, grid, dev_score, out_dir, grid_dir, seed)
    return _load_result(base, arm.kind, [out_dir / f"lr-{lr:g}" for lr in grid], grid_dir, serve)


def _train_and_select(
    base: ModelConfig,
    arm: FineTuneArm,
    examples: list[TrainingExample],
    grid: tuple[float, ...],
    dev_score: Callable[[HFBackend], float],
    out_dir: Path,
    grid_dir: Path,
    seed: int,
) -> None:
    base_fingerprint = fingerprint_model(base.path, base.revision)
    # Two instances: the dev-scoring backend sets a pad token and left padding on its own; the trainer
    # saves its, untouched, beside a full model.
    tokenizers = tuple(
        AutoTokenizer.from_pretrained(base.path, revision=base.revision, trust_remote_code=base.trust_remote_code)
        for _ in range(2)
    )
    dataset = training_dataset(tokenizers[0], examples, base.chat_template)
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    runs = [_Run.open(out_dir / f"lr-{lr:g}", lr) for lr in grid]
    for run in runs:
        if not run.finished(arm.epochs):
            _train_run(run, base, arm, examples, dataset, tokenizers, base_fingerprint, dev_score, seed)
    processes = _processes(base)
    if processes.is_main_process:
        chosen, record = _select(runs)
        model_dir = grid_dir / "model"
        if not model_dir.exists():  # else: linked there by a run killed before writing result.json
            _link_tree(chosen.epoch_dir(record["epoch"]), model_dir)
        cost = _cost(arm.kind, runs, chosen, record, dataset, model_dir)
        _write_json(grid_dir / "result.json", {"cost": asdict(cost)})
    processes.wait_for_everyone()


def _link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of `source` made of hard links (no second copy of the weights on disk),
    built under a temporary name and renamed once complete. The epoch stays in its run, where
    another grid's selection may pick it too."""
    temporary = target.with_name(target.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    shutil.copytree(source, temporary, copy_function=os.link)
    os.replace(temporary, target)


def _load_result(
    base: ModelConfig, kind: str, grid_runs: list[Path], grid_dir: Path, serve: ServeTrained = load_hf_backend
) -> FineTuned:
    if _processes(base).is_main_process:
        # The grid's runs are finished: their Trainer checkpoints (optimizer state, the bulk of the disk)
        # are never resumed. Each run's state.json and best epoch stay for other grids.
        for run in grid_runs:
            for checkpoint in run.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
    cost = TrainingCost(**_read_json(grid_dir / "result.json")["cost"])
    model_dir = grid_dir / "model"
    if kind == "lora":
        backend = serve(base, model_dir)
    else:
        backend = serve(base.model_copy(update={"path": str(model_dir), "revision": None}), None)
    return FineTuned(backend, model_dir, cost)
