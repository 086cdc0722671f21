"""The one evaluator. Every arm, prompt or fine-tuned, is scored here: same decoding settings,
same answer extraction, same matcher, same relevance model. An arm only decides which backend
answers and how its prompts are built (a `System`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from rich.progress import Progress

from tuneorprompt.backends.base import Backend
from tuneorprompt.prompts import PromptRecipe
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings

# Prompts handed to the backend per call: large enough for the backend to sort by length and fill
# its batches, small enough that the progress bar moves and an interrupt loses little.
CHUNK = 64


@dataclass
class System:
    """An adapted system ready to answer: a backend (base or fine-tuned weights) and a prompt recipe."""

    name: str
    seed: int
    backend: Backend
    recipe: PromptRecipe
    info: dict = field(default_factory=dict)  # chosen instruction, k, training cost, ...


@dataclass(frozen=True)
class Scorer:
    extract: Callable[[str], str]  # completion -> answer
    matcher: Callable[[str, tuple[str, ...]], float]  # (answer, acceptable targets) -> [0, 1]
    relevance: Callable[[list[str], list[str]], np.ndarray] | None  # (responses, references) -> cosine [-1, 1]


def fit_prompts(recipe: PromptRecipe, examples: Sequence[Example], backend: Backend, settings: GenerationSettings):
    """Prompts for `examples`, dropping the least relevant demos where a prompt would not leave
    room for `max_new_tokens` in the model's context. Returns (prompts, number of prompts shortened)."""
    budget = backend.context_length - settings.max_new_tokens
    prompts, shortened = [], 0
    for example in examples:
        prompt = recipe.build(example)
        demos = recipe.num_demos
        while demos > 0 and backend.count_tokens(prompt) > budget:
            demos -= 1
            prompt = recipe.build(example, max_demos=demos)
        shortened += demos < recipe.num_demos
        prompts.append(prompt)
    return prompts, shortened


def evaluate(
    system: System,
    examples: Sequence[Example],
    split: str,
    settings: GenerationSettings,
    scorer: Scorer,
    progress: Progress | None = None,
) -> list[ExampleRecord]:
    prompts, shortened = fit_prompts(system.recipe, examples, system.backend, settings)
    if shortened:
        system.info[f"prompts_shortened_{split}"] = shortened
    task = progress.add_task(f"{system.name} [seed {system.seed}] {split}", total=len(prompts)) if progress else None
    completions = []
    for start in range(0, len(prompts), CHUNK):
        completions += system.backend.generate(prompts[start : start + CHUNK], settings)
        if progress is not None:
            progress.advance(task, len(prompts[start : start + CHUNK]))
    if progress is not None:
        progress.remove_task(task)

    answers = [scorer.extract(c.text) for c in completions]
    correct = [scorer.matcher(a, e.targets) for a, e in zip(answers, examples)]
    if scorer.relevance is not None:
        relevance = scorer.relevance(answers, [e.target for e in examples]).tolist()
    else:
        relevance = [float("nan")] * len(examples)
    return [
        ExampleRecord(
            arm=system.name, seed=system.seed, split=split, example_id=e.id, prompt=p, completion=c.text,
            answer=a, correct=float(ok), relevance=float(r), prompt_tokens=c.prompt_tokens,
            generated_tokens=c.generated_tokens, seconds=c.seconds,
        )
        for e, p, c, a, ok, r in zip(examples, prompts, completions, answers, correct, relevance)
    ]


def accuracy(records: Sequence[ExampleRecord]) -> float:
    return float(np.mean([r.correct for r in records])) if records else 0.0
