"""What a re-run into the same run directory re-uses: the bundled capitals demo, run once, then
re-run with one setting changed at a time (each into a copy of the first run's directory).

    python benchmarks/bench_reuse.py                   # the demo's arms, one seed, no learning curve
    python benchmarks/bench_reuse.py --threads 1

For each change it prints the wall time against the first run's, the answers read back from the
store and those generated, and whether the report equals the one of a fresh run of the changed
config when `--check-fresh` is given (slower: every change runs twice).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from tuneorprompt.experiment import run_experiment
from tuneorprompt.testbed.demo import demo_config

CHANGES: dict[str, list[str]] = {
    "unchanged": [],
    "metric exact -> contains": ["metric.accuracy=contains"],
    "extraction first_line -> full": ["generation.extract=full"],
    "max_test 150 -> 200": ["data.max_test=200"],
    "one more instruction": ['prompt.instructions=["State the capital city only."]'],
    "max_new_tokens 16 -> 12": ["generation.max_new_tokens=12"],
}
BASE = ["seeds=[0]", "learning_curve.enabled=false", "data.max_test=150"]


def comparable(report: dict) -> list:
    return [(a["name"], a["accuracy"]["value"], a["prompt_tokens"], a["generated_tokens"]) for a in report["arms"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-fresh", action="store_true", help="Also run each changed config from scratch.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        first = run_experiment(demo_config("capitals"), root / "base", overrides=BASE, console=quiet)
        base_seconds = time.perf_counter() - started
        print(f"first run: {base_seconds:.1f} s, {first.cache_misses} answers generated ({args.threads} thread(s))")
        rows = {}
        for name, change in CHANGES.items():
            shutil.copytree(root / "base", root / name)
            started = time.perf_counter()
            rerun = run_experiment(demo_config("capitals"), root / name, overrides=BASE + change, console=quiet)
            seconds = time.perf_counter() - started
            calls = rerun.cache_hits + rerun.cache_misses
            row = {"seconds": seconds, "time_fraction": seconds / base_seconds, "read_back": rerun.cache_hits,
                   "generated": rerun.cache_misses, "reused_share": rerun.cache_hits / calls if calls else None}
            if args.check_fresh:
                fresh = run_experiment(demo_config("capitals"), root / f"{name}-fresh", overrides=BASE + change,
                                       console=quiet)
                row["equals_fresh"] = comparable(fresh.report.to_dict()) == comparable(rerun.report.to_dict())
            rows[name] = row
            fresh_note = f", equals a fresh run: {row['equals_fresh']}" if args.check_fresh else ""
            print(f"{name:32s} {seconds:6.1f} s ({100 * row['time_fraction']:5.1f}% of the first run), "
                  f"{row['read_back']} read back, {row['generated']} generated{fresh_note}")
        print(json.dumps({"first_run_seconds": base_seconds, "threads": args.threads, "changes": rows}, indent=1))


if __name__ == "__main__":
    main()
