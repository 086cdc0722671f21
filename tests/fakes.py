"""A scripted fake backend: answers are a pure function of the prompt, so tests of selection,
caching and statistics can say exactly what each arm should score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from tuneorprompt.records import Completion, GenerationSettings


@dataclass
class ScriptedBackend:
    answer: Callable[[str], str]  # prompt -> completion text
    fingerprint: str = "scripted"
    context_length: int = 4096
    num_parameters: int | None = 1000
    prompts_seen: list[str] = field(default_factory=list)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[Completion]:
        self.prompts_seen += prompts
        completions = []
        for prompt in prompts:
            text = self.answer(prompt)
            for stop in settings.stop:
                text = text.split(stop, 1)[0]
            completions.append(Completion(text, self.count_tokens(prompt), len(text.split()) + 1, 0.001))
        return completions

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        return [-float(len(continuation)) for _, continuation in requests]

    def count_tokens(self, text: str) -> int:
        return len(text.split())
