"""The protocol's text rules that every backend shares, free of torch so that a served backend
(`kind: openai`) never imports it: where a completion is cut (`cut_at_stop`), and how a prompt is
rendered and encoded by a tokenizer (`render_prompt`, `encode_prompt`). The tokenizer is passed in:
this module never loads one, so it imports neither torch nor transformers.
"""

from __future__ import annotations

from tuneorprompt.records import Message, Prompt


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The completion up to (not including) the earliest stop string. Every backend cuts here, whether
    or not its decoder or server already stopped there: some servers return the stop string, some do
    not, and a server takes only a few stop strings."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def render_prompt(tokenizer, prompt: Prompt, chat_template: bool) -> str:
    """The exact text the model is given. Without a chat template: the prompt's text. With one: the
    conversation (a plain text prompt being its single user turn) rendered by the template, ending
    with the assistant's generation header."""
    if not chat_template:
        if not isinstance(prompt, str):
            raise ValueError("a chat conversation was given to a model used without its chat template")
        return prompt
    turns = [Message("user", prompt)] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(
        [{"role": turn.role, "content": turn.content} for turn in turns], tokenize=False, add_generation_prompt=True
    )


def encode_prompt(tokenizer, prompt: Prompt, chat_template: bool) -> list[int]:
    """THE way a prompt becomes token ids, at inference and at training.

    Special tokens (a Llama tokenizer's <s>) are added for plain prompts; a rendered chat template
    already starts with its own BOS, so adding another would give the model a doubled <s> it never
    saw in training.
    """
    text = render_prompt(tokenizer, prompt, chat_template)
    return tokenizer(text, add_special_tokens=not chat_template)["input_ids"]
