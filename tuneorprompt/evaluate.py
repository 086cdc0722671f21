"""The one evaluator. Every arm, prompt or fine-tuned, is scored here: same decoding settings,
same answer extraction, same matcher, same relevance model. An arm only decides which backend
answers and how its prompts are built (a `System`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from tuneorprompt.backends.base import Backend, PromptTooLongError, ScoringBackend
from tuneorprompt.backends.text import reply_cap
from tuneorprompt.metrics import MetricError
from tuneorprompt.prompts import PromptRecipe
from tuneorprompt.records import Completion, Example, ExampleRecord, GenerationSettings, Prompt

if TYPE_CHECKING:  # what an arm returns (`arms.System`); arms imports this module
    from tuneorprompt.arms import System

# Prompts handed to the backend per call: large enough for the backend to sort by length and fill
# its batches, small enough that the progress bar moves and an interrupt loses little.
CHUNK = 64

# The key under which a System's info records how many of its prompts on a split lost demos to fit
# the context; `summary.summarize_arm` reads it back from the arm's stored info.
PROMPTS_SHORTENED = {"test": "prompts_shortened_test", "dev": "prompts_shortened_dev"}
# Replies cut to `text.reply_cap` characters (by `CachedBackend`), counted per split in an arm's info.
REPLIES_CUT = {"test": "replies_cut_test", "dev": "replies_cut_dev"}


class Progress(Protocol):
    """What the evaluator reports progress to (`progress.make_progress`: a bar on a terminal, log lines elsewhere)."""

    def add_task(self, description: str, total: float | None = ..., completed: float = ..., status: str = ...) -> int:
        """total None: work of unknown length (`progress.long_step`)."""

    def advance(self, task: int, advance: float = ...) -> None: ...

    def update(self, task: int, *, total: float | None = ..., completed: float | None = ..., advance: float = ...,
               status: str = ...) -> None:
        """`status`: what the task says beside its counts (fine-tuning's epoch, loss and learning rate)."""

    def remove_task(self, task: int) -> None: ...


@dataclass(frozen=True)
class LabelChoice:
    """`metric.choice_by_loglikelihood`: answers are chosen among labels by log-likelihood, not generated."""

    labels: tuple[str, ...]
    replies: tuple[str, ...]  # each label as the model's reply continues the prompt (`PromptFormat.reply`)


@dataclass(frozen=True)
class Scorer:
    extract: Callable[[str], str]  # completion -> answer
    matcher: Callable[[str, tuple[str, ...]], float]  # (answer, acceptable targets) -> [0, 1]
    lenient: Callable[[str, tuple[str, ...], str], float]  # (reply, acceptable targets, question) -> 0/1
    relevance: Callable[[list[str], list[str]], np.ndarray] | None  # (responses, references) -> cosine [-1, 1]
    choice: LabelChoice | None = None  # None: completions are generated


def _fit(recipe: PromptRecipe, example: Example, backend: Backend, budget: int) -> tuple[Prompt, int, bool]:
    """The example's prompt with the least relevant demos dropped until it is at most `budget` tokens
    (or no demo is left): (prompt, its tokens, whether demos were dropped)."""
    prompt = recipe.build(example)
    demos = recipe.num_demos
    while (length := backend.count_tokens(prompt)) > budget and demos > 0:
        demos -= 1
        prompt = recipe.build(example, max_demos=demos)
    return prompt, length, demos < recipe.num_demos


def overlong_prompts(
    recipe: PromptRecipe, examples: Sequence[Example], backend: Backend, settings: GenerationSettings
) -> list[tuple[Example, int]]:
    """(example, prompt tokens) for each example whose prompt leaves no room for `max_new_tokens` in
    the model's context even without demos."""
    budget = backend.context_length - settings.max_new_tokens
    lengths = [(example, _fit(recipe, example, backend, budget)[1]) for example in examples]
    return [(example, length) for example, length in lengths if length > budget]


def fit_prompts(recipe: PromptRecipe, examples: Sequence[Example], backend: Backend, settings: GenerationSettings):
    """Prompts for `examples`, dropping the least relevant demos where a prompt would not leave
    room for `max_new_tokens` in the model's context. Returns (prompts, number of prompts shortened).

    A prompt that does not fit even without demos is an error naming the example (a run checks
    this before it starts; see `experiment.check_prompts_fit`): nothing is ever truncated."""
    budget = backend.context_length - settings.max_new_tokens
    prompts, shortened = [], 0
    for example in examples:
        prompt, length, dropped = _fit(recipe, example, backend, budget)
        if length > budget:
            raise PromptTooLongError(
                f"example {example.id!r} ({example.source or 'data'}): its prompt is {length} tokens, and with "
                f"generation.max_new_tokens = {settings.max_new_tokens} it exceeds the model's context of "
                f"{backend.context_length} tokens"
            )
        shortened += dropped
        prompts.append(prompt)
    return prompts, shortened


def choose_labels(backend: Backend, prompts: Sequence[Prompt], choice: LabelChoice) -> list[Completion]:
    """Each prompt's completion is the label whose reply has the highest log-likelihood after it (ties:
    the earlier label). The rest of the evaluator treats it as a generated completion, so records,
    both scoring views and relevance mean what they mean for generating arms.

    Tokens: `prompt_tokens` is the prompt's count, as generation records it (a scorer that shares the
    prompt's KV cache across labels reads it once; the HF backend reads it once per label, so FLOPs
    from these counts are those of the efficient scorer), and `generated_tokens` is 0: nothing is
    generated, and the labels' few scored tokens are left out. `seconds` is the scoring time per prompt.
    """
    if not isinstance(backend, ScoringBackend):  # plan_run refuses such a run; this guards direct use
        raise TypeError(f"metric.choice_by_loglikelihood: {type(backend).__name__} cannot score continuations")
    started = time.perf_counter()
    # One call for every (prompt, label) pair, so that the backend batches them.
    scores = backend.loglikelihood([(prompt, reply) for prompt in prompts for reply in choice.replies])
    seconds = (time.perf_counter() - started) / max(1, len(prompts))
    width = len(choice.replies)
    completions = []
    for row, prompt in enumerate(prompts):
        label_scores = scores[row * width : (row + 1) * width]
        best = max(range(width), key=label_scores.__getitem__)  # the first of equal maxima
        completions.append(Completion(choice.labels[best], backend.count_tokens(prompt), 0, seconds))
    return completions


def _answer(
    backend: Backend, prompts: Sequence[Prompt], settings: GenerationSettings, choice: LabelChoice | None
) -> list[Completion]:
    return backend.generate(prompts, settings) if choice is None else choose_labels(backend, prompts, choice)


def _score(scorer: Scorer, answer: str, example: Example) -> float:
    try:
        return scorer.matcher(answer, example.targets)
    except MetricError as error:
        raise MetricError(f"example {example.id!r} ({example.source or 'data'}): {error}") from None


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
        system.info[PROMPTS_SHORTENED[split]] = shortened
    task = progress.add_task(f"{system.name} [seed {system.seed}] {split}", total=len(prompts)) if progress else None
    completions = []
    for start in range(0, len(prompts), CHUNK):
        completions += _answer(system.backend, prompts[start : start + CHUNK], settings, scorer.choice)
        if progress is not None:
            progress.advance(task, len(prompts[start : start + CHUNK]))
    if progress is not None:
        progress.remove_task(task)

    cut = sum(len(c.text) >= reply_cap(settings.max_new_tokens) for c in completions)
    if cut:
        system.info[REPLIES_CUT[split]] = cut
    rendered = [system.backend.render(p) for p in prompts]  # the exact text the model saw
    answers = [scorer.extract(c.text) for c in completions]
    correct = [_score(scorer, a, e) for a, e in zip(answers, examples)]
    lenient = [scorer.lenient(c.text, e.targets, e.input) for c, e in zip(completions, examples)]
    if scorer.relevance is not None:
        relevance = scorer.relevance(answers, [e.target for e in examples]).tolist()
    else:
        relevance = [float("nan")] * len(examples)
    return [
        ExampleRecord(
            arm=system.name, seed=system.seed, split=split, example_id=e.id, targets=e.targets, prompt=p,
            completion=c.text, answer=a, correct=float(ok), correct_lenient=float(loose), relevance=float(r),
            prompt_tokens=c.prompt_tokens, generated_tokens=c.generated_tokens, seconds=c.seconds,
        )
        for e, p, c, a, ok, loose, r in zip(examples, rendered, completions, answers, correct, lenient, relevance)
    ]


def accuracy(records: Sequence[ExampleRecord]) -> float:
    return float(np.mean([r.correct for r in records])) if records else 0.0
