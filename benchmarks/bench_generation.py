"""Examples/second of the batched backend against a one-prompt-at-a-time `model.generate` loop.

    python benchmarks/bench_generation.py                      # the bundled testbed model, if built
    python benchmarks/bench_generation.py --model DIR --n 200 --batch-size 16 --threads 1

Both paths run the same prompts through the same weights with greedy decoding, the same
max_new_tokens and the same stop string; the loop is what a notebook does (encode, `generate`,
decode the new tokens, cut at the stop string). Each is warmed up once before timing. Prompts mix
zero to three demonstrations, so their lengths differ and batches carry real padding.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from tuneorprompt.backends.hf import HFBackend, encode_prompt, load_hf_backend
from tuneorprompt.config import ModelConfig
from tuneorprompt.records import GenerationSettings
from tuneorprompt.testbed import MODEL_DIR

REPO = Path(__file__).resolve().parents[1]
COUNTRIES = ["France", "Italy", "Spain", "Portugal", "Norway", "Greece", "Poland", "Chile", "Peru", "Japan"]
CAPITALS = ["Paris", "Rome", "Madrid", "Lisbon", "Oslo", "Athens", "Warsaw", "Santiago", "Lima", "Tokyo"]
STOP = ("\n",)


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        demos = rng.sample(range(len(COUNTRIES)), k=rng.randint(0, 3) + 1)
        *shown, asked = demos
        lines = [f"Question: What is the capital of {COUNTRIES[i]}?\nAnswer: {CAPITALS[i]}\n\n" for i in shown]
        prompts.append("".join(lines) + f"Question: What is the capital of {COUNTRIES[asked]}?\nAnswer:")
    return prompts


def one_at_a_time(backend: HFBackend, prompts: list[str], max_new_tokens: int) -> list[str]:
    tokenizer, model = backend.tokenizer, backend.model
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, stop_strings=list(STOP))
    texts = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt, backend.chat_template)], device=model.device)
            output = model.generate(
                ids, attention_mask=torch.ones_like(ids), generation_config=config, tokenizer=tokenizer
            )
            text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
            texts.append(text.split(STOP[0])[0])
    return texts


def timed(work) -> tuple[object, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def default_model(scratch: Path) -> Path:
    """The bundled testbed model, or else a tiny random GPT-2 built in `scratch` by the test fixtures' builder."""
    if (MODEL_DIR / "config.json").is_file():
        return MODEL_DIR
    spec = importlib.util.spec_from_file_location("tuneorprompt_test_fixtures", REPO / "tests" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    print(f"no testbed model at {MODEL_DIR}: building a tiny random GPT-2 (tests/conftest.py)")
    return fixtures.build_tiny_gpt2(scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: testbed model)")
    parser.add_argument("--n", type=int, default=200, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tiny-gpt2-") as scratch:
        run(args, args.model or default_model(Path(scratch)))


def run(args: argparse.Namespace, model_dir: Path) -> None:
    config = ModelConfig(
        path=str(model_dir), device=args.device, batch_size=args.batch_size, num_threads=args.threads
    )
    backend = load_hf_backend(config)
    prompts = make_prompts(args.n)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, stop=STOP)

    backend.generate(prompts[: args.batch_size], settings)  # warm-up
    one_at_a_time(backend, prompts[:2], args.max_new_tokens)
    looped, loop_seconds = timed(lambda: one_at_a_time(backend, prompts, args.max_new_tokens))
    batched, batch_seconds = timed(lambda: backend.generate(prompts, settings))

    agree = sum(a == c.text for a, c in zip(looped, batched))
    tokens = sum(c.generated_tokens for c in batched)
    print(f"model: {model_dir} ({backend.num_parameters:,} parameters, {backend.model.device}, "
          f"{torch.get_num_threads()} thread(s))")
    print(f"prompts: {args.n}, max_new_tokens {args.max_new_tokens}, stop {STOP!r}, {tokens} tokens generated")
    print(f"one at a time (model.generate loop): {args.n / loop_seconds:8.1f} examples/s")
    print(f"batched HFBackend (batch {args.batch_size}):  {args.n / batch_seconds:8.1f} examples/s")
    print(f"speed-up: {loop_seconds / batch_seconds:.2f}x")
    print(f"outputs agree: {agree}/{args.n}")


if __name__ == "__main__":
    main()
