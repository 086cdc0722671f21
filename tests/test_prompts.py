import re
import time

import numpy as np
import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tuneorprompt.config import PromptConfig
from tuneorprompt.prompts import (
    BUILTIN_INSTRUCTIONS,
    PlacedInstruction,
    PromptFormat,
    PromptRecipe,
    TemplateError,
    compile_template,
)
from tuneorprompt.records import Example, Message
from tuneorprompt.retrieval import NearestDemos, PassageRetriever, RandomDemos

POOL = tuple(Example(f"t{i}", f"What is the capital of country {i}?", (f"City{i}",)) for i in range(10))
QUERY = Example("q", "What is the capital of France?", ("Paris",))


def test_plain_demo_and_instruction_layout():
    fmt = PromptFormat(PromptConfig())
    recipe = PromptRecipe(fmt, instruction=PlacedInstruction("Be brief."), demos=RandomDemos(POOL, 2, seed=0))
    prompt = recipe.build(QUERY)
    assert prompt.startswith("Be brief.\nQuestion: What is the capital of country")
    assert prompt.endswith("\n\nQuestion: What is the capital of France?\nAnswer:")
    assert prompt.count("Answer: City") == 2
    # Shortening drops demos and keeps the query last.
    assert recipe.build(QUERY, max_demos=0) == "Be brief.\nQuestion: What is the capital of France?\nAnswer:"


def test_undefined_variable_and_sandbox_are_errors():
    with pytest.raises(TemplateError, match="prompt.template: 'question' is undefined"):
        PromptFormat(PromptConfig(template="Q: {{ question }}")).plain(QUERY)
    with pytest.raises(TemplateError, match="not allowed"):
        PromptFormat(PromptConfig(template="{{ input.__class__.__mro__ }}")).plain(QUERY)
    with pytest.raises(TemplateError, match="syntax error"):
        PromptFormat(PromptConfig(template="{{ input "))


@pytest.mark.parametrize(
    "config, context, key",
    [(PromptConfig(template="{{ input|format(1) }}"), None, "prompt.template"),
     (PromptConfig(instruction_template="{{ instruction|int / 0 }}"), None, "prompt.instruction_template"),
     (PromptConfig(), "{{ passages|round }}", "context.template")],
    ids=["prompt.template", "prompt.instruction_template", "context.template"],
)
def test_a_filter_misused_at_render_time_names_the_template_and_the_example(config, context, key):
    # These compile, so only rendering shows the misuse: one TemplateError (a ValueError, the CLI's one
    # line and exit 2), not the filter's own TypeError or ZeroDivisionError.
    recipe = PromptRecipe(
        PromptFormat(config), instruction=PlacedInstruction("Be brief."), passages=lambda example: ["Paris."],
        context_template=compile_template(context or "{{ passages }}{{ prompt }}", "context.template"),
    )
    with pytest.raises(TemplateError, match=rf"^{re.escape(key)}: cannot be rendered for example 'q': \w+Error: "):
        recipe.build(QUERY)


def test_instruction_candidates_user_first_without_repeats():
    fmt = PromptFormat(PromptConfig(instructions=["Mine.", BUILTIN_INSTRUCTIONS[0]]))
    assert fmt.instruction_candidates() == [PlacedInstruction(t) for t in ["Mine.", *BUILTIN_INSTRUCTIONS]]
    with pytest.raises(TemplateError):
        PromptFormat(PromptConfig(builtin_instructions=False)).instruction_candidates()
    # With a chat template every candidate is also tried as the system message.
    chat = PromptFormat(PromptConfig(instructions=["Mine."], builtin_instructions=False), chat=True)
    assert chat.instruction_candidates() == [PlacedInstruction("Mine.", "prompt"), PlacedInstruction("Mine.", "system")]


def test_chat_demos_are_turns_and_answers_carry_no_prefix():
    fmt = PromptFormat(PromptConfig(), chat=True)
    demos = RandomDemos(POOL, 2, seed=0)
    conversation = PromptRecipe(fmt, demos=demos).build(QUERY)
    shown = demos(QUERY)
    assert conversation == (
        Message("user", fmt.plain(shown[0])), Message("assistant", shown[0].target),
        Message("user", fmt.plain(shown[1])), Message("assistant", shown[1].target),
        Message("user", "Question: What is the capital of France?\nAnswer:"),
    )
    assert fmt.answer(QUERY) == "Paris"  # no " " after the assistant header
    # Without demos or a system message, the prompt is the single user turn's text.
    assert PromptRecipe(fmt).build(QUERY) == "Question: What is the capital of France?\nAnswer:"


def test_chat_instruction_in_the_system_message_or_before_the_question():
    fmt = PromptFormat(PromptConfig(system="You answer geography questions."), chat=True)
    in_system = PromptRecipe(fmt, instruction=PlacedInstruction("Be brief.", "system")).build(QUERY)
    assert in_system == (
        Message("system", "You answer geography questions.\n\nBe brief."),
        Message("user", "Question: What is the capital of France?\nAnswer:"),
    )
    in_prompt = PromptRecipe(fmt, instruction=PlacedInstruction("Be brief.")).build(QUERY)
    assert in_prompt == (
        Message("system", "You answer geography questions."),
        Message("user", "Be brief.\nQuestion: What is the capital of France?\nAnswer:"),
    )


