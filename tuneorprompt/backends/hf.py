"""The Hugging Face backend: a causal LM from a hub id or a local directory (optionally with a PEFT
adapter), decoding greedily in batches and scoring continuations by log-likelihood.

Decisions that make arms comparable, and where they are made:
- Tokens: `encode_prompt` (text.py, shared with the served backends) is the one way a prompt becomes
  token ids, at inference and (fine-tuning imports it from here) at training, so a fine-tuned model
  sees its training prompts token for token. Completions are cut at stop strings by `text.cut_at_stop`.
- Decoding: greedy and nothing else. The model's own generation config (sampling, repetition penalty,
  bad words, extra stop strings, ...) is replaced by a plain greedy one that keeps only its token ids.
- Batching: the prompts' shared token prefix is computed once and its KV cache reused; each batch
  pads between that prefix and the prompts' own tokens, with attention masks, and position ids
  counted over real tokens only, so a padded prompt sees the positions 0..n-1 it would see alone and
  outputs depend neither on the batch size nor on the prefix reuse (tests/test_backend_hf.py checks
  both in float32). In bf16/fp16 the kernels round differently at other shapes and near-ties may
  flip; compare arms at one batch size there.
- Identity: `fingerprint` covers everything that determines a completion: the files (weights, configs,
  tokenizer and its chat template, adapter), the dtype and device type the weights run in (kernels
  round differently), and whether prompts are wrapped in the chat template. The generation cache
  is keyed by it.
- Safety: only safetensors weights load unless `model.allow_pickle`, and a repository's own Python code
  runs only with `model.trust_remote_code` (which the config requires to be pinned to a commit).
"""

from __future__ import annotations

import copy
import gc
import inspect
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig

from tuneorprompt.backends.base import PromptTooLongError
from tuneorprompt.backends.text import cut_at_stop, encode_prompt, render_prompt
from tuneorprompt.config import ModelConfig
from tuneorprompt.keys import serving_fingerprint
from tuneorprompt.model import (
    LocalWeights,
    ModelLoadError,
    adapter_fingerprint,
    as_local_weights,
    has_chat_template,
    pickle_refused,
)
from tuneorprompt.machine import check_load, use_threads
from tuneorprompt.progress import long_step
from tuneorprompt.records import Completion, GenerationSettings, Prompt

if TYPE_CHECKING:
    from tuneorprompt.evaluate import Progress


# Tokenizers without a configured maximum report transformers' VERY_LARGE_INTEGER (1e30).
_SANE_MODEL_MAX_LENGTH = 10_000_000


# ---- the backend --------------------------------------------------------------------------------------


def _greedy_generation_config(model, tokenizer) -> GenerationConfig:
    """Plain greedy decoding that keeps only the model's token ids.

    `generate` fills every field left unset in the config it is given from `model.generation_config`,
    so passing do_sample=False alone would still let a shipped repetition_penalty, bad_words_ids,
    suppress_tokens or stop_strings apply (and temperature/top_p warn). Replacing the model's config
    is the only way none of it can; its eos ids (a list for some chat models) are kept.
    """
    shipped = model.generation_config
    eos = shipped.eos_token_id if shipped.eos_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        bos_token_id=shipped.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


def _context_length(model, tokenizer) -> int:
    config = model.config.get_text_config()
    from_model = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    from_tokenizer = tokenizer.model_max_length if tokenizer.model_max_length < _SANE_MODEL_MAX_LENGTH else None
    known = [n for n in (from_model, from_tokenizer) if n]
    if not known:
        raise ModelLoadError(
            f"model {tokenizer.name_or_path!r}: neither the model config (max_position_embeddings, n_positions) "
            "nor the tokenizer (model_max_length) gives a context length"
        )
    return min(known)


