"""A backend whose generations go through the run's store: only prompts never seen for this
serving identity and these decoding settings reach the wrapped backend. Composition, so any
backend (local weights, a fine-tuned model, a served endpoint) gets the same cache, and the same
cap on a reply's size (`text.cap_reply`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tuneorprompt.backends.base import Backend, ScoringBackend
from tuneorprompt.backends.text import cap_reply
from tuneorprompt.keys import generation_key
from tuneorprompt.records import Completion, GenerationSettings, Prompt
from tuneorprompt.store import Store


@dataclass
class CacheCounts:
    """Answers a run read back from its store (hits) and had generated (misses). One object per run,
    shared by every `CachedBackend` the run makes (the base model's and each fine-tuned model's)."""

    hits: int = 0
    misses: int = 0


class CachedBackend:
    def __init__(self, backend: Backend, store: Store, counts: CacheCounts):
        self.inner = backend
        self.store = store
        self.counts = counts
        self.fingerprint = backend.fingerprint
        self.context_length = backend.context_length
        self.chat_template = backend.chat_template
        # Whether log-likelihood requests can pass through, decided once (base.ScoringBackend). A run
        # that scores refuses a backend that cannot at plan time, so this error means a misuse of the API.
        self._scorer = backend if isinstance(backend, ScoringBackend) else None

    def render(self, prompt: Prompt) -> str:
        return self.inner.render(prompt)

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        # Keyed by the exact text the model sees: two prompts that render alike are one generation.
        texts = [self.inner.render(p) for p in prompts]
        keys = [generation_key(self.fingerprint, settings, text) for text in texts]
        found = self.store.cached(keys)
        missing = {key: (prompt, text) for prompt, text, key in zip(prompts, texts, keys) if key not in found}
        self.counts.hits += len(prompts) - len(missing)
        self.counts.misses += len(missing)
        if missing:
            # Every reply of every backend, served or local, enters the run here: capped once, before
            # it is stored or scored (the evaluator counts the cut ones for the scoring audit).
            fresh = [cap_reply(completion, settings.max_new_tokens)
                     for completion in self.inner.generate([prompt for prompt, _ in missing.values()], settings)]
            self.store.put_generations(self.fingerprint, settings, [text for _, text in missing.values()], fresh)
            found.update(zip(missing, fresh))
        return [found[k] for k in keys]

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Not cached: a score is one forward pass, and the arm's records (what a re-run reads back)
        hold the answers chosen with it."""
        if self._scorer is None:
            raise TypeError(f"{type(self.inner).__name__} cannot score continuations by log-likelihood")
        return self._scorer.loglikelihood(requests)

    def count_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_tokens(prompt)

    def release(self) -> None:
        self.inner.release()
