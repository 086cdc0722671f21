"""Prompt construction: the task template, instructions, demonstrations and retrieved passages.

Every arm builds its prompts here, so all arms share one template and one demo format; only what
the arm adds differs. Templates are jinja2 in an immutable sandbox with StrictUndefined: a config
cannot run code, and a misspelt variable is an error instead of silently rendering as "".

Two shapes, decided by whether the model is used with its chat template:
- plain (base models): one text, instruction, then demos each followed by its answer, then the query;
- chat (instruct models): a conversation, as these models were trained to read one. An optional
  system message (`prompt.system`, and/or the instruction), each demo as a user turn and its answer
  as the assistant's reply, then the query as the last user turn. Answers carry no `answer_prefix`:
  the assistant's reply starts right after the template's header. Putting demos inside one user turn
  instead makes a small chat model talk about the demo questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneorprompt.config import PromptConfig
from tuneorprompt.records import Example, Message, Prompt

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
    """`key`: the template's config key, as errors name it."""
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"{key}: template syntax error on line {error.lineno}: {error.message}") from None


def _render(template: jinja2.Template, key: str, example_id: str, **variables: str) -> str:
    try:
        return template.render(**variables)
    except jinja2.UndefinedError as error:
        names = ", ".join(sorted(variables))
        raise TemplateError(f"{key}: {error.message} (available: {names})") from None
    except jinja2.exceptions.SecurityError as error:
        raise TemplateError(f"{key}: not allowed in a template: {error}") from None
    # A filter or operator misused on this example's text: `input|format(1)` raises TypeError, `|int` of a
    # word then `/ 0` ZeroDivisionError. Only rendering shows it, and perhaps only for some examples.
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as error:
        raise TemplateError(
            f"{key}: cannot be rendered for example {example_id!r}: {type(error).__name__}: {error}"
        ) from None


@dataclass(frozen=True)
class PlacedInstruction:
    """A candidate instruction and where it goes: before the question (`prompt`, through
    `prompt.instruction_template`) or, with a chat template, in the system message (`system`)."""

    text: str
    placement: Literal["prompt", "system"] = "prompt"

    @property
    def label(self) -> str:
        return self.text if self.placement == "prompt" else f"[system] {self.text}"


class PromptFormat:
    """The task's prompt format, compiled once from the config and shared by every arm. `chat`:
    whether the model reads prompts through its chat template (see the module docstring)."""

    def __init__(self, config: PromptConfig, chat: bool = False):
        self.config = config
        self.chat = chat
        self._template = compile_template(config.template, "prompt.template")
        self._instruction_template = compile_template(config.instruction_template, "prompt.instruction_template")

    def plain(self, example: Example) -> str:
        return _render(self._template, "prompt.template", example.id, input=example.input)

    def demonstration(self, example: Example) -> str:
        """A solved example in plain text: the plain prompt followed by its reference answer."""
        return self.plain(example) + self.answer(example)

    def answer(self, example: Example) -> str:
        """What the model should produce after the prompt (also the fine-tuning completion and a demo's
        answer). With a chat template, the reference alone: the template's assistant header ends the
        prompt, and an instruct model's reply does not start with a space."""
        return self.reply(example.target)

    def reply(self, text: str) -> str:
        """`text` as the model's reply to a prompt: after `answer_prefix` in plain text, alone after a
        chat template's assistant header."""
        return text if self.chat else self.config.answer_prefix + text

    def with_instruction(self, prompt: str, instruction: str, example_id: str) -> str:
        return _render(
            self._instruction_template, "prompt.instruction_template", example_id, instruction=instruction, prompt=prompt
        )

    def with_demonstrations(self, prompt: str, demos: Sequence[Example]) -> str:
        return self.config.demo_separator.join([self.demonstration(d) for d in demos] + [prompt])

    def instruction_candidates(self) -> list[PlacedInstruction]:
        """The user's candidates first, then the built-in ones, without repeats; with a chat template
        each both before the question and in the system message (the dev split chooses)."""
        builtin = list(BUILTIN_INSTRUCTIONS) if self.config.builtin_instructions else []
        texts = list(dict.fromkeys(self.config.instructions + builtin))
        if not texts:
            raise TemplateError("prompt.instructions is empty and builtin_instructions is false: nothing to try")
        placements = ("prompt", "system") if self.chat else ("prompt",)
        return [PlacedInstruction(text, placement) for text in texts for placement in placements]

    def conversation(self, question: str, demos: Sequence[Example], system: str | None) -> tuple[Message, ...]:
        turns = [Message("system", system)] if system else []
        for demo in demos:
            turns += [Message("user", self.plain(demo)), Message("assistant", self.answer(demo))]
        return (*turns, Message("user", question))

    def system_message(self, instruction: PlacedInstruction | None) -> str | None:
        """`prompt.system`, then a system-placed instruction; None leaves the template's default."""
        parts = [self.config.system, instruction.text if instruction and instruction.placement == "system" else None]
        return "\n\n".join(p for p in parts if p) or None


def with_passages(template: jinja2.Template, prompt: str, passages: Sequence[str], example_id: str) -> str:
    return _render(template, "context.template", example_id, passages="\n".join(passages), prompt=prompt)


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
    instruction: PlacedInstruction | None = None
    demos: DemoSource | None = None
    passages: PassageSource | None = None
    context_template: jinja2.Template | None = None

    def build(self, example: Example, max_demos: int | None = None) -> Prompt:
        question = self.format.plain(example)
        if self.passages is not None and self.context_template is not None:
            question = with_passages(self.context_template, question, self.passages(example), example.id)
        demos: list[Example] = []
        if self.demos is not None:
            demos = self.demos(example)
            if max_demos is not None:
                # Drop the demos farthest from the query first (the list ends with the closest).
                demos = demos[len(demos) - max_demos :] if max_demos > 0 else []
        in_prompt = self.instruction is not None and self.instruction.placement == "prompt"
        if self.format.chat:
            if in_prompt:
                question = self.format.with_instruction(question, self.instruction.text, example.id)
            system = self.format.system_message(self.instruction)
            if not demos and system is None:
                return question  # one user turn: the same text a plain prompt would carry
            return self.format.conversation(question, demos, system)
        prompt = self.format.with_demonstrations(question, demos) if self.demos is not None else question
        return self.format.with_instruction(prompt, self.instruction.text, example.id) if in_prompt else prompt

    @property
    def num_demos(self) -> int:
        return self.demos.k if self.demos is not None else 0
