"""One experiment, top to bottom: check and plan (config, data, model, arms, prompt lengths, cost
order; nothing written) -> lock the run directory -> run every arm on the same test split, cheapest
first -> aggregate -> decide -> write the report.

`run_experiment` is the Python API; `tuneorprompt run` is a thin wrapper around it. A run directory
can be re-used: every result is stored under a content key of what produced it (`keys.py`), so an
interrupted run picks up where it stopped, an unchanged re-run recomputes nothing, and a changed
setting recomputes exactly the results it affects. The store records how each run ended (finished,
failed, interrupted); a second run into a directory in use fails at once.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from tuneorprompt import decide
from tuneorprompt.arms import (
    Arm,
    ArmContext,
    Context,
    FewShot,
    FineTune,
    estimate_cost,
    expand_arms,
    run_arm,
    seeds_of,
)
from tuneorprompt.backends.base import Backend, PromptTooLongError
from tuneorprompt.backends.cached import CachedBackend
from tuneorprompt.backends.gguf import local_model_config
from tuneorprompt.backends import load_backend, local_weights
from tuneorprompt.config import (
    ExperimentConfig,
    ModelConfig,
    OpenAIModelConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)
from tuneorprompt.curves import run_learning_curve
from tuneorprompt.data import OverlapReport, load_corpus, load_splits
from tuneorprompt.evaluate import Scorer, overlong_prompts
from tuneorprompt.keys import content_key, examples_key, file_sha256, texts_key
from tuneorprompt.machine import free_cores
from tuneorprompt.metrics import RelevanceScorer, extract_answer, lenient_match, make_matcher
from tuneorprompt.progress import make_progress
from tuneorprompt.prompts import PromptFormat, PromptRecipe
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings, Splits
from tuneorprompt.report import Report, build_report, write_report
from tuneorprompt.rundir import RunLock, terminate_as_interrupt, write_text_atomic
from tuneorprompt.store import Store
from tuneorprompt.summary import outcome_matrix, summarize_arm
from tuneorprompt.tracking import check_tracking, track_run

PACKAGES = ("tuneorprompt", "torch", "transformers", "peft", "trl", "accelerate", "sentence-transformers")

# Part of every stored result's key: bumped when a change to prompting, decoding or scoring code
# changes what a stored result means, so results of the old code are not read back as current.
PROTOCOL_VERSION = 1


@dataclass
class Result:
    run_dir: Path
    report: Report
    records: dict[str, list[list[ExampleRecord]]]  # arm name -> one list of test records per seed
    cache_hits: int
    cache_misses: int


def run_experiment(
    config: ExperimentConfig | dict | str | Path,
    out_dir: str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    console: Console | None = None,
    backend: Backend | None = None,
) -> Result:
    """Run an experiment (a config object, a dict or a YAML path) into `out_dir`.

    `backend` answers instead of the model the config names: any object with the `Backend` methods
    (a served endpoint, a scripted fake in tests). Fine-tuning arms always load the config's local
    weights (`backends.local_weights`)."""
    console = console or Console(stderr=True)
    config = _as_config(config, overrides)
    run_dir = Path(out_dir or Path("runs") / config.name)
    check_tracking(config.tracking)  # a missing MLflow client is found before any work

    # ---- check everything that can be checked before the run directory exists --------------------
    plan = plan_run(config, run_dir, backend)

    # ---- run: every arm on the same test split, cheapest first -----------------------------------
    # Under `accelerate launch` every process runs this function: they fine-tune together (Trainer
    # shards the batches) and each evaluates; only the main process locks the directory and writes
    # the run's store and report.
    rank = int(os.environ.get("RANK", "0"))
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if rank == 0 else nullcontext(), terminate_as_interrupt():
        store = Store(run_dir / ("store.sqlite" if rank == 0 else f"store.rank{rank}.sqlite"))
        try:
            for previous in list(store.runs())[-1:]:
                console.print(f"Re-using {run_dir}: {previous.describe()}")
            run_id = store.begin_run(content_key(config))
            try:
                save_resolved_config(config, run_dir)
                # The tracked run ends FINISHED, FAILED or KILLED with this block; it is logged to
                # after the report is on disk, and its failures only warn (tracking.py).
                with track_run(config, run_dir, console, enabled=rank == 0) as tracker:
                    report, records = _run(plan, store, console, rank)
                    tracker.log_results(report)
            except KeyboardInterrupt as error:
                store.end_run(run_id, "interrupted", str(error) or "interrupted (Ctrl-C)")
                raise
            except BaseException as error:
                store.end_run(run_id, "failed", f"{type(error).__name__}: {error}")
                raise
            store.end_run(run_id, "finished")
            return Result(run_dir, report, records, store.cache_stats.hits, store.cache_stats.misses)
        finally:
            store.close()


@dataclass
class RunPlan:
    """A checked experiment, ready to run: data loaded, model loaded, templates compiled, every arm
    feasible and its cost estimated, every prompt known to fit the model's context."""

    config: ExperimentConfig  # as resolved for running: a .gguf path converted, `chat_template: auto` decided
    given: ExperimentConfig  # as the user gave it (config.yaml, and the model the report names)
    run_dir: Path
    splits: Splits
    overlap: OverlapReport
    base: Backend  # not cached yet: the store does not exist until the run starts
    ctx: ArmContext
    arms: list[Arm]  # cheapest first, by `estimates`
    estimates: list[decide.CostEstimate]  # in the same order
    protocol: dict[str, Any]  # what every arm's result depends on, as recorded in report.json
    # Arms the config asks for that cannot run here, each {"arm", "reason"}: listed in the report's
    # warnings and in the terminal, never silently left out.
    skipped: list[dict[str, str]] = field(default_factory=list)


