"""`kind: openai`: a model behind an OpenAI-compatible server (`transformers serve`, vLLM's and
llama.cpp's servers, a hosted API), through the official `openai` client
(`pip install 'tuneorprompt[openai]'`).

Decisions that keep its answers comparable with the local backend's, and where they are made:
- Decoding: greedy (temperature 0) with a fixed `seed` where the server uses one; `max_tokens` and
  stop strings from the run's `GenerationSettings`. The text is cut at the first stop string here
  too (`text.cut_at_stop`, the rule every backend follows): some servers return the stop string, some do not, and the OpenAI API
  takes at most four of them (more are cut here only, after the server has generated past them).
- Prompts: completions mode sends the rendered text to /v1/completions and the server tokenizes it
  (its BOS handling, not `text.encode_prompt`'s, decides the first token). Chat mode sends the
  conversation to /v1/chat/completions and the server's chat template renders it; `render` is the
  conversation as JSON (role boundaries unambiguous), which keys the generation cache.
- Identity: the fingerprint is the server's URL, the served model name, the mode, `revision` (a label
  the user changes when the weights behind the name change) and the seed. The server cannot prove
  which weights it runs, so that label is the user's word.
- Tokens: prompt and completion counts come from the response's `usage`; fitting demos into the context
  needs counts before a request, from a local tokenizer (`tokenizer`, else `local_path`) or, without
  one, an estimate (UTF-8 bytes: never fewer tokens than a byte-level tokenizer gives).
- Failures: the client retries 429, 5xx, timeouts and lost connections `max_retries` times with
  exponential backoff (honouring Retry-After); other errors stop the run with the server's message.
- Stopping: requests run on an event loop of their own (`RequestLoop`), so a Ctrl-C or SIGTERM cancels
  those in flight, closing their connections, instead of waiting out a server that never answers.
- Which model answered: each reply names one (`model`). The first that names another than `model.model`
  (an alias resolved to a snapshot, a proxy routing elsewhere) is warned about once; the report lists
  every id the replies named (`served_models`).
- The API key is read from the environment variable `api_key_env` names when the backend is made,
  and given only to the client: it is never part of the config, fingerprint, store or report. A
  server may echo it (an error body quoting the refused key), so every text from the server is
  masked (`from_server`) before the program keeps, raises or shows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import weakref
from typing import Any, Callable, Coroutine, Sequence

from rich.console import Console

from tuneorprompt.backends.text import cut_at_stop, encode_prompt
from tuneorprompt.config import ConfigError, OpenAIModelConfig
from tuneorprompt.keys import served_model_key
from tuneorprompt.records import Completion, GenerationSettings, Message, Prompt
from tuneorprompt.safe_text import for_terminal, mask_credentials

# Sent when `api_key_env` is None: local servers ignore the key, but the client requires one.
PLACEHOLDER_KEY = "EMPTY"
MAX_STOP_STRINGS = 4  # what the OpenAI API accepts in `stop`
# Without a tokenizer, per chat message: room for the role markers a chat template adds.
_ESTIMATED_TOKENS_PER_MESSAGE = 16
# After a Ctrl-C or SIGTERM, how long the cancelled requests get to close their connections (they
# take milliseconds) before the interrupt goes on regardless.
CANCEL_GRACE_SECONDS = 1.0


class ServedModelError(ValueError):
    """A server that cannot be reached, refuses the key, does not serve the model, or rejects a request."""

    def __init__(self, message: str):
        super().__init__(mask_credentials(message))  # each names the server by its URL


def api_key(spec: OpenAIModelConfig) -> str:
    if spec.api_key_env is None:
        return PLACEHOLDER_KEY
    value = os.environ.get(spec.api_key_env)
    if not value:
        raise ConfigError(
            f"model.api_key_env: the environment variable {spec.api_key_env} is not set; it must hold the API key "
            f"for {mask_credentials(spec.base_url)} (or remove api_key_env for a local server that needs no key)"
        )
    return value


def from_server(spec: OpenAIModelConfig, text: str) -> str:
    """`text` from the server (an answer, an error message), with the API key's value masked."""
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    return text.replace(key, "***") if key else text


def load_openai_backend(spec: OpenAIModelConfig, console: Console | None = None) -> "OpenAIBackend":
    """console: where the warning about a reply from another model goes (default: stderr)."""
    try:
        import openai
    except ImportError:
        raise ImportError(
            "model.kind: openai needs the openai client: pip install 'tuneorprompt[openai]'"
        ) from None
    client = openai.AsyncOpenAI(
        base_url=spec.base_url, api_key=api_key(spec), max_retries=spec.max_retries, timeout=spec.timeout
    )
    requests = RequestLoop()
    requests.run(_check_served(client, spec))
    return OpenAIBackend(client, spec, _token_counter(spec), requests, console)


