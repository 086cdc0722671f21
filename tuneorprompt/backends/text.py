"""The protocol's text rules that every backend shares, free of torch so that a served backend
(`kind: openai`) never imports it: where a completion is cut (`cut_at_stop`, `cap_reply`), and how a prompt is
rendered and encoded by a tokenizer (`render_prompt`, `encode_prompt`). The tokenizer is passed in:
this module never loads one, so it imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import replace

from tuneorprompt.records import Completion, Message, Prompt

# The most characters a reply may keep, per token asked for (`max_new_tokens`) plus a floor. Text
# averages ~4 characters a token, and the longest entries of a BPE vocabulary are runs of spaces or
# punctuation of a few dozen (SmolLM2's longest: 81 spaces), so no reply a model could give in
# `max_new_tokens` tokens of real text comes near the cap, while a server that sends megabytes for
# 16 tokens (issue 19) is cut to 1,536 characters instead of filling the store and the report.
REPLY_CHARS_PER_TOKEN = 32
REPLY_CHARS_FLOOR = 1024  # a short budget still fits a few of the longest tokens


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The completion up to (not including) the earliest stop string. Every backend cuts here, whether
    or not its decoder or server already stopped there: some servers return the stop string, some do
    not, and a server takes only a few stop strings."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def reply_cap(max_new_tokens: int) -> int:
    """Characters a reply keeps at most (see REPLY_CHARS_PER_TOKEN). A cut reply has exactly this many,
    so a reply of this length counts as cut."""
    return REPLY_CHARS_PER_TOKEN * max_new_tokens + REPLY_CHARS_FLOOR


def cap_reply(completion: Completion, max_new_tokens: int) -> Completion:
    """`completion` with its text cut to `reply_cap(max_new_tokens)` characters."""
    cap = reply_cap(max_new_tokens)
    return completion if len(completion.text) <= cap else replace(completion, text=completion.text[:cap])


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
