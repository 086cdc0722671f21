"""Fine-tuning arms: LoRA and full supervised fine-tuning of the base model on the training pool.

The recipe, as `finetune` below runs it:
1. Claim the job's folder (`describe_job`): a folder holding another job's state is never resumed.
2. For each learning rate of the grid, transformers' Trainer (PEFT for LoRA) trains `epochs` epochs on
   the tokenised examples (`training_data.py`: prompt tokens exactly as inference sees them, loss on
   the answer and EOS only, length-grouped batches). After every epoch the in-memory model is scored
   on dev by the caller's `dev_score` and, if it is this learning rate's best epoch so far, saved
   (`_EpochSelection`); each epoch is committed only once its checkpoint is complete
   (`training_state.py`), so `kill -9` and the same call resume bit for bit.
3. The best (learning rate, epoch) on dev wins; ties go to the earlier epoch, then the earlier learning
   rate of the grid. It is linked into `out_dir/grid-<key>/model` and loaded through the same loader as
   any model (`load_hf_backend`), so its fingerprint covers the new weights and the test split is read
   by the caller's evaluator alone.

Why transformers' Trainer and not TRL's SFTTrainer: SFTTrainer (TRL 1.16) always computes the loss
through its chunked log-prob kernel, which runs as plain torch ops where there is no Triton (CPU),
and it offers neither of the two savings in `training_data.py`; in an earlier measurement on one CPU
thread it ran at 0.72-0.96x the tokens/s of a naive Trainer loop. The loss is the same (mean
cross-entropy over the answer tokens). What this path gains is measured by
benchmarks/bench_training.py against that naive loop (random batches padded to their longest
sequence, logits at every position).

Keys and reuse. A learning rate's run depends on the model, the training data, the arm's settings
(all but the grid: epochs shape the schedule), the seed, and how dev is scored (`dev_key`: dev
prompts, decoding, extraction, metric), since that decides which epoch is kept. Those make the job
(`job.json`); the grid only decides which runs are compared. So one `out_dir` serves every grid:
widening the grid trains only the new learning rates, and each grid's selection lives under its own
`grid-<key>/`. The caller names `out_dir` by a content key of the same inputs (see `arms.FineTune`).

Several GPUs: `accelerate launch` runs this same code in every process; Trainer shards the batches and
saves from the main process, which alone writes the job's files. Every process scores dev on its own
replica (greedy decoding, so they agree). Under FSDP or DeepSpeed ZeRO-3 the replica is sharded and
in-training dev generation is not supported.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tuneorprompt.backends.hf import HFBackend, ModelLoadError, forward_parameters, load_hf_backend, model_load_options
from tuneorprompt.config import FineTuneArm, ModelConfig
from tuneorprompt.evaluate import Progress
from tuneorprompt.keys import grid_key, trained_weights_fingerprint, training_data_key
from tuneorprompt.machine import check_load, peak_rss_mb, reset_peak_rss, use_threads
from tuneorprompt.model import LocalWeights, as_local_weights
from tuneorprompt.progress import long_step
from tuneorprompt.records import TrainingCost
from tuneorprompt.stats import training_flops
from tuneorprompt.training_data import (
    BATCHING,
    SupervisedLogitsTrainer,
    TrainingDataError,
    TrainingExample,
    check_fits,
    training_dataset,
)
from tuneorprompt.training_state import FineTuneStateError, TrainingRun, link_tree, read_json, write_json

logger = logging.getLogger(__name__)



# Learning-rate grids searched on dev when the arm gives none. Sized for the small models and small
# training pools this tool is mostly run with (tens to a few thousand examples, 3 epochs at batch 8,
# so tens to hundreds of optimizer steps): LoRA adapters start at zero and need a large rate to move
# in few steps; full fine-tuning moves every weight and needs one about ten times smaller. For 7B+
# models give `learning_rates` explicitly (LoRA ~1e-4 to 3e-4, full ~1e-5 to 3e-5 are usual).
DEFAULT_LEARNING_RATES: dict[str, tuple[float, ...]] = {"lora": (1e-3, 3e-3), "full": (1e-4, 3e-4)}


@dataclass
class FineTuned:
    backend: HFBackend  # the selected model, eval mode; its fingerprint covers the new weights
    model_dir: Path  # PEFT adapter (lora) or transformers model directory (full)
    cost: TrainingCost


def finetune(
    base: LocalWeights | ModelConfig,
    arm: FineTuneArm,
    train: list[TrainingExample],
    dev_score: Callable[[HFBackend], float],
    out_dir: Path,
    seed: int,
    dev_key: str = "",
    progress: Progress | None = None,
    recipe: dict | None = None,
) -> FineTuned:
    """Fine-tune `base` (the run's resolved local weights; a `ModelConfig` is resolved here) on `train`
    (LoRA or full, as `arm` says), choosing the learning rate and epoch by `dev_score` (an accuracy in
    [0, 1] of a backend on the dev split). `dev_key` is a content key of everything that decides that
    score (dev prompts and targets, decoding, extraction, metric). Resumes whatever `out_dir` holds of
    the same job, and re-uses its finished learning rates. The selected model is served by
    transformers for the test split; dev scoring during training uses the in-memory model (`_served`).
    `progress` shows each learning rate's optimizer steps (with epoch, loss and learning rate) and the
    model loads. `recipe`: a chain's searched prompt, named in the job (`describe_job`)."""
    base = as_local_weights(base)
    out_dir = Path(out_dir)
    examples = list(train[: arm.max_train_examples]) if arm.max_train_examples else list(train)
    if not examples:
        raise TrainingDataError("no training examples")
    grid = tuple(arm.learning_rates) or DEFAULT_LEARNING_RATES[arm.kind]
    _claim(base, out_dir, describe_job(base, arm, examples, seed, dev_key, recipe))
    use_threads(base.spec.num_threads)
    grid_dir = out_dir / f"grid-{grid_key(grid)[:12]}"
    if not (grid_dir / "result.json").exists():
        _train_and_select(base, arm, examples, grid, dev_score, out_dir, grid_dir, seed, progress)
    return _load_result(base, arm.kind, [out_dir / f"lr-{lr:g}" for lr in grid], grid_dir, progress)


def check_trainable(base: LocalWeights) -> None:
    """Before any arm runs: the model fine-tuning arms will load is not quantized (its weights could
    not be trained), and has an EOS token a fine-tuned model can learn to stop at."""
    name = base.spec.path
    try:
        config = json.loads((base.directory / "config.json").read_text(encoding="utf-8"))
        tokenizer = _tokenizer(base)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"fine-tuning arms: cannot load the config and tokenizer of {name!r}: {error}") from None
    quantization = config.get("quantization_config")
    if quantization:
        raise TrainingDataError(
            f"fine-tuning arms: model {name!r} is quantized ({quantization.get('quant_method')}); its weights cannot "
            "be trained. Give an unquantized copy of the model, or drop the lora/full arms"
        )
    if tokenizer.eos_token_id is None:
        raise TrainingDataError(
            f"fine-tuning arms: the tokenizer of {name!r} has no EOS token, so a fine-tuned model could not "
            "learn to stop"
        )


