"""An unchanged re-run reads every result back and recomputes nothing: it loads no model and imports
none of torch, transformers, sentence-transformers or matplotlib, and gives the same report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tests.test_experiment import write_task
from tuneorprompt.experiment import run_experiment

HEAVY = ("torch", "transformers", "sentence_transformers", "matplotlib")


def test_an_unchanged_rerun_imports_no_heavy_package_and_gives_the_same_report(tiny_gpt2_dir, tmp_path):
    config = {
        "name": "rerun",
        "model": {"path": str(tiny_gpt2_dir), "num_threads": 1, "chat_template": False, "device": "cpu"},
        "data": {**write_task(tmp_path / "data", n=12)},
        "arms": ["baseline", "instruction", {"kind": "few_shot_knn", "k": [1]}, {"kind": "few_shot", "k": [2]}],
        "generation": {"max_new_tokens": 4},
        "seeds": [0, 1],
        "learning_curve": {"enabled": False},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    run_dir = tmp_path / "run"
    run_experiment(config, run_dir, console=Console(file=open(tmp_path / "first.txt", "w")))
    first_json = (run_dir / "report.json").read_text()
    first_page = (run_dir / "report.html").stat().st_mtime_ns

    script = (
        "import json, sys\n"
        "from rich.console import Console\n"
        "from tuneorprompt.experiment import run_experiment\n"
        f"config = json.load(open({str(tmp_path / 'config.json')!r}))\n"
        f"result = run_experiment(config, {str(run_dir)!r}, console=Console(file=sys.stderr))\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules],\n"
        "                   'generated': result.cache_misses}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"heavy": [], "generated": 0}
    second = json.loads((run_dir / "report.json").read_text())
    # The same numbers and verdict; the environment says torch computed nothing in the re-run.
    assert {k: v for k, v in second.items() if k != "environment"} == {
        k: v for k, v in json.loads(first_json).items() if k != "environment"}
    assert second["environment"]["torch_threads"] is None
    assert (run_dir / "report.html").stat().st_mtime_ns == first_page  # nothing new to draw: kept as it was