async def _check_served(client, spec: OpenAIModelConfig) -> None:
    """Fail before any arm runs when the server is down, refuses the key, or does not list the model."""
    import openai

    try:
        served = [model.id async for model in client.models.list()]
    except openai.NotFoundError:
        return  # a server without /v1/models: the first request will tell
    except openai.AuthenticationError:
        raise ServedModelError(
            f"{spec.base_url} refused the API key (from ${spec.api_key_env or 'nothing: placeholder key'}); "
            "check model.api_key_env"
        ) from None
    except openai.APIError as error:
        raise ServedModelError(
            f"cannot list the models served at {spec.base_url}: {from_server(spec, str(error))}"
        ) from None
    if spec.model not in served:
        listed = from_server(spec, ", ".join(map(repr, served)))
        raise ServedModelError(f"model.model: {spec.model!r} is not served at {spec.base_url}; it serves {listed}")


class RequestLoop:
    """An asyncio event loop in a daemon thread, where every request to the server runs.

    The calling thread only waits for the answers, so a Ctrl-C or SIGTERM there (a KeyboardInterrupt
    in the main thread) cancels the requests in flight, which closes their connections, and the run
    stops at once. Requests made from a thread pool could not be cancelled: the run would wait for a
    server that never answers for `timeout` x (`max_retries` + 1) seconds (12 minutes by default),
    holding the run directory's lock, and the interpreter would wait for them again at exit. A
    daemon thread never keeps the process alive; the loop stops when its backend is collected."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="tuneorprompt-requests", daemon=True).start()
        weakref.finalize(self, self.loop.call_soon_threadsafe, self.loop.stop)

    def run(self, coroutine: Coroutine) -> Any:
        """Run `coroutine` on the loop and return its result; an exception in the calling thread meanwhile
        (KeyboardInterrupt) cancels it, waiting up to CANCEL_GRACE_SECONDS for it to unwind, and propagates."""
        unwound = threading.Event()

        async def tracked():
            try:
                return await coroutine
            finally:
                unwound.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # a no-op when the coroutine itself failed
            unwound.wait(CANCEL_GRACE_SECONDS)
            raise


def _token_counter(spec: OpenAIModelConfig) -> Callable[[Prompt], int] | None:
    """Counts with the local tokenizer of the same model, rendered as the server renders it."""
    source = spec.tokenizer or spec.local_path
    if source is None:
        return None
    # Only here: a served model without a local tokenizer never imports transformers (nor torch).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    chat = spec.mode == "chat"
    if chat and tokenizer.chat_template is None:
        raise ConfigError(f"model.tokenizer: {source!r} has no chat template, so it cannot count chat prompts")
    return lambda prompt: len(encode_prompt(tokenizer, prompt, chat))


def _turns(prompt: Prompt) -> tuple[Message, ...]:
    return (Message("user", prompt),) if isinstance(prompt, str) else prompt


class OpenAIBackend:
    """A served model behind the `Backend` protocol (`base.ServedBackend`); requests go out `concurrency`
    at a time, from `requests`' loop (a new one by default). client: an `openai.AsyncOpenAI`."""

    def __init__(self, client, spec: OpenAIModelConfig, count: Callable[[Prompt], int] | None = None,
                 requests: RequestLoop | None = None, console: Console | None = None):
        self.client = client
        self.spec = spec
        self.chat_template = spec.mode == "chat"
        self.context_length = spec.context_length
        self.fingerprint = served_model_key(spec)
        self.served_models: list[str] = []  # the ids the replies named, first seen first (masked)
        self._count = count
        self._requests = requests or RequestLoop()
        self._console = console

    def release(self) -> None:
        """Nothing to free: the weights are the server's."""

    def render(self, prompt: Prompt) -> str:
        if not self.chat_template:
            if not isinstance(prompt, str):
                raise ValueError("a chat conversation was given to a served model in completions mode (model.mode)")
            return prompt
        turns = [{"role": turn.role, "content": turn.content} for turn in _turns(prompt)]
        return json.dumps(turns, ensure_ascii=False)

    def count_tokens(self, prompt: Prompt) -> int:
        if self._count is not None:
            return self._count(prompt)
        if not self.chat_template:
            return len(self.render(prompt).encode("utf-8")) + 1  # + a BOS the server may add
        turns = _turns(prompt)
        return sum(len(t.content.encode("utf-8")) + _ESTIMATED_TOKENS_PER_MESSAGE for t in turns) + (
            _ESTIMATED_TOKENS_PER_MESSAGE  # the assistant header the answer follows
        )

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        texts = [self.render(prompt) for prompt in prompts]  # a wrong kind of prompt fails before any request
        started = time.perf_counter()
        answers = self._requests.run(self._answer_all(prompts, settings))
        seconds = (time.perf_counter() - started) / max(1, len(texts))  # seconds per query, as the HF backend
        return [Completion(text, prompt_tokens, generated, seconds) for text, prompt_tokens, generated in answers]

    async def _answer_all(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[tuple[str, int, int]]:
        """Every prompt's answer, in order; the first failure (or a cancel) stops the requests still out."""
        slots = asyncio.Semaphore(self.spec.concurrency)

        async def answer(index: int, prompt: Prompt) -> tuple[str, int, int]:
            async with slots:
                return await self._request(index, prompt, settings)

        requests = [asyncio.ensure_future(answer(index, prompt)) for index, prompt in enumerate(prompts)]
        try:
            return list(await asyncio.gather(*requests))
        except BaseException:
            for request in requests:
                request.cancel()
            await asyncio.wait(requests)  # each closes its connection as it unwinds
            raise

    async def _request(self, index: int, prompt: Prompt, settings: GenerationSettings) -> tuple[str, int, int]:
        import openai

        options = {
            "model": self.spec.model,
            "max_tokens": settings.max_new_tokens,
            "temperature": 0.0,
            "stop": list(settings.stop[:MAX_STOP_STRINGS]) or None,
        }
        if self.spec.seed is not None:
            options["seed"] = self.spec.seed
        try:
            if self.chat_template:
                messages = [{"role": turn.role, "content": turn.content} for turn in _turns(prompt)]
                response = await self.client.chat.completions.create(messages=messages, **options)
            else:
                response = await self.client.completions.create(prompt=prompt, **options)
        except json.JSONDecodeError as error:  # a 200 reply the client could not parse
            raise ServedModelError(
                f"{self._endpoint} answered generate request {index} with malformed JSON ({error.msg} at character "
                f"{error.pos}); expected an OpenAI API response, a JSON object with {self._text_at}"
            ) from None
        except openai.APIStatusError as error:
            raise ServedModelError(
                f"{self.spec.base_url} answered HTTP {error.status_code} to generate request {index} "
                f"(model {self.spec.model!r}): {from_server(self.spec, error.message)}"
            ) from None
        except openai.APIError as error:  # connection lost or timed out after every retry
            raise ServedModelError(
                f"generate request {index} to {self.spec.base_url} failed after {self.spec.max_retries} retries: "
                f"{from_server(self.spec, str(error))}"
            ) from None
        text = _first_text(response, self.chat_template)
        if not isinstance(text, str):
            raise ServedModelError(
                f"{self._endpoint} answered generate request {index} without a text: expected an OpenAI API "
                f"response, a JSON object with {self._text_at}, not {_shape(response)}"
            )
        self._note_model(getattr(response, "model", None))
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        generated = getattr(usage, "completion_tokens", None)
        if not isinstance(prompt_tokens, int):
            prompt_tokens = self.count_tokens(prompt)
        if not isinstance(generated, int):
            # No count in `usage`: the answer's UTF-8 bytes, the same upper-bound estimate as count_tokens.
            generated = len(text.encode("utf-8"))
        return cut_at_stop(from_server(self.spec, text), settings.stop), prompt_tokens, generated

    def _note_model(self, named: Any) -> None:
        """Record the model id a reply names; warn, once, at the first that is not the configured one."""
        if not isinstance(named, str) or not named:
            return  # a server that names none: nothing to compare
        named = from_server(self.spec, named)
        if named in self.served_models:
            return
        warned = any(model != self.spec.model for model in self.served_models)
        self.served_models.append(named)
        if named != self.spec.model and not warned:
            (self._console or Console(stderr=True)).print(
                f"[bold yellow]warning:[/] {for_terminal(mask_credentials(self.spec.base_url))} answered as model "
                f"{for_terminal(repr(named))}, not the configured model.model {for_terminal(repr(self.spec.model))}; "
                "the answers are scored as they came, and the report lists the served ids (served_models)"
            )

    @property
    def _endpoint(self) -> str:
        return f"{self.spec.base_url.rstrip('/')}/{'chat/completions' if self.chat_template else 'completions'}"

    @property
    def _text_at(self) -> str:
        return "choices[0].message.content" if self.chat_template else "choices[0].text"


def _first_text(response: Any, chat: bool) -> Any:
    """The first choice's text, None where the reply has none.

    The client builds its response objects without validating them: a reply without `choices` has None
    there, and one that is not a JSON object comes back as whatever it parsed to.
    """
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    if not chat:
        return getattr(choices[0], "text", None)
    message = getattr(choices[0], "message", None)
    # A message whose content is null (a refusal, or tool calls only) answered nothing: an empty text.
    return None if message is None else getattr(message, "content", None) or ""


def _shape(response: Any) -> str:
    """What came instead, in a few words."""
    if not hasattr(response, "choices"):  # not a JSON object: the client hands back what it parsed
        return f"the JSON value {json.dumps(response)[:40]!r}"
    choices = response.choices
    if choices is None:
        return "an object without choices"
    if not isinstance(choices, list):
        return f"choices {json.dumps(choices, default=str)[:40]!r}"
    return "an empty choices list" if not choices else "a first choice without a text"
