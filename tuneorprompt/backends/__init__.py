"""Backends turn prompts into completions. `base.Backend` is the whole contract; `load_backend`
turns the config's `model` (a discriminated union on `kind`) into one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tuneorprompt.backends.base import Backend
from tuneorprompt.config import ModelConfig, ModelSpec, OpenAIModelConfig, VLLMModelConfig

__all__ = ["Backend", "load_backend", "local_weights", "ServeTrained"]

# Serves a fine-tuned model: (the base model's hf config, the adapter directory or None) -> Backend.
# Fine-tuning receives one (`finetune.finetune(serve=...)`) instead of importing a loader.
ServeTrained = Callable[[ModelConfig, "Path | None"], Backend]


def load_backend(spec: ModelSpec) -> Backend:
    """The backend `spec` describes. Heavy or optional packages are imported only for their kind."""
    if isinstance(spec, OpenAIModelConfig):
        from tuneorprompt.backends.openai import load_openai_backend

        return load_openai_backend(spec)
    if isinstance(spec, VLLMModelConfig):
        from tuneorprompt.backends.vllm import load_vllm_backend

        return load_vllm_backend(spec)
    from tuneorprompt.backends.hf import load_hf_backend

    return load_hf_backend(spec)


def local_weights(spec: ModelSpec) -> ModelConfig | None:
    """The local model fine-tuning arms train (and serve with transformers), or None when `spec` has
    none (a served model without `local_path`): those arms are then skipped."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, OpenAIModelConfig):
        if spec.local_path is None:
            return None
        # Same prompts as the served model: conversations in chat mode, plain text in completions mode.
        return ModelConfig(path=spec.local_path, chat_template=spec.mode == "chat")
    return ModelConfig(path=spec.path, revision=spec.revision, dtype=spec.dtype, chat_template=spec.chat_template)
