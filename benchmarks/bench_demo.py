"""What a user waits for: `tuneorprompt demo` (the testbed) and `tuneorprompt demo --model smollm2`
run as commands, their wall time and peak memory, then each re-run unchanged into the same run
directory (everything read back from the store).

    python -m benchmarks.bench_demo                    # both demos (about 10 minutes on 2 cores)
    python -m benchmarks.bench_demo --only testbed
    python -m benchmarks.bench_demo --smoke            # the testbed demo on 20 test items (CI)

Each command runs in a fresh process, as a user runs it, so Python start-up, imports and model
loading count. Peak memory is the child process's peak resident set (getrusage of the finished
child). Thread counts are the demos' own settings (the testbed: 1; SmolLM2: the default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, print_figure, update_results

DEMOS = {"testbed": [], "smollm2": ["--model", "smollm2"]}


def timed_command(arguments: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `tuneorprompt <arguments>` in a child process of its own."""
    command = [sys.executable, "-c", "from tuneorprompt.cli import app; app()", *arguments]
    started = time.perf_counter()
    # A fresh child per command: RUSAGE_CHILDREN's ru_maxrss is the largest of the finished children,
    # so each command runs inside a grandchild whose peak this wrapper reads and prints.
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    output = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    if output.returncode != 0:
        raise SystemExit(f"`tuneorprompt {' '.join(arguments)}` failed:\n{output.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    return seconds, int(output.stdout.strip().splitlines()[-1]) / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(DEMOS), help="one demo (default: both)")
    parser.add_argument("--smoke", action="store_true", help="the testbed demo on 20 test items, nothing written")
    args = parser.parse_args()
    demos = ["testbed"] if args.smoke else [args.only] if args.only else list(DEMOS)
    extra = ["--set", "data.max_test=20"] if args.smoke else []
    print(f"{machine()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    figures = {}
    for demo in demos:
        with tempfile.TemporaryDirectory(prefix=f"bench-demo-{demo}-") as scratch:
            arguments = ["demo", *DEMOS[demo], "--out", str(Path(scratch) / "run"), *extra]
            first, first_peak = timed_command(arguments)
            threads = json.loads((Path(scratch) / "run" / "environment.json").read_text())["torch_threads"]
            rerun, rerun_peak = timed_command(arguments)
        label = "tuneorprompt demo" + (" --model smollm2" if demo == "smollm2" else "")
        print_figure(f"{label} ({threads} torch threads)", first, "s")
        print_figure(f"{label} peak RSS", first_peak, "MiB")
        print_figure(f"{label} re-run unchanged", rerun, "s", rerun / first)
        print_figure(f"{label} re-run peak RSS", rerun_peak, "MiB")
        prefix = "demo" if demo == "testbed" else "real_demo"
        figures |= {f"{prefix}_seconds": round(first, 1), f"{prefix}_peak_rss_mb": round(first_peak),
                    f"{prefix}_rerun_seconds": round(rerun, 1), f"{prefix}_threads": threads, f"{prefix}_rerun_time_fraction": round(rerun / first, 3)}
    if "demo_rerun_time_fraction" in figures:
        figures["rerun_time_fraction"] = figures["demo_rerun_time_fraction"]
    if not args.smoke:
        update_results(figures)


if __name__ == "__main__":
    main()