def test_random_demos_fixed_per_seed_and_vary_across_seeds():
    first = [d.id for d in RandomDemos(POOL, 3, seed=0)(QUERY)]
    assert first == [d.id for d in RandomDemos(POOL, 3, seed=0)(POOL[0])]
    assert any(first != [d.id for d in RandomDemos(POOL, 3, seed=s)(QUERY)] for s in range(1, 5))
    with pytest.raises(ValueError, match="only 10"):
        RandomDemos(POOL, 11, seed=0)


VOCABULARY = ["capital", "of", "france", "spain", "colour", "the", "sky"]


def _bag_of_words_embed(texts):
    vectors = np.array([[t.lower().split().count(w) for w in VOCABULARY] for t in texts], dtype=float)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_nearest_demos_put_the_most_similar_last():
    pool = (Example("a", "capital of France", ("Paris",)), Example("b", "colour of the sky", ("blue",)))
    demos = NearestDemos(pool, 2, _bag_of_words_embed)(Example("q", "capital of Spain", ("Madrid",)))
    assert [d.id for d in demos] == ["b", "a"]
    assert [d.id for d in NearestDemos(pool, 1, _bag_of_words_embed)(Example("q", "the sky", ("x",)))] == ["b"]


def test_bm25_retrieves_the_passage_about_the_query():
    passages = ["Velmora's capital is Tashket.", "Orvane exports tin.", "Kesh borders Orvane to the north."]
    retriever = PassageRetriever(passages, top_k=2, method="bm25")
    best = retriever(Example("q", "What is the capital of Velmora?", ("Tashket",)))
    assert best[-1] == passages[0]


def test_bm25_is_not_led_by_rare_function_words():
    # Passages of one shape, where "of" and "the" occur only in a few country names: without stop
    # words they outweighed the one word that matters.
    passages = [f"City{i} is a city in Country{i}, with about {i},000 inhabitants." for i in range(30)]
    passages += ["Brazzaville is a city in Republic of the Congo.", "Kinshasa is a city in Democratic Republic of the Congo."]
    passages.append("Chaozhou is a city in China.")
    retriever = PassageRetriever(passages, top_k=1, method="bm25")
    assert retriever(Example("q", "Which country is the city of Chaozhou in?", ("China",))) == [passages[-1]]


@pytest.mark.parametrize(
    "template",
    [
        # A value that doubles each time round: 2^60 characters, through `~` or `+`.
        "{% set ns = namespace(s=input) %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s=[input]) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{{ 7 ** (10 ** 9) }}",  # a billion-bit integer: minutes of arithmetic before it prints
        # A recursive loop, each level 1,000 wide, four levels deep: 10^12 iterations.
        "{% for x in range(1000) recursive %}{% if loop.depth < 4 %}{{ loop(range(1000)) }}{% endif %}{% endfor %}",
        "{% for c in input %}{% for d in input %}{% for e in input %}{% for f in input %}{% endfor %}{% endfor %}"
        "{% endfor %}{% endfor %}",
    ],
    ids=["concat-doubling", "list-doubling", "power", "recursive-loop", "loops-over-the-input"],
)
def test_a_render_past_its_budget_is_one_error_naming_the_template(template):
    with pytest.raises(TemplateError, match=r"^prompt\.template: rendering exceeded .* for example 'q'$"):
        PromptFormat(PromptConfig(template=template)).plain(QUERY)


@pytest.mark.parametrize("template", ["{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
                                      "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}"])
def test_a_template_calling_itself_without_end_is_one_error(template):
    with pytest.raises(TemplateError, match=r"^prompt\.template: cannot be rendered for example 'q': RecursionError"):
        PromptFormat(PromptConfig(template=template)).plain(QUERY)


def test_bounded_rendering_keeps_what_templates_render_and_their_speed():
    template = ("{% for word in input.split() if word|length > 2 %}{{ loop.index }}/{{ loop.length }} {{ word ~ '!' }} "
                "{% endfor %}{{ range(3)|sum * 2 ** 3 }} {{ [1] + [2] }} {{ 'ab' * 2 }}")
    plain_jinja = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    expected = plain_jinja.from_string(template).render(input=QUERY.input)
    assert PromptFormat(PromptConfig(template=template)).plain(QUERY) == expected
    # The default template on 20,000 examples: ~0.5 s (25 microseconds a render) when the machine is idle.
    examples = [Example(f"e{i}", f"What is the capital of country {i}?", ("x",)) for i in range(20_000)]
    started = time.perf_counter()
    PromptFormat(PromptConfig()).check_renders(examples, instructions=True)
    assert time.perf_counter() - started < 5
