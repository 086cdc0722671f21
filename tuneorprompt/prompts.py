"""Prompt construction: the task template, instructions, demonstrations and retrieved passages.

Every arm builds its prompts here, so all arms share one template and one demo format; only what
the arm adds differs. Templates are jinja2 in an immutable sandbox with StrictUndefined: a config
cannot run code, and a misspelt variable is an error instead of silently rendering as "". Each render
has a budget of loop steps and of value sizes, so a template cannot hang a run or fill its memory.

Two shapes, decided by whether the model is used with its chat template:
- plain (base models): one text, instruction, then demos each followed by its answer, then the query;
- chat (instruct models): a conversation, as these models were trained to read one. An optional
  system message (`prompt.system`, and/or the instruction), each demo as a user turn and its answer
  as the assistant's reply, then the query as the last user turn. Answers carry no `answer_prefix`:
  the assistant's reply starts right after the template's header. Putting demos inside one user turn
  instead makes a small chat model talk about the demo questions.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

import jinja2
from jinja2 import nodes, pass_context
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

# A template runs once per prompt, and a real one does little (`{{ input }}`, a loop over a few
# items). The sandbox stops one range() past 100,000 items, but not nested loops (range(100000)
# inside range(100000): 10^10 steps) nor values that double in size, which would hang the run or
# exhaust memory. Each render therefore has a budget, counted rather than timed so that a template
# is refused alike on any machine: a limit hit is a TemplateError naming the template's key.
# Loop iterations plus range() items, every loop of one render together: `for x in range(100000)`,
# the sandbox's largest range, takes 200,000; the budget spent takes 0.1-1 s, by what the loops do.
MAX_RENDER_STEPS = 250_000
MAX_RENDERED_CHARS = 1_000_000  # a prompt, or any string or list built on the way (~250,000 tokens: past any context)


class RenderLimitError(Exception):
    """A render that went past `MAX_RENDER_STEPS` or `MAX_RENDERED_CHARS`; the message says which."""


class _Steps:
    """The steps one render has left."""

    def __init__(self) -> None:
        self.left = MAX_RENDER_STEPS

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise RenderLimitError(f"{MAX_RENDER_STEPS:,} steps (loop iterations and range items)")


_STEPS: ContextVar[_Steps] = ContextVar("template_render_steps")


def _check_size(size: int) -> None:
    if size > MAX_RENDERED_CHARS:
        raise RenderLimitError(f"{MAX_RENDERED_CHARS:,} characters or items in one value")


def _size(value: object) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operator that can make a value vastly larger than its operands checked
    before it runs: repetition (`*`), concatenation (`+`) and powers of integers (`**`)."""

    intercepted_binops = frozenset({"*", "+", "**"})

    def call_binop(self, context, operator: str, left, right):
        sizes = (_size(left), _size(right))
        if operator == "*" and None in sizes and sizes != (None, None):
            count = right if sizes[0] is not None else left
            if isinstance(count, int):
                _check_size((sizes[0] or sizes[1]) * count)
        elif operator == "+" and None not in sizes:
            _check_size(sizes[0] + sizes[1])
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            _check_size(right * abs(left).bit_length() // 3)  # decimal digits: ~0.3 per bit
        return super().call_binop(context, operator, left, right)


@pass_context  # a context filter is never constant-folded at compile time, when no render budget exists
def _counted(context, iterable):
    """Each item drawn from `iterable` (a loop's) takes one render step."""
    steps = _STEPS.get()
    for item in iterable:
        steps.take(1)
        yield item


@pass_context
def _bounded_text(context, text: str) -> str:
    _check_size(len(text))
    return text


def _bounded_range(*args: int) -> range:
    """range(), its items taking render steps when it is made (a `|sum` of it costs as a loop does)."""
    items = range(*args)
    steps = _STEPS.get()
    steps.take(len(items[: steps.left + 1]))  # sliced: len() of range(10**30) itself overflows
    return items


_ENV = _BoundedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_ENV.globals["range"] = _bounded_range
_ENV.filters |= {"_counted": _counted, "_bounded_text": _bounded_text}


class TemplateError(ValueError):
    """A prompt template that does not compile or render; the message names the template's config key."""


def _bounded(tree: nodes.Template) -> nodes.Template:
    """`tree` with every loop's items counted (`for` loops, and a recursive loop's `loop(...)` calls)
    and every `~` concatenation's size checked."""
    def wrap(node: nodes.Expr, name: str) -> nodes.Filter:
        return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)

    for loop in list(tree.find_all(nodes.For)):
        loop.iter = wrap(loop.iter, "_counted")
    for call in list(tree.find_all(nodes.Call)):
        if isinstance(call.node, nodes.Name) and call.node.name == "loop" and call.args:
            call.args[0] = wrap(call.args[0], "_counted")
    for parent in list(tree.find_all(nodes.Node)):
        for field in parent.fields:
            child = getattr(parent, field)
            if isinstance(child, nodes.Concat):
                setattr(parent, field, wrap(child, "_bounded_text"))
            elif isinstance(child, list):
                child[:] = [wrap(c, "_bounded_text") if isinstance(c, nodes.Concat) else c for c in child]
    return tree


