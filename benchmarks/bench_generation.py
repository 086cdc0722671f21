"""Evaluation throughput: the backend against a one-prompt-at-a-time `model.generate` loop, on the
prompts the tool's own arms build, with the same weights, greedy decoding and stop strings.

    python benchmarks/bench_generation.py                        # SmolLM2-135M-Instruct, capitals, 1 thread
    python benchmarks/bench_generation.py --threads 2 --n 120
    python benchmarks/bench_generation.py --model testbed --smoke  # seconds; what CI runs

For each arm (`baseline`, `instruction` with the instruction in the system message, `few_shot@4`)
three paths run on the same test questions, side by side in one process:
- `loop`: what a notebook does: encode one prompt, `model.generate`, decode the new tokens, cut
  at the stop string;
- `no_prefix_reuse`: the backend's batched greedy decoding with the shared-prefix cache switched off;
- `backend`: the backend as a run uses it (the prompts' shared prefix computed once and its KV
  cache reused, length-sorted batches, finished rows leaving the batch).
Examples/second are computed from each path's whole wall time (the model is loaded once, before
timing; each path is warmed up on a few prompts first). The three paths' answers must be identical.
Figures are written into benchmarks/results.json (merged with other scripts' keys), except in
--smoke mode.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig as HFGenerationConfig

from benchmarks.common import load_benchmark_model, machine, print_figure, task_examples, update_results
from tuneorprompt.backends.hf import HFBackend, encode_prompt
from tuneorprompt.config import PromptConfig
from tuneorprompt.prompts import BUILTIN_INSTRUCTIONS, PlacedInstruction, PromptFormat, PromptRecipe
from tuneorprompt.records import GenerationSettings, Prompt
from tuneorprompt.retrieval import RandomDemos

MAX_NEW_TOKENS = 24  # the real-model demo's setting
STOP = ("\n",)


def arm_prompts(backend: HFBackend, task: str, n: int) -> dict[str, list[Prompt]]:
    """Each arm's test prompts, built by the tool's own recipes."""
    train, test = task_examples(task, "train"), task_examples(task, "test")[:n]
    prompt_format = PromptFormat(PromptConfig(), chat=backend.chat_template)
    instruction = PlacedInstruction(BUILTIN_INSTRUCTIONS[0], "system" if backend.chat_template else "prompt")
    recipes = {
        "baseline": PromptRecipe(prompt_format),
        "instruction": PromptRecipe(prompt_format, instruction=instruction),
        "few_shot@4": PromptRecipe(prompt_format, demos=RandomDemos(tuple(train), 4, seed=0)),
    }
    return {name: [recipe.build(example) for example in test] for name, recipe in recipes.items()}


def one_at_a_time(backend: HFBackend, prompts: list[Prompt]) -> list[str]:
    tokenizer, model = backend.tokenizer, backend.model
    config = HFGenerationConfig(
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1, stop_strings=list(STOP),
        eos_token_id=model.generation_config.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    texts = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt, backend.chat_template)], device=model.device)
            output = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, tokenizer=tokenizer)
            text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
            texts.append(text.split(STOP[0])[0])
    return texts


def batched(backend: HFBackend, prompts: list[Prompt], reuse_prefix: bool) -> list[str]:
    backend.reuse_prefix = reuse_prefix
    try:
        return [c.text for c in backend.generate(prompts, GenerationSettings(MAX_NEW_TOKENS, STOP))]
    finally:
        backend.reuse_prefix = True


def timed(work) -> tuple[list[str], float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, testbed, or a model directory")
    parser.add_argument("--task", default="capitals", help="a task under tuneorprompt/realworld/tasks")
    parser.add_argument("--n", type=int, default=60, help="test questions per arm")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the backend's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="a few prompts, nothing written (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.n = 6
    backend = load_benchmark_model(args.model, args.threads, args.batch_size)
    prompts = arm_prompts(backend, args.task, args.n)
    print(f"{machine()}; {torch.get_num_threads()} thread(s); model {args.model} "
          f"({backend.num_parameters:,} parameters, chat template {backend.chat_template}); batch {backend.batch_size}; "
          f"{args.n} {args.task} test questions per arm; max_new_tokens {MAX_NEW_TOKENS}, stop {STOP!r}")
    results: dict[str, float | bool] = {}
    identical = True
    for arm, arm_prompts_ in prompts.items():
        warm = arm_prompts_[:2]
        one_at_a_time(backend, warm), batched(backend, warm, True), batched(backend, warm, False)
        looped, loop_s = timed(lambda: one_at_a_time(backend, arm_prompts_))
        plain, plain_s = timed(lambda: batched(backend, arm_prompts_, False))
        reused, reuse_s = timed(lambda: batched(backend, arm_prompts_, True))
        same = looped == plain == reused
        identical &= same
        mean_tokens = sum(backend.count_tokens(p) for p in arm_prompts_) / len(arm_prompts_)
        n = len(arm_prompts_)
        print(f"\n{arm}: {mean_tokens:.0f} prompt tokens on average; answers identical on all three paths: {same}")
        print_figure(f"{arm} loop", n / loop_s, "examples/s")
        print_figure(f"{arm} no_prefix_reuse", n / plain_s, "examples/s", loop_s / plain_s)
        print_figure(f"{arm} backend", n / reuse_s, "examples/s", loop_s / reuse_s)
        print_figure(f"{arm} prefix reuse alone", plain_s / reuse_s, "x")
        key = arm.replace("@", "_at_")
        results |= {f"eval_{key}_examples_per_second": round(n / reuse_s, 2),
                    f"eval_{key}_speedup_vs_naive": round(loop_s / reuse_s, 2),
                    f"eval_{key}_prefix_reuse_speedup": round(plain_s / reuse_s, 2)}
    speedups = [v for k, v in results.items() if k.endswith("_speedup_vs_naive")]
    results |= {"eval_speedup_vs_naive": min(speedups), "eval_outputs_identical_to_naive": identical,
                "eval_threads": torch.get_num_threads(), "eval_model": args.model, "eval_n_per_arm": args.n}
    print(f"\neval_speedup_vs_naive (the smallest over the arms): {min(speedups):.2f}x; answers identical: {identical}")
    if not identical:
        raise SystemExit("the backend's answers differ from the one-at-a-time loop's")
    if not args.smoke:
        update_results(results)


if __name__ == "__main__":
    main()