def plan_run(config: ExperimentConfig, run_dir: Path, backend: Backend | None = None) -> RunPlan:
    """Every check that needs no generation or training, in the order that finds a user's mistake
    soonest: data, templates and arms, the model, then each arm's prompts against its context.
    Nothing is written. `tuneorprompt check-data` runs this too."""
    given = config
    splits, overlap = load_splits(config.data)
    corpus = [p.text for p in load_corpus(config.data.corpus)] if config.data.corpus else None
    PromptFormat(config.prompt)  # compiles the templates: a syntax error is found before the model loads
    arms = expand_arms(config)
    # A .gguf file becomes a plain model directory (converted once, cached by the file's hash) that
    # every later load, for inference and fine-tuning, reads.
    if isinstance(config.model, ModelConfig):
        config = config.model_copy(update={"model": local_model_config(config.model)})
        if config.model.num_threads is None:
            # Chosen once, here, while this process is idle: every later load (fine-tuned models
            # included) uses the same count, and environment.json records it.
            config = config.model_copy(update={"model": config.model.model_copy(update={"num_threads": free_cores()})})
    arms, skipped, config = _without_local_weights(arms, config)
    if backend is None:
        backend = load_backend(config.model)
    if config.prompt.system is not None and not backend.chat_template:
        raise ValueError("prompt.system needs a chat template, and this model is used without one (model.chat_template)")
    # From here on, `chat_template: auto` is what it resolved to: keys, fine-tuning and the report use it.
    if "chat_template" in type(config.model).model_fields:  # kind: openai has `mode` instead
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"chat_template": backend.chat_template})}
        )
    prompt_format = PromptFormat(config.prompt, chat=backend.chat_template)
    if any(arm.uses_instruction for arm in arms):
        prompt_format.instruction_candidates()  # none to try is an error now, not after the first arms
    if any(isinstance(arm, FineTune) for arm in arms) or config.learning_curve.enabled:
        from tuneorprompt.finetune import check_trainable  # heavy imports only with fine-tuning arms

        check_trainable(local_weights(config.model))
    relevance = RelevanceScorer(config.metric.relevance_model)
    scorer = Scorer(
        extract=partial(extract_answer, rule=config.generation.extract, regex=config.generation.extract_regex),
        matcher=make_matcher(config.metric),
        lenient=lenient_match,
        relevance=relevance.score,
    )
    protocol = protocol_record(config, backend.fingerprint, splits, corpus)
    ctx = ArmContext(
        config=config, train=splits.train, dev=splits.dev, base=backend, format=prompt_format,
        settings=GenerationSettings(config.generation.max_new_tokens, tuple(config.generation.stop)),
        scorer=scorer, store=None, run_dir=run_dir, embed=relevance.embed, corpus=corpus,
        protocol_key=protocol["key"],
    )
    # Each arm's prompts as far as they are known before dev chooses anything: the first seed's demos,
    # and for arms queried with the instruction, the longest candidate (an upper bound on length).
    seed = config.seeds[0]
    if any(_retrieves_by_embedding(arm) for arm in arms):
        # One batched encoding of every input that retrieval will look up, one query at a time, while
        # this plan and the run build prompts (the scorer keeps each text's vector).
        relevance.embed([e.input for e in (*splits.train, *splits.dev, *splits.test)])
    longest = ctx.longest_instruction() if any(arm.uses_instruction for arm in arms) else None
    estimates = []
    for arm in arms:
        instruction = longest if arm.uses_instruction else None
        recipe = arm.recipe(ctx, seed, instruction)
        check_prompts_fit(arm.name, recipe, ctx, splits.test)
        estimates.append(estimate_cost(arm, recipe, instruction, ctx))
    estimates = decide.ladder_order(estimates, config.costs.expected_queries)
    by_name = {arm.name: arm for arm in arms}
    return RunPlan(config, given, run_dir, splits, overlap, backend, ctx, [by_name[e.name] for e in estimates], estimates,
                   protocol, skipped)


