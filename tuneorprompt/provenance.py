"""Where a run's results came from: the tuneorprompt commit, package versions, Python, platform and
CPU threads, recorded in environment.json, in report.json and as MLflow tags."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("tuneorprompt", "torch", "transformers", "peft", "trl", "accelerate", "sentence-transformers")


def environment(thread_changes: list[dict] | None = None) -> dict[str, Any]:
    """`thread_changes`: torch's thread count as it followed the machine's load (`machine.ThreadsFollowLoad`),
    None when the run did not follow it (`model.num_threads` given, or no model computed here)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit(), "cpu_cores": os.cpu_count(), "torch_threads": torch_threads(),
            "threads_follow_load": thread_changes is not None, "thread_changes": thread_changes or []}


def torch_threads() -> int | None:
    """The CPU threads torch computes with in this process now (model.num_threads, set when a local model
    loads, and changed as the run followed the load); None when the process never imported torch: it computed nothing with it (answers served by
    an endpoint, or every result read back from the store)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def git_commit() -> str | None:
    """Commit of the tuneorprompt checkout in use (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
