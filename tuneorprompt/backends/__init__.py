"""Backends turn prompts into completions. `base.Backend` is the whole contract."""

from tuneorprompt.backends.base import Backend

__all__ = ["Backend"]