def _tokenizer(base: LocalWeights):
    return AutoTokenizer.from_pretrained(str(base.directory), trust_remote_code=base.spec.trust_remote_code)


def describe_job(
    base: LocalWeights, arm: FineTuneArm, examples: Sequence[TrainingExample], seed: int, dev_key: str,
    recipe: dict | None = None,
) -> dict:
    """What decides each learning rate's run (see "Keys and reuse" above); a folder holding another
    job's state must not be resumed. The grid is not part of it. The model is its fingerprint as
    served here (files, dtype, device type, chat-template use), not its path: a model copied to
    another folder, or a checkout moved, re-uses its fine-tunes. A chain's searched prompt (`recipe`) is
    in the training prompts and so in the data key; it is named too, for whoever reads job.json. The
    search settings are left out when unset, so a plain arm's job is what it was before chains, and
    `search_again` always: it happens after training, so p -> w -> p trains the job p -> w trains."""
    data = training_data_key(examples)
    unset = {"search_again"} | ({"prompt_search"} if arm.prompt_search is None else set())
    arm_settings = arm.model_dump(mode="json", exclude={"learning_rates", *unset})
    job = {"model": base.fingerprint, "arm": arm_settings, "seed": seed, "data": data, "dev": dev_key,
           "batching": BATCHING}
    return job | ({"searched_prompt": recipe} if recipe is not None else {})


