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
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ContextManager

import yaml
from rich.console import Console

from tuneorprompt import decide
from tuneorprompt.arms import (
    Arm,
    ArmRun,
    Base,
    DevJudge,
    TaskData,
    TestSplit,
    estimate_cost,
    expand_arms,
    longest_instruction,
    run_arm,
    seeds_of,
    with_budgets,
    with_search_budgets,
)
from tuneorprompt.backends.base import Backend, PromptTooLongError, ScoringBackend, ServedBackend
from tuneorprompt.backends import load_backend
from tuneorprompt.backends.cached import CacheCounts
from tuneorprompt.backends.gguf import is_gguf
from tuneorprompt.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)
from tuneorprompt.curves import run_learning_curve
from tuneorprompt.data import OverlapReport, load_corpus, load_splits
from tuneorprompt.evaluate import LabelChoice, Progress, Scorer, overlong_prompts
from tuneorprompt.keys import (
    PROTOCOL_VERSION,
    config_key,
    examples_key,
    file_sha256,
    plan_key,
    protocol_key,
    texts_key,
)
from tuneorprompt.metrics import (
    RelevanceScorer, extract_answer, lenient_match, make_matcher, user_metric_code,
)
from tuneorprompt.machine import ThreadsFollowLoad, threads_follow_load
from tuneorprompt.model import ResolvedModel, resolve_model
from tuneorprompt.progress import long_step, make_progress
from tuneorprompt.prompts import PromptFormat, PromptRecipe
from tuneorprompt.provenance import environment
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings, Splits
from tuneorprompt.report import Report, build_report, write_report
from tuneorprompt.rundir import (
    RunLock,
    check_no_links_inside,
    check_not_in_use,
    check_run_dir_is_ours,
    remove_stale_temporaries,
    terminate_as_interrupt,
    write_text_atomic,
)
from tuneorprompt.safe_text import for_terminal, mask_credentials
from tuneorprompt.store import Store, stored_plan
from tuneorprompt.summary import outcome_matrix, summarize_arm
from tuneorprompt.tracking import check_tracking, track_run


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
    (a served endpoint, a scripted fake in tests). Fine-tuning arms always train the config's local
    weights (`ResolvedModel.weights`), whose size then prices every arm (see `_answered_by`)."""
    console = console or Console(stderr=True)
    config = _as_config(config, overrides)
    run_dir = Path(out_dir or Path("runs") / config.name)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:  # a busy directory is said at once, not after the checks (the other ranks never lock)
        check_not_in_use(run_dir)
    check_run_dir_is_ours(run_dir)  # never write over a user's files (`--out .`)
    check_no_links_inside(run_dir)
    # A missing MLflow client is found before any work, and a tracking server that does not answer is
    # warned about now, within seconds, and not tried again.
    tracked = check_tracking(config.tracking, console)

    # One progress display for the whole run: loading the model (planning counts its tokens), training
    # and evaluating are each shown while they run.
    with make_progress(console) as progress:
        return _plan_and_run(config, run_dir, backend, console, progress, rank, tracked)


def _plan_and_run(
    config: ExperimentConfig, run_dir: Path, backend: Backend | None, console: Console, progress: Progress, rank: int,
    tracked: bool,
) -> Result:
    # ---- check everything that can be checked before the run directory exists --------------------
    plan = plan_run(config, run_dir, backend, reuse=True, progress=progress, console=console)

    # ---- run: every arm on the same test split, cheapest first -----------------------------------
    # Under `accelerate launch` every process runs this function: they fine-tune together (Trainer
    # shards the batches) and each evaluates; only the main process locks the directory and writes
    # the run's store and report.
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if rank == 0 else nullcontext(), terminate_as_interrupt(), _follow_load(plan) as follower:
        if rank == 0:  # locked: what a killed run left half-written is no one's now
            remove_stale_temporaries(run_dir)
        store = Store(run_dir / ("store.sqlite" if rank == 0 else f"store.rank{rank}.sqlite"))
        try:
            for previous in list(store.runs())[-1:]:
                console.print(f"Re-using {for_terminal(str(run_dir))}: {for_terminal(previous.describe())}")
            run_id = store.begin_run(config_key(config))
            store.put_plan(plan.key, {"estimates": [estimate.to_dict() for estimate in plan.estimates],
                                      "search_budgets": plan.search_budgets})
            try:
                save_resolved_config(config, run_dir)
                save_environment(run_dir, follower)
                # The tracked run ends FINISHED, FAILED or KILLED with this block; it is logged to
                # after the report is on disk, and its failures only warn (tracking.py).
                counts = CacheCounts()  # every generation the run asks for: read back, or generated
                with track_run(config, run_dir, console, enabled=rank == 0 and tracked) as tracker:
                    report, records = _run(plan, store, counts, console, rank, progress, follower)
                    tracker.log_results(report)
            except KeyboardInterrupt as error:
                store.end_run(run_id, "interrupted", str(error) or "interrupted (Ctrl-C)")
                raise
            except BaseException as error:
                store.end_run(run_id, "failed", f"{type(error).__name__}: {error}")
                raise
            finally:
                if follower is not None and follower.changes:  # the thread changes, however the run ended
                    save_environment(run_dir, follower)
            store.end_run(run_id, "finished")
            return Result(run_dir, report, records, counts.hits, counts.misses)
        finally:
            store.close()


@dataclass
class RunPlan:
    """A checked experiment, ready to run: data loaded, model resolved and loaded, templates compiled,
    every arm feasible and its cost estimated, every prompt known to fit the model's context."""

    config: ExperimentConfig  # as the user gave it (config.yaml, and the model the report names)
    model: ResolvedModel  # the model as resolved once for this run: keys, fine-tuning and the report read it
    run_dir: Path
    key: str  # `keys.plan_key`: the run stores its estimates under it, for a re-run's plan
    splits: Splits
    overlap: OverlapReport
    task: TaskData  # what the arms adapt with: train, dev, prompt format, corpus
    base: Base  # its backend is not cached: evaluation caches through the store, which exists once the run starts
    settings: GenerationSettings
    scorer: Scorer
    arms: list[Arm]  # cheapest first, by `estimates`
    estimates: list[decide.CostEstimate]  # in the same order
    protocol: dict[str, Any]  # what every arm's result depends on, as recorded in report.json
    learning_curve: bool  # asked for, and possible with this model
    # Arms the config asks for that cannot run here, each {"arm", "reason"}: listed in the report's
    # warnings and in the terminal, never silently left out.
    skipped: list[dict[str, str]] = field(default_factory=list)
    # What the user should know before the run starts (a very large test split), one line each,
    # printed before any arm runs. Unlike `skipped`, they do not bear on the report's numbers.
    warnings: list[str] = field(default_factory=list)
    # Each searching arm's budget per search in model FLOPs (`arms.with_search_budgets`), kept with the
    # estimates: a re-run's plan reads both back.
    search_budgets: dict[str, float] = field(default_factory=dict)


