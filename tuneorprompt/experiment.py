"""One experiment, top to bottom: set up (config, data, model, store) -> run every arm on the same
test split -> aggregate -> decide -> write the report.

`run_experiment` is the Python API; `tuneorprompt run` is a thin wrapper around it. A run directory
can be re-used: finished arms and every generation are read back from its store, so an interrupted
run picks up where it stopped and an unchanged re-run recomputes nothing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tuneorprompt import decide
from tuneorprompt.arms import ArmContext, expand_arms, run_arm
from tuneorprompt.backends.base import Backend
from tuneorprompt.backends.hf import load_hf_backend
from tuneorprompt.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)
from tuneorprompt.curves import run_learning_curve
from tuneorprompt.data import load_corpus, load_splits
from tuneorprompt.evaluate import Scorer
from tuneorprompt.metrics import RelevanceScorer, extract_answer, make_matcher
from tuneorprompt.prompts import PromptFormat
from tuneorprompt.records import ExampleRecord, GenerationSettings
from tuneorprompt.report import build_report, write_report
from tuneorprompt.store import CachedBackend, Store
from tuneorprompt.summary import outcome_matrix, summarize_arm

PACKAGES = ("tuneorprompt", "torch", "transformers", "peft", "trl", "accelerate", "sentence-transformers")


@dataclass
class Result:
    run_dir: Path
    report: dict[str, Any]
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
    (a served endpoint, a scripted fake in tests). Fine-tuning arms always load `config.model`."""
    console = console or Console(stderr=True)
    config = _as_config(config, overrides)
    run_dir = Path(out_dir or Path("runs") / config.name)

    # ---- setup: data first (cheap, and most user errors are here), then the model ----------------
    splits, overlap = load_splits(config.data)
    corpus = [p.text for p in load_corpus(config.data.corpus)] if config.data.corpus else None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, run_dir)
    # Under `accelerate launch` every process runs this function: they fine-tune together (Trainer
    # shards the batches) and each evaluates; only the main process writes the run's store and report.
    rank = int(os.environ.get("RANK", "0"))
    store = Store(run_dir / ("store.sqlite" if rank == 0 else f"store.rank{rank}.sqlite"))
    base = CachedBackend(backend or load_hf_backend(config.model), store)
    relevance = RelevanceScorer(config.metric.relevance_model)
    scorer = Scorer(
        extract=partial(extract_answer, rule=config.generation.extract, regex=config.generation.extract_regex),
        matcher=make_matcher(config.metric),
        relevance=relevance.score,
    )
    settings = GenerationSettings(config.generation.max_new_tokens, tuple(config.generation.stop))
    ctx = ArmContext(
        config=config, train=splits.train, dev=splits.dev, base=base, format=PromptFormat(config.prompt),
        settings=settings, scorer=scorer, store=store, run_dir=run_dir, embed=relevance.embed, corpus=corpus,
    )

    # ---- run: every arm on the same test split ---------------------------------------------------
    arms = expand_arms(config)
    if config.strategy == "ladder":
        arms = sorted(arms, key=lambda a: a.ladder_rank)
    records: dict[str, list[list[ExampleRecord]]] = {}
    infos: dict[str, list[dict]] = {}
    stopped_early_at: str | None = None
    with _progress(console) as progress:
        ctx.progress = progress
        for arm in arms:
            records[arm.name], infos[arm.name] = [], []
            for seed in config.seeds if arm.stochastic else config.seeds[:1]:
                arm_records, info = run_arm(arm, seed, ctx, splits.test)
                records[arm.name].append(arm_records)
                infos[arm.name].append(info)
            if config.strategy == "ladder" and decide.meets_target(
                outcome_matrix(records[arm.name], "correct"), config.target.accuracy, lenient=config.target.lenient
            ):
                stopped_early_at = arm.name
                break

        learning_curve = None
        if config.learning_curve.enabled and stopped_early_at is None:
            learning_curve = run_learning_curve(ctx, splits.test, arms, records, infos)

    # ---- aggregate, decide, report ---------------------------------------------------------------
    summaries = [
        summarize_arm(arm.name, arm.kind, records[arm.name], infos[arm.name], base.num_parameters)
        for arm in arms
        if arm.name in records
    ]
    report_inputs = dict(
        config=config,
        summaries=summaries,
        records=records,
        overlap=overlap,
        split_sizes={"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
        environment=environment(),
        stopped_early_at=stopped_early_at,
        learning_curve=learning_curve,
    )
    if rank == 0:
        references = {e.id: e.target for e in splits.test}
        report = write_report(run_dir=run_dir, console=console, references=references, **report_inputs)
    else:
        report = build_report(**report_inputs)
    store.close()
    return Result(
        run_dir=run_dir,
        report=report,
        records=records,
        cache_hits=store.cache_stats.hits,
        cache_misses=store.cache_stats.misses,
    )


def _as_config(config: ExperimentConfig | dict | str | Path, overrides: list[str] | None) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            return config_from_dict(apply_overrides(config.model_dump(mode="json"), overrides))
        return config
    if isinstance(config, dict):
        return config_from_dict(apply_overrides(dict(config), overrides or []))
    return load_config(config, overrides)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )


# ---- provenance ------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit()}


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
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2), encoding="utf-8")