def _claim(base: LocalWeights, out_dir: Path, job: dict) -> None:
    found = read_json(out_dir / "job.json")
    if found is not None and found != job:
        raise FineTuneStateError(
            f"{out_dir} holds another fine-tuning job ({out_dir / 'job.json'} differs from this one: model, arm "
            "settings, seed, training data or dev scoring changed); delete the folder or use another one"
        )
    if found is None and _processes(base).is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "job.json", job)


def _train_and_select(
    base: ModelConfig,
    arm: FineTuneArm,
    examples: list[TrainingExample],
    grid: tuple[float, ...],
    dev_score: Callable[[HFBackend], float],
    out_dir: Path,
    grid_dir: Path,
    seed: int,
    progress: Progress | None,
) -> None:
    # Two instances: the dev-scoring backend sets a pad token and left padding on its own; the trainer
    # saves its, untouched, beside a full model.
    train_tokenizer = _tokenizer(base)
    tokenizers = (train_tokenizer, copy.deepcopy(train_tokenizer))
    dataset = training_dataset(tokenizers[0], examples, base.chat_template)
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    runs = [TrainingRun.open(out_dir / f"lr-{lr:g}", lr) for lr in grid]
    for run in runs:
        if not run.finished(arm.epochs):
            _train_run(run, base, arm, examples, dataset, tokenizers, dev_score, seed, progress)
    processes = _processes(base)
    if processes.is_main_process:
        chosen, record = _select(runs)
        model_dir = grid_dir / "model"
        if not model_dir.exists():  # else: linked there by a run killed before writing result.json
            link_tree(chosen.epoch_dir(record["epoch"]), model_dir)
        cost = _cost(arm.kind, runs, chosen, record, dataset, model_dir)
        write_json(grid_dir / "result.json", {"cost": asdict(cost)})
    processes.wait_for_everyone()


def _train_run(
    run: TrainingRun,
    base: ModelConfig,
    arm: FineTuneArm,
    examples: Sequence[TrainingExample],
    dataset: Dataset,
    tokenizers: tuple,
    dev_score: Callable[[HFBackend], float],
    seed: int,
    progress: Progress | None,
) -> None:
    processes = _processes(base)
    if processes.is_main_process:
        run.directory.mkdir(parents=True, exist_ok=True)
        run.discard_uncommitted()
    processes.wait_for_everyone()
    train_tokenizer, eval_tokenizer = tokenizers
    selection = _EpochSelection(run, dev_score, eval_tokenizer, base)
    description = f"{arm.name} [seed {seed}] training, lr {run.learning_rate:g}, {len(examples)} examples"
    shown = _TrainingProgress(progress, description) if progress is not None else None
    with long_step(progress, f"{description}: loading {base.spec.path}"):
        trainer = build_trainer(base, arm, run.learning_rate, dataset, train_tokenizer, run.directory, seed,
                                [selection] + ([shown] if shown else []))
    selection.trainer = trainer
    if shown is not None:
        shown.trainer = trainer
    with _served(trainer.model, eval_tokenizer, base, base.files_fingerprint) as probe:
        check_fits(dataset, examples, probe)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    run.params = {"trainable": trainable, "total": sum(p.numel() for p in trainer.model.parameters())}
    try:
        trainer.train(resume_from_checkpoint=run.resume_checkpoint())
    finally:
        # The callback and the trainer reference each other: free this run's model and optimizer now,
        # before the next learning rate loads its own.
        selection.trainer = None
        if shown is not None:
            shown.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_trainer(
    base: LocalWeights | ModelConfig,
    arm: FineTuneArm,
    learning_rate: float,
    dataset: Dataset,
    tokenizer,
    directory: Path,
    seed: int,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """The Trainer for one learning rate, on a freshly loaded (seeded) copy of the base model."""
    base = as_local_weights(base)
    set_seed(seed)  # before the model exists: the LoRA initialisation draws from it
    model = _load_model(base, arm.kind)
    if arm.kind == "lora":
        model = get_peft_model(model, _lora_config(arm))
    # Padded positions are masked out of attention and labels, so which id fills them does not matter.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = SupervisedLogitsTrainer(
        model=model,
        args=_training_args(base, arm, learning_rate, directory, seed),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=pad),
        processing_class=tokenizer,  # saved beside a full model
        callbacks=[*callbacks, _FollowLoad()],
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off, Trainer would print every log dict
    # A model whose forward takes no `logits_to_keep` (older remote code) trains with the stock loss.
    trainer.supervised_logits_only = "logits_to_keep" in forward_parameters(model)
    return trainer


