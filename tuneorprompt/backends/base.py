"""The backend contract: three methods, plain dataclasses in and out.

Anything that can complete text greedily implements it: the Hugging Face backend (`hf.py`), a
fine-tuned model (the same class over other weights), a served endpoint, or a scripted fake in tests.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from tuneorprompt.records import Completion, GenerationSettings


class PromptTooLongError(ValueError):
    """A prompt (plus the tokens to generate or score) that does not fit the model's context."""


@runtime_checkable
class Backend(Protocol):
    # Identifies everything behind the backend that decides the completion of a given prompt text:
    # weights (and adapter), dtype, device type, chat-template use. Generation-cache entries are keyed
    # by it, so two setups never share cached answers; it is the same in every process.
    fingerprint: str
    # Longest prompt + completion the model accepts, in tokens.
    context_length: int
    # Parameter count for FLOPs estimates; None when unknown (a served endpoint).
    num_parameters: int | None

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[Completion]:
        """Greedy completions, one per prompt, in the order given; independent of batching."""
        ...

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities (nats) of each continuation given its context."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for `text` as a prompt (used to fit demos into the context)."""
        ...
