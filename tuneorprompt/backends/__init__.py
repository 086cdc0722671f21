"""Backends turn prompts into completions. `base.Backend` is the whole contract; `load_backend`
serves the run's resolved model (`model.resolve_model`) with the engine its `kind` names."""

from __future__ import annotations

from tuneorprompt.backends.base import Backend
from tuneorprompt.model import ResolvedModel

__all__ = ["Backend", "load_backend"]


def load_backend(model: ResolvedModel) -> Backend:
    """The backend that serves `model`. Heavy or optional packages are imported only for their kind."""
    if model.kind == "openai":
        from tuneorprompt.backends.openai import load_openai_backend

        return load_openai_backend(model.spec)
    if model.kind == "vllm":
        from tuneorprompt.backends.vllm import load_vllm_backend

        return load_vllm_backend(model)
    from tuneorprompt.backends.hf import load_hf_backend

    return load_hf_backend(model.weights)
