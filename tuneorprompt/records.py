"""Plain records that flow between the steps: examples in, completions out of a backend, one
record per (arm, seed, example) out of the evaluator. Aggregation functions take lists of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union


@dataclass(frozen=True)
class Example:
    id: str
    input: str
    targets: tuple[str, ...]  # acceptable answers; targets[0] is the reference for relevance and training
    source: str = ""  # "file:line", for error messages

    @property
    def target(self) -> str:
        return self.targets[0]


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]


@dataclass(frozen=True)
class Message:
    """One turn of a chat conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


# What an arm asks the model: plain text for a model used without a chat template (or, for a chat
# model, the content of its single user turn), or a whole conversation of chat turns that the
# backend renders with the model's template. `Backend.render` gives the exact text the model sees.
Prompt = Union[str, tuple[Message, ...]]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding is greedy for every arm; these are the only knobs, and they are part of the cache key."""

    max_new_tokens: int
    stop: tuple[str, ...] = ("\n",)


@dataclass(frozen=True)
class Completion:
    text: str  # decoded new tokens only, cut before the first stop string
    prompt_tokens: int
    generated_tokens: int  # tokens up to and including the one that completed a stop string (or EOS)
    seconds: float  # wall time of the batch divided by its size (seconds per query)


@dataclass(frozen=True)
class ExampleRecord:
    """One scored test (or dev) query of one arm and seed."""

    arm: str
    seed: int
    split: str
    example_id: str
    targets: tuple[str, ...]  # the example's acceptable answers, as scored
    prompt: str
    completion: str
    answer: str
    correct: float  # strict view: the task's matcher on the extracted answer; 0/1, or in [0, 1] for a user function
    correct_lenient: float  # lenient view: a reference answer appears in the reply (see metrics.lenient_match)
    relevance: float  # cosine similarity of response and reference embeddings, in [-1, 1]
    prompt_tokens: int
    generated_tokens: int
    seconds: float


@dataclass(frozen=True)
class TrainingCost:
    wall_seconds: float
    train_tokens: int  # tokens processed in forward passes over all epochs (prompt + answer, no padding)
    trainable_params: int
    total_params: int
    peak_rss_mb: float
    peak_gpu_mb: float | None
    adapter_mb: float  # size on disk of what the arm saved (adapter, or full weights)
    flops: float  # estimated training FLOPs
    extra: dict = field(default_factory=dict)  # chosen learning rate, epoch, dev accuracy per candidate, ...
