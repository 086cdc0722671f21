"""Where a run's results came from: the tuneorprompt commit, package versions, Python, platform and
CPU threads, recorded in environment.json, in report.json and as MLflow tags."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("tuneorprompt", "torch", "transformers", "peft", "trl", "accelerate", "sentence-transformers")


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit(), "cpu_cores": os.cpu_count(), "torch_threads": torch_threads()}


def torch_threads() -> int:
    """The CPU threads torch computes with in this process.

    A run that loads a local model has imported torch and set this count (model.num_threads) by the
    time it records its environment. A process that has not imported torch yet (answers served by
    an endpoint) imports it here, only for this figure, and reads the count torch starts with:
    OMP_NUM_THREADS when set, else the machine's physical cores."""
    import torch  # here, not at the top: commands and runs that need no torch read this module too

    return torch.get_num_threads()


def git_commit() -> str | None:
    """Commit of the tuneorprompt checkout in use (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
