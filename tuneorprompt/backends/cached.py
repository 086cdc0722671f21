"""A backend whose generations go through the run's store: only prompts never seen for this
serving identity and these decoding settings reach the wrapped backend. Composition, so any
backend (local weights, a fine-tuned model, a served endpoint) gets the same cache."""

from __future__ import annotations

from typing import Sequence

from tuneorprompt.backends.base import Backend
from tuneorprompt.records import Completion, GenerationSettings
from tuneorprompt.store import Store


class CachedBackend:
    def __init__(self, backend: Backend, store: Store):
        self.inner = backend
        self.store = store
        self.fingerprint = backend.fingerprint
        self.context_length = backend.context_length
        self.num_parameters = backend.num_parameters

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[Completion]:
        keys = [Store.generation_key(self.fingerprint, settings, p) for p in prompts]
        found = self.store.cached(keys)
        missing = list(dict.fromkeys(p for p, k in zip(prompts, keys) if k not in found))
        self.store.cache_stats.hits += len(prompts) - len(missing)
        self.store.cache_stats.misses += len(missing)
        if missing:
            fresh = self.inner.generate(missing, settings)
            self.store.put_generations(self.fingerprint, settings, missing, fresh)
            found.update({Store.generation_key(self.fingerprint, settings, p): c for p, c in zip(missing, fresh)})
        return [found[k] for k in keys]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        return self.inner.loglikelihood(requests)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)