# Test items beyond which a run without `data.max_test` is said up front: every arm and seed answers
# every item, and at ~10 answers/s on a CPU (README, benchmarks) 10,000 items are ~17 minutes each.
LARGE_TEST = 10_000


def large_test_warnings(config: ExperimentConfig, splits: Splits) -> list[str]:
    """A test split over LARGE_TEST items run whole (no `data.max_test`): said before it takes hours."""
    if config.data.max_test is not None or len(splits.test) <= LARGE_TEST:
        return []
    return [f"the test split has {len(splits.test):,} items and data.max_test is unset: every arm and seed answers "
            "all of them; set data.max_test to try the experiment on fewer first"]


def plan_run(
    config: ExperimentConfig, run_dir: Path, backend: Backend | None = None, *, reuse: bool = False,
    progress: Progress | None = None, console: Console | None = None,
) -> RunPlan:
    """Every check that needs no generation or training, in the order that finds a user's mistake
    soonest: data, templates and arms, the model, then each arm's prompts against its context.
    Nothing is written. `tuneorprompt check-data` runs this too.

    reuse: a plan of the same content (`keys.plan_key`) that `run_dir`'s store holds passed these
    checks and made these cost estimates already: its estimates are read back, and the checks that
    need the model's tokenizer or weights are not made again (a re-run that reads every result back
    then loads no model at all). `progress` shows the model being read and loaded.

    console: where a served model's backend warns during the run (a reply from another model)."""
    splits, overlap = load_splits(config.data)
    corpus = [p.text for p in load_corpus(config.data.corpus)] if config.data.corpus else None
    # The templates compiled and rendered on every example: a syntax error, a failing render, or a
    # template that loops without end is found before the model loads.
    unloaded_format = PromptFormat(config.prompt)
    arms = expand_arms(config)
    unloaded_format.check_renders([*splits.train, *splits.dev, *splits.test],
                                  instructions=any(arm.uses_instruction for arm in arms))
    if backend is None:  # hashing a large model's files, and converting a .gguf the first time, take a while
        described = f"reading model {config.model.label}"
        if is_gguf(getattr(config.model, "path", "")):
            described += " (converted to a model directory the first time)"
        with long_step(progress, described):
            model = resolve_model(config.model)
    else:
        model = _answered_by(backend, config, arms)
    arms, skipped = _without_local_weights(arms, model)
    learning_curve = config.learning_curve.enabled and model.trainable
    if config.learning_curve.enabled and not model.trainable:
        skipped.append({"arm": "learning_curve", "reason": _NO_LOCAL_WEIGHTS.format(kind=model.kind)})
    if config.prompt.system is not None and not model.chat_template:
        raise ValueError("prompt.system needs a chat template, and this model is used without one (model.chat_template)")
    if backend is None:
        backend = load_backend(model, progress, console)
    if config.metric.choice_by_loglikelihood and not isinstance(backend, ScoringBackend):
        raise ValueError(
            f"metric.choice_by_loglikelihood: model.kind {model.kind} ({type(backend).__name__}) cannot score "
            "continuations by log-likelihood; use kind: hf, or set it to false to generate the answers"
        )
    prompt_format = PromptFormat(config.prompt, chat=model.chat_template)
    if any(arm.uses_instruction for arm in arms):
        prompt_format.instruction_candidates()  # none to try is an error now, not after the first arms
    relevance = RelevanceScorer(config.metric.relevance_model)
    scorer = Scorer(
        extract=partial(extract_answer, rule=config.generation.extract, regex=config.generation.extract_regex),
        matcher=make_matcher(config.metric),
        lenient=lenient_match,
        relevance=relevance.score,
        choice=LabelChoice(tuple(config.metric.labels), tuple(map(prompt_format.reply, config.metric.labels)))
        if config.metric.choice_by_loglikelihood else None,
    )
    protocol = protocol_record(config, model, splits, corpus)
    task = TaskData(tuple(splits.train), tuple(splits.dev), prompt_format, relevance.embed,
                    tuple(corpus) if corpus is not None else None,
                    tuple(sorted({target for example in splits.test for target in example.targets})))
    base = Base(backend, model, run_dir / "models")
    settings = GenerationSettings(config.generation.max_new_tokens, tuple(config.generation.stop))
    # Each arm's prompts as far as they are known before dev chooses anything: the first seed's demos,
    # and for arms queried with the instruction, the longest candidate (an upper bound on length).
    seed = config.seeds[0]
    if any(arm.retrieves_by_embedding for arm in arms):
        # Every input that retrieval will look up, one query at a time, encoded in one batch.
        relevance.embed_together([e.input for e in (*splits.train, *splits.dev, *splits.test)])
    key = plan_key(protocol["key"], [(arm.name, arm.spec.model_dump(mode="json")) for arm in arms], seed,
                   config.costs, config.learning_curve)
    stored = stored_plan(run_dir / "store.sqlite", key) if reuse else None
    if stored is not None:
        estimates = [decide.CostEstimate(**estimate) for estimate in stored["estimates"]]
        search_budgets = stored["search_budgets"]
    else:
        if any(arm.family == "finetune" for arm in arms) or learning_curve:
            from tuneorprompt.finetune import check_trainable  # heavy imports only with fine-tuning arms

            check_trainable(model.weights)
        longest = longest_instruction(task, backend) if any(arm.uses_instruction for arm in arms) else None
        estimates = []
        for arm in arms:
            instruction = longest if arm.uses_instruction else None
            recipe = arm.recipe(task, seed, instruction)
            check_prompts_fit(arm.name, recipe, [*splits.dev, *splits.test], backend, settings)
            estimates.append(estimate_cost(arm, recipe, instruction, task, base, settings))
        estimates, search_budgets = with_search_budgets(arms, estimates, task, base, settings, seed)
        estimates = decide.ladder_order(estimates, config.costs.expected_queries)
    by_name = {arm.name: arm for arm in with_budgets(arms, search_budgets)}
    return RunPlan(config, model, run_dir, key, splits, overlap, task, base, settings, scorer,
                   [by_name[e.name] for e in estimates], estimates, protocol, learning_curve, skipped,
                   large_test_warnings(config, splits), search_budgets)


