"""Which torch thread count to use by default: the backend's throughput at 1 and 2 threads, alone
and with another CPU-bound process running beside it (what a shared machine or a second run does).

    python -m benchmarks.bench_threads                  # SmolLM2-135M-Instruct, 40 capitals questions
    python -m benchmarks.bench_threads --model testbed --smoke
    python -m benchmarks.bench_threads --late 20 --rounds 8   # a neighbour that starts 20 s in

Each cell runs in a fresh process (torch fixes its thread pool at first use), which loads the model,
warms up, then times `generate` on the `baseline` arm's prompts. The competing load is another
process multiplying 1024 x 1024 float32 matrices on one thread for as long as the cell runs.

With --late S, the neighbour starts S seconds after the timing does (as a job started beside a running
experiment), the prompts are answered `--rounds` times in batches of 8, and three cells are compared:
1 thread, 2 threads fixed, and 2 threads following the load (`machine.threads_follow_load`, which
looks at the load between batches). The target: following the load within 1.5x of the 1-thread time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.common import machine, update_results

CELL = """
import json, sys, time, torch
from benchmarks.common import load_benchmark_model, task_examples
from tuneorprompt.config import PromptConfig
from tuneorprompt.prompts import PromptFormat, PromptRecipe
from tuneorprompt.records import GenerationSettings
from contextlib import nullcontext
from tuneorprompt.machine import threads_follow_load
model, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
late, rounds, follow = float(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "follow"
backend = load_benchmark_model(model, threads, batch_size=8 if late >= 0 else None)
recipe = PromptRecipe(PromptFormat(PromptConfig(), chat=backend.chat_template))
prompts = [recipe.build(e) for e in task_examples("capitals", "test")[:n]]
settings = GenerationSettings(24, ("\\n",))
backend.generate(prompts[:4], settings)
neighbour = None
if late >= 0:  # sleeps `late` seconds from now, then computes until killed
    import subprocess
    neighbour = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({late})\\n" + sys.argv[7]])
with threads_follow_load(threads) if follow else nullcontext() as follower:
    started = time.perf_counter()
    for _ in range(rounds):
        backend.generate(prompts, settings)
    seconds = time.perf_counter() - started
if neighbour is not None:
    neighbour.kill()
print(json.dumps({"examples_per_second": rounds * n / seconds, "seconds": seconds, "threads": torch.get_num_threads(),
                  "changes": follower.changes if follower else []}))
"""

LOAD = """
import torch
torch.set_num_threads(1)
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


def cell(model: str, threads: int, n: int, loaded: bool, late: float = -1, rounds: int = 1, follow: bool = False) -> dict:
    competitor = subprocess.Popen([sys.executable, "-c", LOAD]) if loaded else None
    try:
        if competitor:
            time.sleep(1)
        env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        import os

        output = subprocess.run(
            [sys.executable, "-c", CELL, model, str(threads), str(n), str(late), str(rounds),
             "follow" if follow else "fixed", LOAD], capture_output=True, text=True, check=True,
            env=os.environ | env_threads,
        ).stdout
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, testbed, or a model directory")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="a few questions, nothing written (CI)")
    parser.add_argument("--late", type=float, default=None, help="seconds in at which a neighbour starts")
    parser.add_argument("--rounds", type=int, default=8, help="with --late: times the prompts are answered")
    args = parser.parse_args()
    if args.smoke:
        args.n = 6
    print(f"{machine()}; model {args.model}; {args.n} capitals questions per cell (baseline arm)")
    if args.late is not None:
        late_neighbour(args)
        return
    figures = {}
    for loaded in (False, True):
        for threads in (1, 2):
            rate = cell(args.model, threads, args.n, loaded)["examples_per_second"]
            name = f"threads_{threads}_{'with_load' if loaded else 'alone'}_examples_per_second"
            figures[name] = round(rate, 2)
            print(f"{threads} thread(s), {'another CPU-bound process running' if loaded else 'alone':<35} {rate:8.2f} examples/s")
    if not args.smoke:
        update_results(figures)


def late_neighbour(args) -> None:
    """The three cells of --late, each printed as it ends with its time as a ratio of the 1-thread
    cell's; 2 fixed threads last, as the slowest by far on a shared machine."""
    print(f"a neighbour starts {args.late:g} s in; {args.rounds} rounds of {args.n} questions in batches of 8")
    figures, one = {}, None
    for name, threads, follow in (("1 thread", 1, False), ("2 threads following the load", 2, True),
                                  ("2 threads", 2, False)):
        result = cell(args.model, threads, args.n, False, args.late, args.rounds, follow)
        one = one or result["seconds"]
        changes = ", ".join(f"{c['from']}->{c['to']}" for c in result["changes"])
        print(f"{name:<32} {result['seconds']:8.1f} s   ({result['seconds'] / one:.2f}x)"
              + (f"   changes {changes}" if changes else ""), flush=True)
        figures[f"late_neighbour_{name.replace(' ', '_')}_seconds"] = round(result["seconds"], 1)
    if not args.smoke:
        update_results(figures)


if __name__ == "__main__":
    main()
