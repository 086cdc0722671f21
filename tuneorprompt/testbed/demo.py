"""The bundled experiments that `tuneorprompt demo` runs: `experiments/<task>.yaml`, ordinary
configs whose paths are relative to them (the model and task files written by the testbed build)."""

from __future__ import annotations

from pathlib import Path

from tuneorprompt.config import ExperimentConfig, load_config

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
DEMO_TASKS = ("capitals", "newfacts")


def demo_config(task: str) -> ExperimentConfig:
    if task not in DEMO_TASKS:
        raise ValueError(f"unknown demo task {task!r}: choose one of {', '.join(DEMO_TASKS)}")
    return load_config(EXPERIMENTS_DIR / f"{task}.yaml")