class HFBackend:
    """A Hugging Face causal LM behind the `Backend` protocol.

    The backend owns the model and tokenizer it is given: it puts the model in eval mode, replaces its
    generation config with plain greedy decoding, sets the tokenizer's pad token (to EOS, when it has
    none: padded positions are masked out, so which id fills them does not matter) and left padding.
    """

    def __init__(
        self, model, tokenizer, *, fingerprint: str, batch_size: int = 64, chat_template: bool = False,
        reuse_prefix: bool = True, reload: Callable[[], object] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelLoadError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer
        self._model = self._for_serving(model)
        self._reload = reload  # loads the same weights again after `release`; None: they stay in memory
        self._served_as = (model.dtype, model.device.type)
        # `fingerprint` identifies the files (or in-memory weights); served here they answer as their
        # dtype and device type make them.
        self.fingerprint = serving_fingerprint(
            fingerprint, str(model.dtype).removeprefix("torch."), model.device.type, chat_template
        )
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.reuse_prefix = reuse_prefix  # off only to measure it: outputs are the same either way
        self.context_length = _context_length(model, tokenizer)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        eos = model.generation_config.eos_token_id
        self._eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self._cache_argument = _cache_argument(model)

    def _for_serving(self, model):
        model.eval()
        model.generation_config = _greedy_generation_config(model, self.tokenizer)
        return model

    @property
    def model(self):
        """The model, loaded again (the same files, dtype and device) if `release` freed it."""
        if self._model is None:
            model = self._for_serving(self._reload())
            if (model.dtype, model.device.type) != self._served_as:  # the fingerprint says how it is served
                raise ModelLoadError(f"the model reloaded as {model.dtype} on {model.device.type}, not as {self._served_as}")
            self._model = model
        return self._model

    def release(self) -> None:
        """Frees the weights until the next use loads them again. Fine-tuning calls it before training
        its own copy, so that no arm holds two copies of the base model. A backend made from weights
        in memory (no `reload`) keeps them."""
        if self._reload is not None:
            self._model = None
            gc.collect()

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tokenizer, prompt, self.chat_template)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(encode_prompt(self.tokenizer, prompt, self.chat_template))

    # -- generation --

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Completion]:
        """Greedy completions in the caller's order.

        The token prefix that every prompt of the call shares (a chat template's system message, the
        instruction, an arm's demo block: most of a prompt) is run through the model once, and its
        KV cache is reused by every batch. Prompts are sorted by token length (longest first, so a
        batch that does not fit in memory fails at once) and batched, which keeps padding small.
        """
        encoded = [encode_prompt(self.tokenizer, prompt, self.chat_template) for prompt in prompts]
        for index, ids in enumerate(encoded):
            self._check_fits(index, len(ids), settings.max_new_tokens, "generate")
        prefix = _shared_prefix(encoded) if self.reuse_prefix else []
        prefix_cache = self._prefill(prefix) if prefix else None
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        completions: list[Completion | None] = [None] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            suffixes = [encoded[i][len(prefix) :] for i in batch]
            for index, completion in zip(batch, self._generate_batch(prefix, prefix_cache, suffixes, settings)):
                completions[index] = completion
        return completions  # type: ignore[return-value]

    def _prefill(self, prefix: list[int]) -> DynamicCache:
        """The KV cache of `prefix` alone: [1, heads, len(prefix), head_dim] per layer."""
        cache = self._new_cache()
        with torch.inference_mode():
            self.model(
                input_ids=torch.tensor([prefix], device=self.model.device), use_cache=True, logits_to_keep=1,
                **{self._cache_argument: cache},
            )
        return cache

    def _generate_batch(
        self, prefix: list[int], prefix_cache: DynamicCache | None, suffixes: list[list[int]], settings: GenerationSettings
    ) -> list[Completion]:
        """Greedy decoding of one batch: `prefix` (cached) + each suffix.

        Layout of row i, in columns: the shared prefix, then left padding, then suffix i, then its
        generated tokens: [p_0 .. p_P-1, pad .., s_0 .. s_n-1, g_0 ..]. The attention mask hides the
        pads and the position ids count only real tokens, so every row sees exactly the positions
        (0..P+n-1) and keys it would see alone. A row that has finished (EOS, a stop string in its
        generated text, or max_new_tokens) leaves the batch: its cache rows are dropped, so the
        remaining steps cost only the rows still generating.
        """
        started = time.perf_counter()
        device = self.model.device
        batch, width = len(suffixes), max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes], device=device)  # [B, S]
        suffix_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
        mask = torch.cat([torch.ones(batch, len(prefix), dtype=suffix_mask.dtype, device=device), suffix_mask], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(prefix) :]  # [B, S]; pads get 0 (masked anyway)
        if prefix_cache is None:
            cache = self._new_cache()
        else:  # a copy per batch: decoding appends to it in place
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
        stop_window = 4 * max((len(s) for s in settings.stop), default=0) + 1
        generated: list[list[int]] = [[] for _ in range(batch)]
        rows = torch.arange(batch)  # which of the batch's rows are still generating, in cache order
        with torch.inference_mode():
            logits = self._last_logits(input_ids, mask, positions, cache)
            for _ in range(settings.max_new_tokens):
                # A batch on a large model can take minutes: the load is looked at (at most once a
                # second, a read of /proc/stat) between its tokens too, not only between batches.
                check_load()
                tokens = logits.argmax(-1)  # [rows]; greedy, ties to the lowest id as in `generate`
                finished = []
                for row, token in zip(rows.tolist(), tokens.tolist()):
                    generated[row].append(token)
                    finished.append(token in self._eos_ids or self._has_stop(generated[row], settings.stop, stop_window))
                keep = torch.tensor([not done for done in finished])
                if len(generated[rows[0]]) == settings.max_new_tokens or not keep.any():
                    break
                if not keep.all():
                    cache.batch_select_indices(keep.nonzero().squeeze(-1).to(device))
                    rows, tokens, mask = rows[keep], tokens[keep.to(tokens.device)], mask[keep.to(mask.device)]
                next_position = mask.sum(-1, keepdim=True)  # [rows, 1]: real tokens so far = the next position
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                logits = self._last_logits(tokens.unsqueeze(-1), mask, next_position, cache)
        seconds = (time.perf_counter() - started) / batch
        completions = []
        for suffix, tokens in zip(suffixes, generated):
            length = self._completion_length(tokens, settings.stop)
            text = cut_at_stop(self._decode(tokens[:length]), settings.stop)
            completions.append(Completion(text, len(prefix) + len(suffix), length, seconds))
        return completions

    def _new_cache(self) -> DynamicCache:
        # With the model's config, as `generate` makes it: sliding-window layers keep only their window.
        return DynamicCache(config=self.model.config)

    def _last_logits(self, input_ids, mask, positions, cache: DynamicCache) -> torch.Tensor:
        """Next-token logits [rows, vocab] in float32 (as `generate` upcasts them), appending to `cache`."""
        output = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        return output.logits[:, -1].float()

    def _has_stop(self, tokens: list[int], stop: tuple[str, ...], window: int) -> bool:
        """Whether the newest generated tokens contain a stop string.

        Only generated tokens are decoded (a prompt ending in "." with stop ".." must not stop after
        one generated "."), and only the newest: a stop string of n characters lies within the last
        4n tokens (4 bytes per UTF-8 character at worst, one byte per byte-level token), plus one
        token because the first token of a window may decode without its leading space or as a
        partial character. Text decoded from such a window is a substring of the full generated
        text, so this never stops a row whose answer `_completion_length` would not also cut.
        """
        if not stop:
            return False
        text = self._decode(tokens[-window:])
        return any(s in text for s in stop)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _completion_length(self, tokens: list[int], stop: tuple[str, ...]) -> int:
        """Tokens up to and including the first EOS, or the token that completed the first stop string.

        What follows is padding (with pad == EOS, the first pad after a stop string looks like an EOS,
        which is why the stop string is looked for before it) or, in a batch still running, output
        past the stop. The decoded text of a prefix grows with the prefix, so bisection finds the
        shortest prefix whose text contains a stop string.
        """
        end = next((i + 1 for i, token in enumerate(tokens) if token in self._eos_ids), len(tokens))

        def has_stop(n: int) -> bool:
            text = self._decode(tokens[:n])
            return any(s in text for s in stop)

        if not stop or not has_stop(end):
            return end
        low, high = 1, end
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if has_stop(middle) else (middle + 1, high)
        return low

    # -- scoring --

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of log-probabilities (nats) of each continuation's tokens given its context.

        Tokenisation boundary: the context is `encode_prompt(context)` (exactly the tokens generation
        sees) and the continuation is tokenised on its own, without special tokens, and appended (the
        answer tokens fine-tuning trains on). So a separating space belongs at the start of the
        continuation (" Paris", as `prompt.answer_prefix` puts it), not at the end of the context;
        lm-eval-harness instead encodes the joined string and splits it, which can merge tokens
        across the boundary.
        """
        pairs = [
            (encode_prompt(self.tokenizer, context, self.chat_template), self._continuation_ids(index, continuation))
            for index, (context, continuation) in enumerate(requests)
        ]
        for index, (context_ids, continuation_ids) in enumerate(pairs):
            self._check_fits(index, len(context_ids), len(continuation_ids), "loglikelihood")
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        scores: list[float] = [0.0] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            check_load()
            batch = order[start : start + self.batch_size]
            for index, score in zip(batch, self._score_batch([pairs[i] for i in batch])):
                scores[index] = score
        return scores

    def _continuation_ids(self, index: int, continuation: str) -> list[int]:
        ids = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"loglikelihood request {index}: the continuation {continuation!r} encodes to no tokens")
        return ids

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        # Right padding: every sequence starts at position 0 as it would alone, and the causal mask
        # keeps trailing pads from influencing the real tokens.
        inputs = self.tokenizer.pad(
            {"input_ids": [context + continuation for context, continuation in pairs]},
            padding=True,
            padding_side="right",
            return_tensors="pt",
        ).to(self.model.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits  # [batch, seq, vocab]
        scores = []
        for row, (context, continuation) in enumerate(pairs):
            # The logits at position t predict token t+1: continuation token j is predicted at len(context)-1+j.
            predicting = logits[row, len(context) - 1 : len(context) + len(continuation) - 1].float()
            targets = torch.tensor(continuation, device=predicting.device).unsqueeze(-1)
            scores.append(torch.log_softmax(predicting, dim=-1).gather(-1, targets).sum().item())
        return scores

    def _check_fits(self, index: int, prompt_tokens: int, extra_tokens: int, what: str) -> None:
        if prompt_tokens == 0:
            raise ValueError(f"{what} request {index}: the prompt encodes to no tokens")
        if prompt_tokens + extra_tokens > self.context_length:
            raise PromptTooLongError(
                f"{what} request {index}: {prompt_tokens} prompt tokens + {extra_tokens} more exceed the "
                f"model's context length of {self.context_length} tokens"
            )


def forward_parameters(model) -> set[str]:
    """The keyword arguments a causal LM's `forward` takes; for a PEFT model, those of the model it
    wraps (PEFT passes them through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _cache_argument(model) -> str:
    """The forward argument that takes the KV cache: `cache` since transformers 5.24, which deprecates
    `past_key_values`."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def _shared_prefix(encoded: list[list[int]]) -> list[int]:
    """The longest token prefix shared by every prompt, leaving each prompt at least one token of
    its own (the forward pass that starts generation needs an input token per row)."""
    if len(encoded) < 2:
        return []
    first, shortest = encoded[0], min(len(ids) for ids in encoded)
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in encoded):
        length += 1
    return first[:length]


# ---- loading ------------------------------------------------------------------------------------------


def model_load_options(config: ModelConfig) -> dict:
    """What every `AutoModelForCausalLM.from_pretrained` of the user's model is given, so that no
    load runs code the user has not allowed: pickle weights (*.bin), the repository's own Python code.
    (Not for tokenizers: they would save `use_safetensors` into their tokenizer_config.json.)"""
    return {
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        # True: safetensors or nothing. None (not False, which would refuse safetensors): prefer
        # safetensors, else *.bin, which transformers unpickles with torch.load(weights_only=True).
        "use_safetensors": None if config.allow_pickle else True,
    }


def _raised_in_torch_load(error: BaseException) -> bool:
    """Whether `error` was raised inside torch.load, i.e. by a *.bin file's bytes. transformers unpickles
    with weights_only=True, which raises UnpicklingError for anything but tensors (before a forbidden call
    runs); a truncated or corrupt file ends in EOFError, IndexError, struct.error, ... as its bytes fall."""
    frames = traceback.walk_tb(error.__traceback__)
    return any(frame.f_code is torch.serialization.load.__code__ for frame, _ in frames)


def load_hf_backend(
    weights: LocalWeights | ModelConfig, adapter: Path | None = None, *, progress: Progress | None = None
) -> HFBackend:
    """Serve local weights (resolved once per run by `model.resolve_model`; a `ModelConfig` is resolved
    here, for notebooks and tests) and, optionally, a PEFT adapter on top. `progress` shows each load of
    the weights (this one, and those after a `release`) while it runs."""
    weights = as_local_weights(weights)
    config = weights.spec
    use_threads(config.num_threads)
    source = str(weights.directory)
    tried = f"directory {source}" + (f" (hub id {config.path!r})" if source != config.path else "")
    with _load_errors(config, tried):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    if has_chat_template(weights.directory) != (tokenizer.chat_template is not None):
        # `chat_template: auto` was decided from the files; the tokenizer transformers loads must agree.
        raise ModelLoadError(
            f"model {config.path!r}: its files and its loaded tokenizer disagree on whether it has a chat template; "
            "set model.chat_template to true or false"
        )
    fingerprint = weights.files_fingerprint
    if adapter is not None:
        fingerprint = adapter_fingerprint(fingerprint, Path(adapter))

    described = f"loading model {config.path}" + (f" with adapter {adapter}" if adapter is not None else "")

    def load_model():
        with long_step(progress, described), _load_errors(config, tried):
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=getattr(torch, weights.dtype), device_map=weights.device, **model_load_options(config)
            )
        return model if adapter is None else _with_adapter(model, Path(adapter))

    backend = HFBackend(
        load_model(), tokenizer, fingerprint=fingerprint, batch_size=config.batch_size,
        chat_template=weights.chat_template, reload=load_model,
    )
    if adapter is None and backend.fingerprint != weights.fingerprint:
        raise ModelLoadError(f"model {config.path!r} loaded in another dtype or on another device than it resolved to "
                             f"({weights.dtype} on {weights.device})")
    if adapter is None and backend.num_parameters != weights.num_parameters:
        warnings.warn(
            f"model {config.path!r}: {backend.num_parameters:,} parameters loaded, {weights.num_parameters:,} counted "
            "in its weight files; FLOPs estimates use the files' count", stacklevel=2,
        )
    return backend


@contextmanager
def _load_errors(config: ModelConfig, tried: str) -> Iterator[None]:
    """transformers' load failures as one `ModelLoadError` naming the model and what was tried."""
    try:
        yield
    except Exception as error:
        if _raised_in_torch_load(error):
            raise pickle_refused(config.path, tried, error) from None
        if isinstance(error, (OSError, ValueError, KeyError, RuntimeError, SafetensorError)):
            raise ModelLoadError(
                f"cannot load model {config.path!r}: tried the {tried} with AutoTokenizer and AutoModelForCausalLM: "
                f"{error}"
            ) from None
        raise


def _with_adapter(model, adapter: Path):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(
            f"cannot load adapter {adapter} onto the model with PeftModel.from_pretrained: {error}"
        ) from None