def _answered_by(backend: Backend, config: ExperimentConfig, arms: list[Arm]) -> ResolvedModel:
    """The model when a backend is given instead (a scripted fake in tests, a notebook's own client): it
    answers the prompt arms under its own fingerprint; fine-tuning arms still train the config's local
    weights, whose size then prices every arm. Otherwise the size is unknown and costs count tokens."""
    wants_weights = any(arm.family == "finetune" for arm in arms) or config.learning_curve.enabled
    weights = resolve_model(config.model).weights if wants_weights else None
    return ResolvedModel(
        spec=config.model, label=config.model.label, fingerprint=backend.fingerprint,
        chat_template=backend.chat_template, num_parameters=weights.num_parameters if weights else None,
        weights=weights,
    )


_NO_LOCAL_WEIGHTS = ("model.kind: {kind} has no local weights to fine-tune; set model.local_path to a local Hugging "
                     "Face directory of the same model")


def _without_local_weights(arms: list[Arm], model: ResolvedModel) -> tuple[list[Arm], list[dict[str, str]]]:
    """Fine-tuning needs local weights; a served model without `local_path` has none. Its fine-tuning
    arms are skipped (and reported as skipped) rather than failing the prompt arms the server can
    answer; a config of fine-tuning arms only is an error."""
    if model.trainable:
        return arms, []
    reason = _NO_LOCAL_WEIGHTS.format(kind=model.kind)
    skipped = [{"arm": arm.name, "reason": reason} for arm in arms if arm.family == "finetune"]
    kept = [arm for arm in arms if arm.family != "finetune"]
    if not kept:
        raise ValueError(f"arms: every arm fine-tunes, and {reason}")
    return kept, skipped