def _retrieves_by_embedding(arm: Arm) -> bool:
    return (isinstance(arm, FewShot) and arm.retrieved) or (isinstance(arm, Context) and arm.spec.retriever == "embedding")


def _without_local_weights(
    arms: list[Arm], config: ExperimentConfig
) -> tuple[list[Arm], list[dict[str, str]], ExperimentConfig]:
    """Fine-tuning needs local weights; a served model without `local_path` has none. Its fine-tuning
    arms and learning curve are skipped (and reported as skipped) rather than failing the prompt arms
    the server can answer; a config of fine-tuning arms only is an error."""
    if local_weights(config.model) is not None:
        return arms, [], config
    reason = (f"model.kind: {config.model.kind} has no local weights to fine-tune; set model.local_path to a "
              "local Hugging Face directory of the same model")
    skipped = [{"arm": arm.name, "reason": reason} for arm in arms if isinstance(arm, FineTune)]
    if config.learning_curve.enabled:
        skipped.append({"arm": "learning_curve", "reason": reason})
        config = config.model_copy(update={"learning_curve": config.learning_curve.model_copy(update={"enabled": False})})
    kept = [arm for arm in arms if not isinstance(arm, FineTune)]
    if not kept:
        raise ValueError(f"arms: every arm fine-tunes, and {reason}")
    return kept, skipped, config


def check_prompts_fit(arm_name: str, recipe: PromptRecipe, ctx: ArmContext, test: list[Example]) -> None:
    """Every dev and test prompt `recipe` builds fits the model's context once its demos are dropped,
    with room for `max_new_tokens`; else one error listing the examples that do not (by id and line)."""
    too_long = overlong_prompts(recipe, [*ctx.dev, *test], ctx.base, ctx.settings)
    if too_long:
        listed = "; ".join(f"{e.id!r} ({e.source or 'data'}): {n} tokens" for e, n in too_long[:MAX_LISTED])
        more = f" and {len(too_long) - MAX_LISTED} more" if len(too_long) > MAX_LISTED else ""
        raise PromptTooLongError(
            f"arm {arm_name}: {len(too_long)} prompts do not fit the model's context of {ctx.base.context_length} "
            f"tokens with generation.max_new_tokens = {ctx.settings.max_new_tokens}: {listed}{more}"
        )


MAX_LISTED = 10


