"""The backend against lm-evaluation-harness on identical prompts, the same local model directory
and the same thread count: examples/second and whether the answers are the same.

    pip install lm-eval==0.4.13          # not a dependency of tuneorprompt; only this script needs it
    python -m benchmarks.bench_lm_eval                     # SmolLM2-135M-Instruct, capitals, 1 thread
    python -m benchmarks.bench_lm_eval --batch-sizes 8 16 32 --n 120
    python -m benchmarks.bench_lm_eval --model testbed --smoke

How the prompts are made identical: lm-eval runs a `generate_until` task defined over the same
local JSONL test file, its `doc_to_text` being tuneorprompt's default `prompt.template` (both are
jinja2 over the record's fields: "Question: {{ input }}\nAnswer:"), greedy, `until: ["\\n"]`, the same
`max_gen_toks`), with `apply_chat_template=True` (for a model with a chat template), so each request is the question as the single
user turn rendered by the model's chat template with its generation prompt; tuneorprompt's
`baseline` arm builds the same one-turn conversation. The script checks that the rendered texts are equal before timing anything.

Timing: the model is loaded once for each tool, before timing; each tool is warmed up on a few
questions; then each answers the first n and the first 8 questions, in turns (lm-eval at each
batch size, then tuneorprompt), twice. Seconds per question = (time for n - time for 8) / (n - 8),
so what a call costs whatever its size (lm-eval building its task from the file) cancels, as does
nothing of the generation; the faster of the two repeats counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import load_benchmark_model, machine, model_dir, print_figure, task_examples, update_results
from tuneorprompt.config import PromptConfig
from tuneorprompt.prompts import PromptFormat, PromptRecipe
from tuneorprompt.realworld import TASKS_DIR
from tuneorprompt.records import GenerationSettings

MAX_NEW_TOKENS = 24
STOP = ("\n",)
SMALL = 8

TASK_YAML = """\
task: tuneorprompt_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test_file}
test_split: test
output_type: generate_until
doc_to_text: {template}
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_new_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def lm_eval_answers(lm, task_dir: Path, n: int, chat: bool) -> tuple[list[str], list[str], float]:
    """(rendered prompts, answers, seconds) of lm-eval on the first n test questions."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    output = lm_eval.simple_evaluate(
        model=lm, tasks=["tuneorprompt_bench"], task_manager=TaskManager(include_path=str(task_dir)),
        limit=n, apply_chat_template=chat, log_samples=True, bootstrap_iters=0, verbosity="ERROR",
    )
    seconds = time.perf_counter() - started
    samples = sorted(output["samples"]["tuneorprompt_bench"], key=lambda s: s["doc_id"])
    return [s["arguments"][0][0] for s in samples], [s["resps"][0][0] for s in samples], seconds


def timed_generate(backend, prompts, settings) -> tuple[list[str], float]:
    started = time.perf_counter()
    answers = [c.text for c in backend.generate(prompts, settings)]
    return answers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, testbed, or a model directory")
    parser.add_argument("--task", default="capitals", help="a task under tuneorprompt/realworld/tasks")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64], help="lm-eval's, tried in turn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a few questions, one lm-eval batch size, nothing written")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.batch_sizes = 10, args.batch_sizes[:1]
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.models.huggingface import HFLM

    backend = load_benchmark_model(args.model, args.threads)
    lm = HFLM(pretrained=str(model_dir(args.model)), device="cpu", dtype="float32", batch_size=args.batch_sizes[0])
    torch.set_num_threads(args.threads)  # after both loads: neither may change it
    test = task_examples(args.task, "test")[: args.n]
    recipe = PromptRecipe(PromptFormat(PromptConfig(), chat=backend.chat_template))
    prompts = [recipe.build(example) for example in test]
    settings = GenerationSettings(MAX_NEW_TOKENS, STOP)

    with tempfile.TemporaryDirectory(prefix="bench-lm-eval-") as scratch:
        task_dir = Path(scratch)
        test_file = TASKS_DIR / args.task / "test.jsonl"
        (task_dir / "task.yaml").write_text(TASK_YAML.format(
            test_file=test_file, max_new_tokens=MAX_NEW_TOKENS, template=json.dumps(PromptConfig().template)
        ))
        theirs_rendered, _, _ = lm_eval_answers(lm, task_dir, 2, backend.chat_template)  # warm-up
        ours_rendered = [backend.render(p) for p in prompts[:2]]
        if theirs_rendered != ours_rendered:
            raise SystemExit(f"the prompts differ:\n lm-eval: {theirs_rendered[0]!r}\n ours:    {ours_rendered[0]!r}")
        backend.generate(prompts[:2], settings)

        # Seconds per question from two sizes (n and SMALL questions): the difference cancels what a
        # call costs whatever its size (lm-eval builds its task from the file, about a second here).
        lm_eval_seconds: dict[int, float] = {}
        ours_seconds = float("inf")
        small = min(SMALL, args.n - 1)
        for _ in range(2):
            for batch_size in args.batch_sizes:
                lm.batch_size_per_gpu = batch_size
                rendered, theirs, seconds = lm_eval_answers(lm, task_dir, args.n, backend.chat_template)
                *_, small_seconds = lm_eval_answers(lm, task_dir, small, backend.chat_template)
                per_question = (seconds - small_seconds) / (args.n - small)
                lm_eval_seconds[batch_size] = min(per_question, lm_eval_seconds.get(batch_size, float("inf")))
            ours, seconds = timed_generate(backend, prompts, settings)
            _, small_seconds = timed_generate(backend, prompts[:small], settings)
            ours_seconds = min((seconds - small_seconds) / (args.n - small), ours_seconds)

    same_prompts = rendered == [backend.render(p) for p in prompts]
    # lm-eval returns the text before its stop sequence; so does the backend.
    identical = sum(a == b for a, b in zip(theirs, ours))
    best_batch = min(lm_eval_seconds, key=lm_eval_seconds.get)
    print(f"{machine()}; {torch.get_num_threads()} thread(s); model {args.model}; {args.n} {args.task} test questions; "
          f"max_new_tokens {MAX_NEW_TOKENS}, stop {STOP!r}; rendered prompts identical: {same_prompts}")
    for batch_size, seconds in sorted(lm_eval_seconds.items()):
        print_figure(f"lm-eval 0.4.13 HF, batch {batch_size}", 1 / seconds, "examples/s")
    print_figure(f"tuneorprompt baseline, batch {backend.batch_size}", 1 / ours_seconds, "examples/s",
                 lm_eval_seconds[best_batch] / ours_seconds)
    print(f"answers identical: {identical}/{args.n}" + ("   (smoke: too few questions for the timings to mean anything)" if args.smoke else ""))
    for a, b, example in zip(theirs, ours, test):
        if a != b:
            print(f"  differs on {example.id}: lm-eval {a!r}, tuneorprompt {b!r}")
    if not args.smoke:
        update_results({
            "eval_speedup_vs_lm_eval": round(lm_eval_seconds[best_batch] / ours_seconds, 2),
            "predictions_identical_to_lm_eval": identical == args.n and same_prompts,
            "lm_eval_examples_per_second": round(1 / lm_eval_seconds[best_batch], 2),
            "tuneorprompt_vs_lm_eval_examples_per_second": round(1 / ours_seconds, 2),
            "lm_eval_best_batch_size": best_batch,
            "lm_eval_comparison": json.dumps({"n": args.n, "threads": torch.get_num_threads(), "model": args.model}),
        })


if __name__ == "__main__":
    main()