def compile_template(source: str, key: str) -> jinja2.Template:
    """`key`: the template's config key, as errors name it."""
    try:
        return _ENV.from_string(_bounded(_ENV.parse(source)))
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"{key}: template syntax error on line {error.lineno}: {error.message}") from None


def _render(template: jinja2.Template, key: str, example_id: str, **variables: str) -> str:
    token = _STEPS.set(_Steps())
    try:
        rendered, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            _check_size(size)
            rendered.append(chunk)
        return "".join(rendered)
    except RenderLimitError as error:
        raise TemplateError(f"{key}: rendering exceeded {error} for example {example_id!r}") from None
    except jinja2.UndefinedError as error:
        names = ", ".join(sorted(variables))
        raise TemplateError(f"{key}: {error.message} (available: {names})") from None
    except jinja2.exceptions.SecurityError as error:
        raise TemplateError(f"{key}: not allowed in a template: {error}") from None
    # A filter or operator misused on this example's text: `input|format(1)` raises TypeError, `|int` of a
    # word then `/ 0` ZeroDivisionError. Only rendering shows it, and perhaps only for some examples.
    # RecursionError: a macro or recursive loop that calls itself without end.
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as error:
        raise TemplateError(
            f"{key}: cannot be rendered for example {example_id!r}: {type(error).__name__}: {error}"
        ) from None
    finally:
        _STEPS.reset(token)


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
        # Rendered questions by input: a render is a pure function of the input, and a search builds the
        # same questions (as queries and as demos) thousands of times.
        self._plain: dict[str, str] = {}

    def plain(self, example: Example) -> str:
        if example.input not in self._plain:
            self._plain[example.input] = _render(self._template, "prompt.template", example.id, input=example.input)
        return self._plain[example.input]

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

    def instruction_texts(self) -> list[str]:
        """The user's candidate instructions first, then the built-in ones, without repeats."""
        builtin = list(BUILTIN_INSTRUCTIONS) if self.config.builtin_instructions else []
        return list(dict.fromkeys(self.config.instructions + builtin))

    def instruction_candidates(self) -> list[PlacedInstruction]:
        """`instruction_texts`, with a chat template each both before the question and in the system
        message (the dev split chooses)."""
        texts = self.instruction_texts()
        if not texts:
            raise TemplateError("prompt.instructions is empty and builtin_instructions is false: nothing to try")
        placements = ("prompt", "system") if self.chat else ("prompt",)
        return [PlacedInstruction(text, placement) for text in texts for placement in placements]

    def check_renders(self, examples: Sequence[Example], instructions: bool) -> None:
        """Render `prompt.template` for every example and, with `instructions`, the instruction
        template with every candidate on the first: a template that fails on some example, loops
        without end or grows without bound is refused (TemplateError naming its key) before a model
        loads. A real template costs ~25 microseconds a render: one second per 40,000 examples."""
        questions = [self.plain(example) for example in examples]
        if instructions and examples:
            for text in self.instruction_texts():
                self.with_instruction(questions[0], text, examples[0].id)

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