def _run(plan: RunPlan, store: Store, console: Console, rank: int) -> tuple[Report, dict[str, list[list[ExampleRecord]]]]:
    config, splits = plan.config, plan.splits
    ctx = replace(plan.ctx, base=CachedBackend(plan.base, store), store=store)
    records: dict[str, list[list[ExampleRecord]]] = {}
    infos: dict[str, list[dict]] = {}
    stopped_early_at: str | None = None
    for skipped in plan.skipped:
        console.print(f"[yellow]Skipping {skipped['arm']}[/]: {skipped['reason']}")
    with make_progress(console) as progress:
        ctx.progress = progress
        for arm in plan.arms:
            runs = [run_arm(arm, seed, ctx, splits.test) for seed in seeds_of(arm, config.seeds)]
            records[arm.name], infos[arm.name] = [r for r, _ in runs], [i for _, i in runs]
            if config.strategy == "ladder" and decide.meets_target(
                outcome_matrix(records[arm.name], "correct"), config.target.accuracy, lenient=config.target.lenient
            ):
                stopped_early_at = arm.name
                break

        learning_curve = None
        if config.learning_curve.enabled and stopped_early_at is None:
            learning_curve = run_learning_curve(ctx, splits.test, plan.arms, records, infos)

    # ---- aggregate, decide, report ---------------------------------------------------------------
    # Which backend answered: fine-tuned arms are served by transformers from local weights whatever
    # `model.kind` serves the prompt arms.
    summaries = [
        summarize_arm(arm.name, arm.kind, records[arm.name], infos[arm.name], ctx.base.num_parameters,
                      backend="hf" if isinstance(arm, FineTune) else config.model.kind)
        for arm in plan.arms
        if arm.name in records
    ]
    report = build_report(
        config=plan.given,
        summaries=summaries,
        records=records,
        overlap=plan.overlap,
        split_sizes={"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
        environment=environment(),
        stopped_early_at=stopped_early_at,
        learning_curve=learning_curve,
        cost_order=plan.estimates,
        protocol=plan.protocol,
        skipped_arms=plan.skipped,
    )
    if rank == 0:
        write_report(report, plan.run_dir, console)
    return report, records


_PROTOCOL_MODEL_FIELDS = {"kind", "dtype", "device", "chat_template", "revision", "base_url", "model", "mode", "seed"}


def protocol_record(
    config: ExperimentConfig, fingerprint: str, splits: Splits, corpus: list[str] | None
) -> dict[str, Any]:
    """What every arm's result depends on, and its content key (`key`): the model as served, the
    data as the run reads it (after `fields`, the seeded split and `max_test`), and the prompt,
    decoding, extraction and metric settings. `report.json` records it, so a report always states
    the settings and data its numbers came from."""
    record = {
        "version": PROTOCOL_VERSION,
        "model_fingerprint": fingerprint,
        # The settings that change answers, of whichever kind (`include` skips those a kind lacks).
        "model": config.model.model_dump(mode="json", include=_PROTOCOL_MODEL_FIELDS)
        # A served model's chat-template use, under the name every kind's report reads it by.
        | ({"chat_template": config.model.mode == "chat"} if isinstance(config.model, OpenAIModelConfig) else {}),
        "data": {split: examples_key(getattr(splits, split)) for split in ("train", "dev", "test")},
        "data_files": {
            name: file_sha256(path)
            for name in ("file", "train", "dev", "test", "corpus")
            if (path := getattr(config.data, name)) is not None
        },
        "corpus": texts_key(corpus) if corpus is not None else None,
        "prompt": config.prompt.model_dump(mode="json"),
        "generation": config.generation.model_dump(mode="json"),
        "metric": config.metric.model_dump(mode="json"),
    }
    # The file hashes are provenance only: the parsed data above is what results depend on.
    return {**record, "key": content_key({k: v for k, v in record.items() if k != "data_files"})}


def _as_config(config: ExperimentConfig | dict | str | Path, overrides: list[str] | None) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            return config_from_dict(apply_overrides(config.model_dump(mode="json"), overrides))
        return config
    if isinstance(config, dict):
        return config_from_dict(apply_overrides(dict(config), overrides or []))
    return load_config(config, overrides)


# ---- provenance ------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def git_commit() -> str | None:
    """Commit of the tuneorprompt checkout in use (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_resolved_config(config: ExperimentConfig, run_dir: Path) -> None:
    """config.yaml: every key with its resolved value (defaults included), plus versions and commit."""
    resolved = config.model_dump(mode="json")
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_text_atomic(run_dir / "environment.json", json.dumps(environment(), indent=2))
