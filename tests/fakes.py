"""A scripted fake backend: answers are a pure function of the prompt, so tests of selection,
caching and statistics can say exactly what each arm should score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from tuneorprompt import arms
from tuneorprompt.config import arm_spec_class
from tuneorprompt.records import Completion, GenerationSettings, Prompt


@dataclass
class ScriptedBackend:
    answer: Callable[[str], str]  # rendered prompt -> completion text
    fingerprint: str = "scripted"
    context_length: int = 4096
    chat_template: bool = False  # with True, conversations render as "role: content" lines
    prompts_seen: list[str] = field(default_factory=list)
    # (rendered prompt, continuation) -> log-likelihood; by default the shorter continuation is likelier.
    likelihood: Callable[[str, str], float] = lambda prompt, continuation: -float(len(continuation))
    scored: list[tuple[str, str]] = field(default_factory=list)  # (rendered prompt, continuation) pairs scored

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return f"user: {prompt}\nassistant:" if self.chat_template else prompt
        assert self.chat_template, "a conversation given to a backend without a chat template"
        return "".join(f"{turn.role}: {turn.content}\n" for turn in prompt) + "assistant:"

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        texts = [self.render(p) for p in prompts]
        self.prompts_seen += texts
        completions = []
        for prompt in texts:
            text = self.answer(prompt)
            for stop in settings.stop:
                text = text.split(stop, 1)[0]
            completions.append(Completion(text, self.count_tokens(prompt), len(text.split()) + 1, 0.001))
        return completions

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        pairs = [(self.render(prompt), continuation) for prompt, continuation in requests]
        self.scored += pairs
        return [self.likelihood(prompt, continuation) for prompt, continuation in pairs]

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.render(prompt).split())

    def release(self) -> None:
        """Nothing to free: the answers are a function."""


def family_of(kind: str) -> str:
    """The family of the arms a config `kind` expands into, read from the arm registry, for tests that
    build report rows by hand."""
    return arms._ARM_CLASSES[arm_spec_class(kind)].family
