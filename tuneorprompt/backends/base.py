"""The backend contract: what the product calls (render, generate, count_tokens, release and three
facts), plain dataclasses in and out.

Anything that can complete text greedily implements it: the Hugging Face backend (`hf.py`), a
fine-tuned model (the same class over other weights), a served endpoint (`openai.py`), vLLM
(`vllm.py`), or a scripted fake in tests. Scoring by log-likelihood is optional (`ScoringBackend`):
an OpenAI-compatible chat endpoint cannot score a given continuation. It is checked once, where a
run needs it (`metric.choice_by_loglikelihood`, refused at plan time for a backend that cannot).
A served backend (`ServedBackend`) also says which models its server's replies named, for the report.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from tuneorprompt.records import Completion, GenerationSettings, Prompt


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
    # Whether prompts are rendered with the model's chat template: arms then build conversations
    # (system message, demos as user/assistant turns) instead of one block of text.
    chat_template: bool

    def render(self, prompt: Prompt) -> str:
        """The exact text the model is given for `prompt` (what the cache and the store key on)."""
        ...

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        """Greedy completions, one per prompt, in the order given; independent of batching."""
        ...

    def count_tokens(self, prompt: Prompt) -> int:
        """Tokens the model would see for `prompt` (used to fit demos into the context)."""
        ...

    def release(self) -> None:
        """Frees what the backend holds in memory (weights) until its next use loads it again;
        fine-tuning calls it before training its own copy of the base model. A no-op where nothing
        is held here (a served model, a fake)."""
        ...


@runtime_checkable
class ScoringBackend(Backend, Protocol):
    """A backend that can also score continuations (the HF backend)."""

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of log-probabilities (nats) of each continuation given its context."""
        ...


@runtime_checkable
class ServedBackend(Protocol):
    """A backend whose answers come from a server (`openai.py`), which names the model behind each reply.

    Only this member, not `Backend`'s: an isinstance check against a runtime protocol reads every
    member, and reading `context_length` of a lazily loaded local backend loads its weights (an
    unchanged re-run must load nothing)."""

    # The model ids the server's replies named in this process, first seen first: what the report says
    # answered. A server can answer under another id than the one asked for (an alias resolved to a
    # snapshot, a proxy that routes elsewhere); empty until a reply names one.
    served_models: list[str]
