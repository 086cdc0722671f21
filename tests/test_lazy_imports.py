"""Torch, transformers, sentence-transformers and matplotlib each take a second or more to import.
The command line and the modules a run needs before it loads a model import none of them, so that
`init`, `check-data --data-only` and (once the run spine loads models only when an answer is
missing) a re-run whose every answer is in the store start in a fraction of a second.

Each check runs in a fresh interpreter: this test process has imported all of them already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers", "matplotlib")
# Not listed: tuneorprompt.testbed.build, whose work is training a torch model.
LIGHT_MODULES = (
    "tuneorprompt.cli",
    "tuneorprompt.config",
    "tuneorprompt.data",
    "tuneorprompt.example_config",
    "tuneorprompt.keys",
    "tuneorprompt.machine",
    "tuneorprompt.metrics",
    "tuneorprompt.progress",
    "tuneorprompt.prompts",
    "tuneorprompt.provenance",
    "tuneorprompt.records",
    "tuneorprompt.retrieval",
    "tuneorprompt.rundir",
    "tuneorprompt.stats",
    "tuneorprompt.store",
    "tuneorprompt.testbed.demo",
    "tuneorprompt.tracking",
)


def run_fresh(script: str, *args: str) -> str:
    # cwd=ROOT puts this checkout first on the child's path (`-c` adds the working directory).
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_light_modules_import_no_heavy_package():
    # Imported one after another: the first module listed with a heavy package is the one that pulled it in.
    script = f"""
import json, sys
loaded = {{}}
for name in sys.argv[1:]:
    __import__(name)
    loaded[name] = [heavy for heavy in {HEAVY!r} if heavy in sys.modules]
print(json.dumps(loaded))
"""
    loaded = json.loads(run_fresh(script, *LIGHT_MODULES))
    assert list(loaded) == list(LIGHT_MODULES)
    assert {name: heavy for name, heavy in loaded.items() if heavy} == {}


def test_quieting_model_loading_bars_imports_no_transformers_and_still_quiets_them():
    script = """
import sys
from tuneorprompt.cli import _quiet_loading
_quiet_loading()
print("transformers" in sys.modules)
from transformers.utils import logging
print(logging.is_progress_bar_enabled())
"""
    assert run_fresh(script).split() == ["False", "False"]
