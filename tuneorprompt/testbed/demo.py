"""The bundled experiments that `tuneorprompt demo` runs: each task folder holds its data and an
`experiment.yaml` whose paths are relative to it, so the demo is an ordinary config run."""

from __future__ import annotations

from pathlib import Path

from tuneorprompt.config import ExperimentConfig, load_config

TASKS_DIR = Path(__file__).parent / "tasks"
DEMO_TASKS = ("capitals", "newfacts")


def demo_config(task: str) -> ExperimentConfig:
    if task not in DEMO_TASKS:
        raise ValueError(f"unknown demo task {task!r}: choose one of {', '.join(DEMO_TASKS)}")
    return load_config(TASKS_DIR / task / "experiment.yaml")