def _load_model(base: LocalWeights, kind: str):
    """Full fine-tuning keeps float32 master weights (AdamW steps vanish in bf16); LoRA freezes the base
    in its inference dtype and PEFT keeps the adapter in float32. Loaded on the CPU: Trainer places it."""
    dtype = torch.float32 if kind == "full" else getattr(torch, base.dtype)
    return AutoModelForCausalLM.from_pretrained(str(base.directory), dtype=dtype, **model_load_options(base.spec))


def _lora_config(arm: FineTuneArm) -> LoraConfig:
    return LoraConfig(
        r=arm.lora_r,
        lora_alpha=arm.lora_alpha,
        lora_dropout=arm.lora_dropout,
        target_modules=arm.target_modules,  # "all-linear": every linear layer but the output head
        bias="none",
        task_type="CAUSAL_LM",
    )


def _training_args(
    base: LocalWeights, arm: FineTuneArm, learning_rate: float, directory: Path, seed: int
) -> TrainingArguments:
    use_cpu = _use_cpu(base)
    # Mixed precision on GPU in the dtype inference uses; none on CPU (slow and not what eval runs).
    bf16 = not use_cpu and base.dtype == "bfloat16" and torch.cuda.is_bf16_supported()
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


def _use_cpu(base: LocalWeights) -> bool:
    return not base.device.startswith("cuda")  # resolved once (`model.resolve_device`)


def _processes(base: LocalWeights) -> PartialState:
    """The processes `accelerate launch` / torchrun started (one without them), as Trainer sees them:
    its TrainingArguments set up the same shared state with the same `cpu` flag."""
    return PartialState(cpu=_use_cpu(base))


class _EpochSelection(TrainerCallback):
    """After every epoch: score dev, save the model if it is the run's best epoch so far, and commit
    the epoch once Trainer has written its checkpoint.

    Trainer's order at the end of an epoch is on_epoch_end -> log -> checkpoint -> on_save, so the
    commit in on_save happens only after the checkpoint is complete: a kill before it replays the
    epoch from the previous checkpoint, with the same result.
    """

    def __init__(
        self, run: TrainingRun, dev_score: Callable[[HFBackend], float], tokenizer, base: LocalWeights
    ):
        self.run = run
        self.dev_score = dev_score
        self.tokenizer = tokenizer
        self.base = base
        self.trainer: Trainer | None = None  # set once the trainer exists (it takes this callback)
        self.clock = time.perf_counter()
        self.pending: dict = {}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch)
        started = time.perf_counter()
        fingerprint = _weights_fingerprint(model, self.base.files_fingerprint)
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


class _FollowLoad(TrainerCallback):
    """A look at the machine's load after every optimizer step (`machine.check_load`)."""

    def on_step_end(self, args, state, control, **kwargs):
        check_load()


