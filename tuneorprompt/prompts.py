"""Prompt construction: the task template, instructions, demonstrations and retrieved passages.

Every arm builds its prompts here, so all arms share one template and one demo format; only what
the arm adds differs. Templates are jinja2 in an immutable sandbox with StrictUndefined: a config
cannot run code, and a misspelt variable is an error instead of silently rendering as "".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneorprompt.config import PromptConfig
from tuneorprompt.records import Example

# Tried by the `instruction` arm next to the user's own; the best on dev is kept. Phrased as
# practitioners phrase them; the first is the product brief's "clear instruction".
BUILTIN_INSTRUCTIONS: tuple[str, ...] = (
    "Answer the question precisely and concisely.",
    "Give only the answer, with no explanation.",
    "Reply with a single word or short phrase.",
    "You are a helpful assistant. Answer the question.",
)

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
)


class TemplateError(ValueError):
    """A prompt template that does not compile or render; the message names the template's config key."""


def compile_template(source: str, key: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"prompt.{key}: template syntax error on line {error.lineno}: {error.message}") from None


def _render(template: jinja2.Template, key: str, **variables: str) -> str:
    try:
        return template.render(**variables)
    except jinja2.UndefinedError as error:
        names = ", ".join(sorted(variables))
        raise TemplateError(f"prompt.{key}: {error.message} (available: {names})") from None
    except jinja2.exceptions.SecurityError as error:
        raise TemplateError(f"prompt.{key}: not allowed in a template: {error}") from None


class PromptFormat:
    """The task's prompt format, compiled once from the config and shared by every arm."""

    def __init__(self, config: PromptConfig):
        self.config = config
        self._template = compile_template(config.template, "template")
        self._instruction_template = compile_template(config.instruction_template, "instruction_template")

    def plain(self, example: Example) -> str:
        return _render(self._template, "template", input=example.input)

    def demonstration(self, example: Example) -> str:
        """A solved example: the plain prompt followed by its reference answer."""
        return self.plain(example) + self.answer(example)

    def answer(self, example: Example) -> str:
        """What the model should produce after the prompt (also the fine-tuning completion)."""
        return self.config.answer_prefix + example.target

    def with_instruction(self, prompt: str, instruction: str) -> str:
        return _render(self._instruction_template, "instruction_template", instruction=instruction, prompt=prompt)

    def with_demonstrations(self, prompt: str, demos: Sequence[Example]) -> str:
        return self.config.demo_separator.join([self.demonstration(d) for d in demos] + [prompt])

    def instruction_candidates(self) -> list[str]:
        builtin = list(BUILTIN_INSTRUCTIONS) if self.config.builtin_instructions else []
        candidates = list(dict.fromkeys(self.config.instructions + builtin))  # the user's first, no repeats
        if not candidates:
            raise TemplateError("prompt.instructions is empty and builtin_instructions is false: nothing to try")
        return candidates


def with_passages(template: jinja2.Template, prompt: str, passages: Sequence[str]) -> str:
    return _render(template, "context template", passages="\n".join(passages), prompt=prompt)


class DemoSource(Protocol):
    """Demonstrations for a query, ordered so the most relevant comes last (next to the query)."""

    k: int

    def __call__(self, example: Example) -> list[Example]: ...


PassageSource = Callable[[Example], list[str]]


@dataclass(frozen=True)
class PromptRecipe:
    """How one arm turns a query into a prompt: instruction, then demonstrations, then the query.

    `demos` and `passages` are per-query (retrieved) or fixed (a seeded random draw); both are
    functions of the query example only, never of its target.
    """

    format: PromptFormat
    instruction: str | None = None
    demos: DemoSource | None = None
    passages: PassageSource | None = None
    context_template: jinja2.Template | None = None

    def build(self, example: Example, max_demos: int | None = None) -> str:
        prompt = self.format.plain(example)
        if self.passages is not None and self.context_template is not None:
            prompt = with_passages(self.context_template, prompt, self.passages(example))
        if self.demos is not None:
            demos = self.demos(example)
            if max_demos is not None:
                # Drop the demos farthest from the query first (the list ends with the closest).
                demos = demos[len(demos) - max_demos :] if max_demos > 0 else []
            prompt = self.format.with_demonstrations(prompt, demos)
        if self.instruction is not None:
            prompt = self.format.with_instruction(prompt, self.instruction)
        return prompt

    @property
    def num_demos(self) -> int:
        return self.demos.k if self.demos is not None else 0