def check_prompts_fit(
    arm_name: str, recipe: PromptRecipe, examples: list[Example], backend: Backend, settings: GenerationSettings
) -> None:
    """Every prompt `recipe` builds for `examples` (dev and test) fits the model's context once its demos
    are dropped, with room for `max_new_tokens`; else one error listing the examples that do not (by id
    and line)."""
    too_long = overlong_prompts(recipe, examples, backend, settings)
    if too_long:
        listed = "; ".join(f"{e.id!r} ({e.source or 'data'}): {n} tokens" for e, n in too_long[:MAX_LISTED])
        more = f" and {len(too_long) - MAX_LISTED} more" if len(too_long) > MAX_LISTED else ""
        raise PromptTooLongError(
            f"arm {arm_name}: {len(too_long)} prompts do not fit the model's context of {backend.context_length} "
            f"tokens with generation.max_new_tokens = {settings.max_new_tokens}: {listed}{more}"
        )


MAX_LISTED = 10


def _run(
    plan: RunPlan, store: Store, counts: CacheCounts, console: Console, rank: int, progress: Progress,
    follower: ThreadsFollowLoad | None,
) -> tuple[Report, dict[str, list[list[ExampleRecord]]]]:
    config, splits = plan.config, plan.splits
    test = TestSplit(splits.test, plan.scorer)
    runs: dict[str, list[ArmRun]] = {}  # arm name -> one run per seed
    stopped_early_at: str | None = None
    for skipped in plan.skipped:
        console.print(f"[yellow]Skipping {for_terminal(skipped['arm'])}[/]: {for_terminal(skipped['reason'])}")
    for warning in plan.warnings:
        console.print(f"[yellow]Warning[/]: {for_terminal(warning)}")
    dev = DevJudge(plan.task, config, plan.settings, plan.scorer, store, counts, plan.protocol["key"], progress)

    def run(arm: Arm) -> list[ArmRun]:
        return [run_arm(arm, seed, plan.task, dev, plan.base, test) for seed in seeds_of(arm, config.seeds)]

    for arm in plan.arms:
        runs[arm.name] = run(arm)
        if config.strategy == "ladder" and decide.meets_target(
            outcome_matrix([r.records for r in runs[arm.name]], "correct"), config.target.accuracy,
            lenient=config.target.lenient,
        ):
            stopped_early_at = arm.name
            break

    learning_curve = None
    if plan.learning_curve and stopped_early_at is None:
        learning_curve, curve_runs = run_learning_curve(config, plan.task, plan.arms, runs, run)
        runs |= curve_runs
    records = {name: [r.records for r in arm_runs] for name, arm_runs in runs.items()}

    # ---- aggregate, decide, report ---------------------------------------------------------------
    # Which backend answered: fine-tuned arms are served by transformers from local weights whatever
    # `model.kind` serves the prompt arms.
    summaries = [
        summarize_arm(arm.name, arm.spec.kind, records[arm.name], [r.info for r in runs[arm.name]],
                      plan.model.num_parameters, family=arm.family,
                      backend="hf" if arm.family == "finetune" else plan.model.kind)
        for arm in plan.arms
        if arm.name in records
    ]
    report = build_report(
        config=plan.config,
        summaries=summaries,
        records=records,
        overlap=plan.overlap,
        split_sizes={"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
        environment=environment(follower.changes if follower is not None else None),
        stopped_early_at=stopped_early_at,
        learning_curve=learning_curve,
        cost_order=plan.estimates,
        protocol=plan.protocol,
        skipped_arms=plan.skipped,
        served_models=plan.base.backend.served_models if isinstance(plan.base.backend, ServedBackend) else None,
    )
    if rank == 0:
        write_report(report, plan.run_dir, console)
    return report, records


_PROTOCOL_MODEL_FIELDS = {"kind", "dtype", "device", "chat_template", "revision", "base_url", "model", "mode", "seed"}


def protocol_record(
    config: ExperimentConfig, model: ResolvedModel, splits: Splits, corpus: list[str] | None
) -> dict[str, Any]:
    """What every arm's result depends on, and its content key (`key`): the model as served, the
    data as the run reads it (after `fields`, the seeded split and `max_test`), and the prompt,
    decoding, extraction and metric settings. `report.json` records it, so a report always states
    the settings and data its numbers came from."""
    record = {
        "version": PROTOCOL_VERSION,
        "model_fingerprint": model.fingerprint,
        # The settings that change answers, of whichever kind (`include` skips those a kind lacks), and
        # chat-template use as resolved, under the name every kind's report reads it by.
        "model": mask_credentials(model.spec.model_dump(mode="json", include=_PROTOCOL_MODEL_FIELDS))
        | {"chat_template": model.chat_template},
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
    if (code := user_metric_code(config.metric)) is not None:
        # Only for a user's function, so that built-in metrics keep the keys their results are stored under.
        record["metric_code"] = code
    if config.metric.choice_by_loglikelihood:
        # Earlier code accepted this flag and generated the answers anyway: this entry keeps the results
        # it stored under the same settings from being read back as label choices.
        record["answers"] = "chosen by log-likelihood"
    return {**record, "key": protocol_key(record)}


def _as_config(config: ExperimentConfig | dict | str | Path, overrides: list[str] | None) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            return config_from_dict(apply_overrides(config.model_dump(mode="json"), overrides))
        return config
    if isinstance(config, dict):
        return config_from_dict(apply_overrides(dict(config), overrides or []))
    return load_config(config, overrides)


def save_resolved_config(config: ExperimentConfig, run_dir: Path) -> None:
    """config.yaml: every key with its resolved value (defaults included)."""
    resolved = mask_credentials(config.model_dump(mode="json"))
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def save_environment(run_dir: Path, follower: ThreadsFollowLoad | None) -> None:
    """environment.json: versions, commit, CPU threads and the changes of their count so far."""
    changes = follower.changes if follower is not None else None
    write_text_atomic(run_dir / "environment.json", json.dumps(environment(changes), indent=2))


def _follow_load(plan: RunPlan) -> ContextManager[ThreadsFollowLoad | None]:
    """Torch's threads follow the machine's load (`machine.ThreadsFollowLoad`) when this process computes
    with local weights and `model.num_threads` was left to the default; a count the user gave is kept."""
    weights = plan.model.weights
    if weights is None or getattr(plan.config.model, "num_threads", None) is not None:
        return nullcontext()
    return threads_follow_load(weights.spec.num_threads)
