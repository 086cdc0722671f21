"""Which torch thread count to use by default: the backend's throughput at 1 and 2 threads, alone
and with another CPU-bound process running beside it (what a shared machine or a second run does).

    python -m benchmarks.bench_threads                  # SmolLM2-135M-Instruct, 40 capitals questions
    python -m benchmarks.bench_threads --model testbed --smoke

Each cell runs in a fresh process (torch fixes its thread pool at first use), which loads the model,
warms up, then times `generate` on the `baseline` arm's prompts. The competing load is another
process multiplying 1024 x 1024 float32 matrices on one thread for as long as the cell runs.
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
model, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
backend = load_benchmark_model(model, threads)
recipe = PromptRecipe(PromptFormat(PromptConfig(), chat=backend.chat_template))
prompts = [recipe.build(e) for e in task_examples("capitals", "test")[:n]]
settings = GenerationSettings(24, ("\\n",))
backend.generate(prompts[:4], settings)
started = time.perf_counter()
backend.generate(prompts, settings)
print(json.dumps({"examples_per_second": n / (time.perf_counter() - started), "threads": torch.get_num_threads()}))
"""

LOAD = """
import torch
torch.set_num_threads(1)
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


def cell(model: str, threads: int, n: int, loaded: bool) -> float:
    competitor = subprocess.Popen([sys.executable, "-c", LOAD]) if loaded else None
    try:
        if competitor:
            time.sleep(1)
        env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        import os

        output = subprocess.run(
            [sys.executable, "-c", CELL, model, str(threads), str(n)], capture_output=True, text=True, check=True,
            env=os.environ | env_threads,
        ).stdout
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    return json.loads(output.strip().splitlines()[-1])["examples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, testbed, or a model directory")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="a few questions, nothing written (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.n = 6
    print(f"{machine()}; model {args.model}; {args.n} capitals questions per cell (baseline arm)")
    figures = {}
    for loaded in (False, True):
        for threads in (1, 2):
            rate = cell(args.model, threads, args.n, loaded)
            name = f"threads_{threads}_{'with_load' if loaded else 'alone'}_examples_per_second"
            figures[name] = round(rate, 2)
            print(f"{threads} thread(s), {'another CPU-bound process running' if loaded else 'alone':<35} {rate:8.2f} examples/s")
    if not args.smoke:
        update_results(figures)


if __name__ == "__main__":
    main()