class _TrainingProgress(TrainerCallback):
    """One learning rate's optimizer steps as a task of the run's progress (`progress.make_progress`:
    a bar in a terminal, a line every 10 s or tenth of the steps in a log), with the epoch, the mean
    loss of the epoch's steps so far (what `_EpochSelection` records as the epoch's train_loss once it
    ends) and the learning rate the scheduler set for the next step."""

    def __init__(self, progress: Progress, description: str):
        self.progress = progress
        self.description = description
        self.trainer: Trainer | None = None  # set once the trainer exists (it takes this callback)
        self.task: int | None = None
        self.epoch_loss = 0.0  # summed over the current epoch's steps
        self.epoch_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run starts at its checkpoint's step: what is left is what the bar and ETA count.
        self.task = self.progress.add_task(self.description, total=state.max_steps, completed=state.global_step,
                                           status=f"epoch {state.epoch or 0:.2f}/{args.num_train_epochs:g}")

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_loss, self.epoch_steps = 0.0, 0

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        status = f"epoch {state.epoch:.2f}/{args.num_train_epochs:g}"
        step_loss = getattr(self.trainer, "step_loss", None)  # SupervisedLogitsTrainer keeps it
        if step_loss is not None:
            self.epoch_loss += float(step_loss)
            self.epoch_steps += 1
            status += f", loss {self.epoch_loss / self.epoch_steps:.4f}"
        if lr_scheduler is not None:
            status += f", lr {lr_scheduler.get_last_lr()[0]:.2e}"
        self.progress.update(self.task, advance=1, status=status)

    def close(self) -> None:
        self.trainer = None
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


@contextmanager
def _served(model, tokenizer, base: LocalWeights, fingerprint: str) -> Iterator[HFBackend]:
    """`model` behind the HF backend for a while: eval mode and greedy decoding inside; back in train
    mode with its own generation config after (a saved full model keeps the config it shipped with).

    `tokenizer` must not be the training one: the backend switches it to left padding.
    """
    shipped = model.generation_config
    try:
        yield HFBackend(
            model, tokenizer, fingerprint=fingerprint, batch_size=base.spec.batch_size, chat_template=base.chat_template
        )
    finally:
        model.generation_config = shipped
        model.train()


def _weights_fingerprint(model, base_fingerprint: str) -> str:
    """In-memory weights for the generation cache (`keys.trained_weights_fingerprint`): the trainable
    tensors' raw bytes, as they are."""
    trainable = (
        (name, param.detach().cpu().contiguous().view(torch.uint8).numpy())  # a buffer, not a copy
        for name, param in model.named_parameters() if param.requires_grad
    )
    return trained_weights_fingerprint(base_fingerprint, trainable)


def _sort_target_modules(adapter_config: Path) -> None:
    """PEFT writes `target_modules` from a set, in an order that changes with each process's string
    hashing; sorted, the same adapter has the same bytes, and so the same fingerprint, every time."""
    if not adapter_config.is_file():  # full fine-tuning saves no adapter
        return
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        write_json(adapter_config, config)


def _select(runs: list[TrainingRun]) -> tuple[TrainingRun, dict]:
    """Best dev score; among equals the earlier epoch (cheaper), then the earlier learning rate."""
    candidates = [(index, run, run.best()) for index, run in enumerate(runs)]
    _, run, record = min(candidates, key=lambda c: (-c[2]["dev_score"], c[2]["epoch"], c[0]))
    return run, record


def _cost(kind: str, runs: list[TrainingRun], chosen: TrainingRun, record: dict, dataset: Dataset, model_dir: Path) -> TrainingCost:
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


def _weights_mb(directory: Path) -> float:
    """Size of the saved weights (adapter or full model), without the tokenizer and config files."""
    weights = [path for pattern in ("*.safetensors", "*.bin") for path in directory.glob(pattern)]
    return sum(path.stat().st_size for path in weights) / 2**20


def _load_result(
    base: LocalWeights, kind: str, grid_runs: list[Path], grid_dir: Path, progress: Progress | None
) -> FineTuned:
    if _processes(base).is_main_process:
        # The grid's runs are finished: their Trainer checkpoints (optimizer state, the bulk of the disk)
        # are never resumed. Each run's state.json and best epoch stay for other grids.
        for run in grid_runs:
            for checkpoint in run.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
    cost = TrainingCost(**read_json(grid_dir / "result.json")["cost"])
    model_dir = grid_dir / "model"
    if kind == "lora":
        backend = load_hf_backend(base, adapter=model_dir, progress=progress)
    else:
        backend = load_hf_backend(base.with_files(model_dir), progress=progress)
    return FineTuned(backend, model_dir, cost)
