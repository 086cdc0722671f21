"""A backend whose generations go through the run's store: only prompts never seen for this
serving identity and these decoding settings reach the wrapped backend. Composition, so any
backend (local weights, a fine-tuned model, a served endpoint) gets the same cache."""

from __future__ import annotations

from typing import Sequence

from tuneorprompt.backends.base import Backend
from tuneorprompt.keys import generation_key
from tuneorprompt.records import Completion, GenerationSettings, Prompt
from tuneorprompt.store import Store


class CachedBackend:
    def __init__(self, backend: Backend, store: Store):
        self.inner = backend
        self.store = store
        self.fingerprint = backend.fingerprint
        self.context_length = backend.context_length
        self.chat_template = backend.chat_template

    def render(self, prompt: Prompt) -> str:
        return self.inner.render(prompt)

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        # Keyed by the exact text the model sees: two prompts that render alike are one generation.
        texts = [self.inner.render(p) for p in prompts]
        keys = [generation_key(self.fingerprint, settings, text) for text in texts]
        found = self.store.cached(keys)
        missing = {key: (prompt, text) for prompt, text, key in zip(prompts, texts, keys) if key not in found}
        self.store.cache_stats.hits += len(prompts) - len(missing)
        self.store.cache_stats.misses += len(missing)
        if missing:
            fresh = self.inner.generate([prompt for prompt, _ in missing.values()], settings)
            self.store.put_generations(self.fingerprint, settings, [text for _, text in missing.values()], fresh)
            found.update(zip(missing, fresh))
        return [found[k] for k in keys]

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        if not hasattr(self.inner, "loglikelihood"):  # optional: see base.ScoringBackend
            raise NotImplementedError(f"{type(self.inner).__name__} cannot score continuations by log-likelihood")
        return self.inner.loglikelihood(requests)

    def count_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_tokens(prompt)

    def release(self) -> None:
        """Frees the wrapped backend's weights where it can load them again (`HFBackend.release`);
        a served model holds none here."""
        release = getattr(self.inner, "release", None)
        if release is not None:
            release()
