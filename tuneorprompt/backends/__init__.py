"""Backends turn prompts into completions. `base.Backend` is the whole contract; `load_backend`
serves the run's resolved model (`model.resolve_model`) with the engine its `kind` names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from tuneorprompt.backends.base import Backend
from tuneorprompt.model import ResolvedModel
from tuneorprompt.records import Completion, GenerationSettings, Prompt

if TYPE_CHECKING:
    from rich.console import Console

    from tuneorprompt.evaluate import Progress

__all__ = ["Backend", "load_backend"]


def load_backend(model: ResolvedModel, progress: Progress | None = None, console: Console | None = None) -> Backend:
    """The backend that serves `model`. Heavy or optional packages are imported only for their kind.

    Weights in this process (`hf`, `vllm`) load on first use: a run that reads every answer from its
    store never loads them, nor imports torch. A served model (`openai`) is reached at once, so that a
    server that is down or does not serve the model is found before anything runs; it warns on `console`
    (default: stderr) when a reply names another model. `progress` shows the `hf` weights loading."""
    if model.kind == "openai":
        from tuneorprompt.backends.openai import load_openai_backend

        return load_openai_backend(model.spec, console)
    if model.kind == "vllm":
        from tuneorprompt.backends.vllm import check_installed, load_vllm_backend

        check_installed()
        return LazyBackend(model, lambda: load_vllm_backend(model))
    return LazyScoringBackend(model, lambda: _load_hf(model, progress))


def _load_hf(model: ResolvedModel, progress: Progress | None) -> Backend:
    from tuneorprompt.backends.hf import load_hf_backend  # torch and transformers: only when the weights load

    return load_hf_backend(model.weights, progress=progress)


class LazyBackend:
    """A backend loaded on its first use. Its identity is known before (the resolved model's
    fingerprint and chat-template use, which the loaded backend is checked to match), so content keys
    and prompts need nothing loaded."""

    def __init__(self, model: ResolvedModel, load: Callable[[], Backend]):
        self.fingerprint = model.fingerprint
        self.chat_template = model.chat_template
        self._load = load
        self._backend: Backend | None = None

    @property
    def loaded(self) -> Backend:
        if self._backend is None:
            backend = self._load()
            if (backend.fingerprint, backend.chat_template) != (self.fingerprint, self.chat_template):
                raise ValueError(f"the model loaded as {backend.fingerprint[:12]} (chat template {backend.chat_template}), "
                                 f"not as resolved ({self.fingerprint[:12]}, {self.chat_template})")
            self._backend = backend
        return self._backend

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    def render(self, prompt: Prompt) -> str:
        return self.loaded.render(prompt)

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        return self.loaded.generate(prompts, settings)

    def count_tokens(self, prompt: Prompt) -> int:
        return self.loaded.count_tokens(prompt)

    def release(self) -> None:
        if self._backend is not None:
            self._backend.release()


class LazyScoringBackend(LazyBackend):
    """A lazily loaded backend that can also score continuations (the HF backend: `base.ScoringBackend`)."""

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        return self.loaded.loglikelihood(requests)
