"""Peak memory and time of the report's statistics on a large test set: each arm's accuracy and
relevance intervals (`summary.summarize_arm`) and the paired tests of every arm against the
baseline (`report.build.paired_tests`), on synthetic records of 50,000 test items.

    python -m benchmarks.bench_stats                    # 50,000 items, 4 arms x 3 seeds
    python -m benchmarks.bench_stats --smoke            # 2,000 items, figures not recorded

The statistics run in a fresh process that imports neither torch nor a model, so its peak RSS
(ru_maxrss) is the records plus the statistics; the records alone are measured first, beside it.
The script fails when the peak passes --limit-mb (3 GiB by default: issue 19's target for a
50,000-item run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import update_results

CELL = """
import json, resource, sys, time
import numpy as np
from tuneorprompt.records import ExampleRecord
from tuneorprompt.report.build import paired_tests
from tuneorprompt.summary import summarize_arm

items, arms, seeds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
def arm_records(name, accuracy):
    rows = []
    for seed in range(seeds):
        correct = rng.random(items) < accuracy
        relevance = np.clip(rng.normal(0.5 + 0.3 * correct, 0.15), -1, 1)
        rows.append([ExampleRecord(name, seed, "test", f"q{i}", ("Paris",), f"Q{i}?", "Paris." if ok else "Lyon.",
                                   "Paris" if ok else "Lyon", float(ok), float(ok), float(r), 12, 3, 0.01)
                     for i, (ok, r) in enumerate(zip(correct, relevance))])
    return rows
records = {"baseline" if a == 0 else f"arm{a}": arm_records("baseline" if a == 0 else f"arm{a}", 0.5 + 0.1 * a)
           for a in range(arms)}
records_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
for name, rows in records.items():
    summarize_arm(name, "prompt", rows, [{}] * seeds, None, family="prompt", backend="hf")
tests = paired_tests(records, list(records), recommended=list(records)[-1])
print(json.dumps({"records_mb": records_mb, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - started, "paired_tests": len(tests)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000, help="Test items per arm and seed.")
    parser.add_argument("--arms", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--limit-mb", type=float, default=3072, help="Fail when the peak RSS passes this.")
    parser.add_argument("--smoke", action="store_true", help="2,000 items; print, record nothing.")
    args = parser.parse_args()
    items = 2_000 if args.smoke else args.items
    # One thread: numpy's resampling does not use more, and the figure should not depend on the machine.
    done = subprocess.run([sys.executable, "-c", CELL, str(items), str(args.arms), str(args.seeds)],
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    print(f"{items} items, {args.arms} arms x {args.seeds} seeds, {figures['paired_tests']} paired comparisons")
    print(f"{'records alone (peak RSS)':<40} {figures['records_mb']:10.0f} MiB")
    print(f"{'records + statistics (peak RSS)':<40} {figures['peak_mb']:10.0f} MiB")
    print(f"{'statistics wall time':<40} {figures['seconds']:10.1f} s")
    if figures["peak_mb"] > args.limit_mb:
        sys.exit(f"peak RSS {figures['peak_mb']:.0f} MiB is over the {args.limit_mb:.0f} MiB limit")
    if not args.smoke and items == 50_000:
        update_results({"stats_50k_peak_rss_mb": round(figures["peak_mb"]),
                        "stats_50k_seconds": round(figures["seconds"], 1), "stats_50k_threads": 1})


if __name__ == "__main__":
    main()
