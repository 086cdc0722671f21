"""The Hugging Face backend on the two tiny random models of conftest.py (GPT-2 byte-level BPE with a
sampling generation config, Llama Metaspace BPE with <s>).

References are computed the slow, obvious way (one prompt, no padding, no KV cache, argmax in a
loop; one unpadded forward pass for log-likelihoods) and the backend must agree with them.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation import configuration_utils as generation_configuration

from tests.conftest import build_tiny_gpt2
from tuneorprompt.backends.base import Backend
from tuneorprompt.backends.cached import CacheCounts, CachedBackend
from tuneorprompt.backends.hf import (
    HFBackend,
    ModelLoadError,
    PromptTooLongError,
    _shared_prefix,
    encode_prompt,
    load_hf_backend,
)
from tuneorprompt.config import ModelConfig
from tuneorprompt.model import fingerprint_directory
from tuneorprompt.records import GenerationSettings, Message
from tuneorprompt.store import Store

# Different lengths (1 to ~25 tokens), so batches carry real left padding.
PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Paris",
    "The quick brown fox jumps over the lazy dog. Question: Who wrote Hamlet?\nAnswer:",
    "Rome is in",
    "Answer the question precisely and concisely.",
    "a",
    "Question: Who",
    "Paris is the",
    "Hamlet",
    "capital of",
]


@pytest.fixture(params=["tiny_gpt2_dir", "tiny_llama_dir"])
def model_dir(request) -> Path:
    return request.getfixturevalue(request.param)


def load(path: Path, **options) -> HFBackend:
    return load_hf_backend(ModelConfig(path=str(path), device="cpu", num_threads=1, **options))


def greedy_reference(model, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    """Argmax of the full forward pass, one token at a time: no batching, padding or cache."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] in eos_ids:
                break
    return ids[len(prompt_ids) :]


def reference_loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    full = context_ids + continuation_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
    return sum(float(logprobs[t - 1, full[t]]) for t in range(len(context_ids), len(full)))


def eos_ids(backend: HFBackend) -> set[int]:
    return {backend.tokenizer.eos_token_id}


# ---- decoding ----------------------------------------------------------------------------------------


def test_backend_satisfies_protocol(tiny_gpt2_dir):
    assert isinstance(load(tiny_gpt2_dir), Backend)


@pytest.mark.parametrize("stop", [(), ("\n", ".")])
def test_outputs_do_not_depend_on_batch_size(model_dir, stop):
    settings = GenerationSettings(max_new_tokens=12, stop=stop)
    alone = [load(model_dir).generate([prompt], settings)[0] for prompt in PROMPTS]
    for batch_size in (1, 3, 8):
        batched = load(model_dir, batch_size=batch_size).generate(PROMPTS, settings)
        # Same text and counts, in the caller's order, though generate sorts prompts by length.
        assert [(c.text, c.prompt_tokens, c.generated_tokens) for c in batched] == [
            (c.text, c.prompt_tokens, c.generated_tokens) for c in alone
        ], f"batch size {batch_size}"


# Prompts as an arm builds them: a long block every prompt of the arm shares (system message,
# instruction, demos), then the question. The shared prefix is prefilled once and its cache reused.
SHARED = "Answer with the city only.\n\nQuestion: Capital of Peru?\nAnswer: Lima\n\nQuestion: Capital of Chile?\nAnswer: Santiago\n\n"
QUESTIONS = ["Question: Capital of France?\nAnswer:", "Question: Capital of a very small island state?\nAnswer:",
             "Question: Who?\nAnswer:", "Q", "Question: Capital of Japan, the country?\nAnswer:"]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("stop", [(), ("\n", ".")])
def test_shared_prefix_reuse_changes_no_output(model_dir, chat, stop):
    backend = load(model_dir, batch_size=2)
    if chat:  # a system message and a user turn, as an instruct model's template renders them
        backend.tokenizer.chat_template = (
            "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}"
        )
        backend.chat_template = True
        prompts = [(Message("system", SHARED), Message("user", q)) for q in QUESTIONS]
    else:
        prompts = [SHARED + q for q in QUESTIONS]
    encoded = [encode_prompt(backend.tokenizer, p, chat) for p in prompts]
    assert len(_shared_prefix(encoded)) > 20  # what makes this test meaningful
    settings = GenerationSettings(max_new_tokens=12, stop=stop)
    reused = backend.generate(prompts, settings)
    backend.reuse_prefix = False
    assert [(c.text, c.prompt_tokens, c.generated_tokens) for c in reused] == [
        (c.text, c.prompt_tokens, c.generated_tokens) for c in backend.generate(prompts, settings)
    ]
    for ids, completion in zip(encoded, reused):  # and each is what the prompt alone gives, unpadded, uncached
        expected = greedy_reference(backend.model, ids, 12, eos_ids(backend))
        assert completion.text == _cut(backend.tokenizer.decode(expected, skip_special_tokens=True), stop)


def _cut(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


@pytest.fixture
def generation_warnings(monkeypatch) -> list[str]:
    """Warnings from transformers' generation config checks ("flags are not valid", ...), recorded
    directly: `warning_once` would stay silent if an earlier test had already triggered one."""
    recorded: list[str] = []
    record = lambda message, *_, **__: recorded.append(message)  # noqa: E731
    monkeypatch.setattr(generation_configuration.logger, "warning_once", record)
    return recorded


def test_sampling_generation_config_is_ignored(tiny_gpt2_dir, generation_warnings):
    shipped = GenerationConfig.from_pretrained(tiny_gpt2_dir)
    assert shipped.do_sample is True and shipped.temperature == 0.7  # what makes this test meaningful
    backend = load(tiny_gpt2_dir, batch_size=4)
    settings = GenerationSettings(max_new_tokens=10, stop=())
    first, second = backend.generate(PROMPTS, settings), backend.generate(PROMPTS, settings)
    # Sampling at temperature 0.7 from a random model's near-uniform distribution would differ run to run.
    assert [(c.text, c.generated_tokens) for c in first] == [(c.text, c.generated_tokens) for c in second]
    assert generation_warnings == []  # no "temperature is set but do_sample is not" either


def test_shipped_decoding_options_cannot_change_greedy_output(model_dir, generation_warnings):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # Options hub models ship that would alter even greedy output (these random models repeat tokens).
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.suppress_tokens = [model.generation_config.eos_token_id]
    backend = HFBackend(model, AutoTokenizer.from_pretrained(model_dir), fingerprint="test", batch_size=4)
    completions = backend.generate(PROMPTS, GenerationSettings(max_new_tokens=10, stop=()))
    for prompt, completion in zip(PROMPTS, completions):
        expected = greedy_reference(model, encode_prompt(backend.tokenizer, prompt, False), 10, eos_ids(backend))
        assert completion.text == backend.tokenizer.decode(expected, skip_special_tokens=True), prompt
    assert generation_warnings == []


@pytest.mark.parametrize("prompt", [PROMPTS[0], PROMPTS[4]])
def test_greedy_matches_manual_argmax_loop_and_decodes_only_new_tokens(model_dir, prompt):
    backend = load(model_dir, batch_size=3)
    prompt_ids = encode_prompt(backend.tokenizer, prompt, chat_template=False)
    expected = greedy_reference(backend.model, prompt_ids, 10, eos_ids(backend))
    # In a batch with other prompts, so it is also left-padded.
    completion = backend.generate([prompt, "a", "Paris is the"], GenerationSettings(max_new_tokens=10, stop=()))[0]
    assert completion.text == backend.tokenizer.decode(expected, skip_special_tokens=True)
    assert completion.generated_tokens == len(expected)
    assert completion.prompt_tokens == len(prompt_ids)


def _spanning_stop(tokenizer, tokens: list[int]) -> tuple[str, int]:
    """A two-character stop string made of the last character of token k-1 and the first of token k,
    so only token k completes it; returns it with k + 1 (the expected generated_tokens)."""
    decode = lambda n: tokenizer.decode(tokens[:n], skip_special_tokens=True)  # noqa: E731
    for k in range(1, len(tokens)):
        before, after = decode(k), decode(k + 1)
        stop = after[len(before) - 1 : len(before) + 1]
        if before and after.startswith(before) and len(after) > len(before) and stop not in before:
            return stop, k + 1
    raise AssertionError("the fixture model's output has no token boundary to span")


def expected_completion(tokenizer, tokens: list[int], stop: str) -> tuple[str, int]:
    """The contract, by linear scan: the shortest prefix whose text contains the stop string, cut before it."""
    for n in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
        if stop in text:
            return text[: text.index(stop)], n
    return tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)


def test_stop_string_across_tokens_cuts_text_and_counts_tokens(model_dir):
    backend = load(model_dir, batch_size=4)
    prompt = PROMPTS[4]
    tokens = greedy_reference(backend.model, encode_prompt(backend.tokenizer, prompt, False), 16, eos_ids(backend))
    stop, completing_token = _spanning_stop(backend.tokenizer, tokens)
    assert expected_completion(backend.tokenizer, tokens, stop)[1] == completing_token

    completion = backend.generate([prompt, "Paris", "a"], GenerationSettings(max_new_tokens=16, stop=(stop,)))[0]

    assert (completion.text, completion.generated_tokens) == expected_completion(backend.tokenizer, tokens, stop)


def test_stop_strings_match_generated_text_only(model_dir):
    # A stop string made of the prompt's last character and the answer's first must not stop the
    # answer (transformers' own `stop_strings` would: it matches the end of prompt + generation).
    backend = load(model_dir)
    prompt = PROMPTS[4]
    tokens = greedy_reference(backend.model, encode_prompt(backend.tokenizer, prompt, False), 16, eos_ids(backend))
    stop = prompt[-1] + backend.tokenizer.decode(tokens[:1], skip_special_tokens=True)[0]

    completion = backend.generate([prompt], GenerationSettings(max_new_tokens=16, stop=(stop,)))[0]

    assert (completion.text, completion.generated_tokens) == expected_completion(backend.tokenizer, tokens, stop)
    assert completion.generated_tokens > 1


def test_eos_is_counted_and_trailing_padding_is_not(model_dir):
    backend = load(model_dir)
    finishing, running = PROMPTS[4], PROMPTS[1]
    tokens = greedy_reference(backend.model, encode_prompt(backend.tokenizer, finishing, False), 16, set())
    other = greedy_reference(backend.model, encode_prompt(backend.tokenizer, running, False), 16, set())
    # Declare as EOS a token that `finishing` produces (first) at position k > 0 and `running` never does.
    k = next(k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k] and tokens[k] not in other)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.generation_config.eos_token_id = tokens[k]
    backend = HFBackend(model, AutoTokenizer.from_pretrained(model_dir), fingerprint="test", batch_size=2)

    finished, ran = backend.generate([finishing, running], GenerationSettings(max_new_tokens=16, stop=()))

    assert finished.generated_tokens == k + 1  # the EOS itself counts; the padding after it does not
    assert finished.text == backend.tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)
    assert ran.generated_tokens == 16


def test_batch_stops_when_every_sequence_has_stopped(model_dir):
    backend = load(model_dir, batch_size=3)
    prompts = PROMPTS[:3]
    references = [
        greedy_reference(backend.model, encode_prompt(backend.tokenizer, prompt, False), 8, set()) for prompt in prompts
    ]
    stops = tuple(_spanning_stop(backend.tokenizer, tokens)[0] for tokens in references)
    forward_calls = []
    hook = backend.model.register_forward_hook(lambda *_: forward_calls.append(1))
    try:
        completions = backend.generate(prompts, GenerationSettings(max_new_tokens=32, stop=stops))
    finally:
        hook.remove()
    longest = max(c.generated_tokens for c in completions)
    assert longest < 32
    # One forward for the prompts' shared prefix (the Llama tokenizer's <s>), then one per generated
    # position, none after the last stop.
    prefill = 1 if _shared_prefix([encode_prompt(backend.tokenizer, p, False) for p in prompts]) else 0
    assert len(forward_calls) == prefill + longest


def test_pad_token_set_and_padding_left(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.pad_token is None  # as GPT-2 and Llama ship
    backend = HFBackend(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, fingerprint="test")
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.padding_side == "left"
    assert not backend.model.training


# ---- scoring and counting ------------------------------------------------------------------------------


def test_loglikelihood_matches_unbatched_computation(model_dir):
    backend = load(model_dir, batch_size=3)
    requests = [
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
        ("Question: What is the capital of Italy?\nAnswer:", " Rome"),
        ("Paris is the capital", " and largest city of France."),
        ("The", " quick brown fox"),
        ("Question: Who wrote Hamlet?\nAnswer:", " Shakespeare"),
    ]
    expected = [
        reference_loglikelihood(
            backend.model,
            encode_prompt(backend.tokenizer, context, False),
            backend.tokenizer(continuation, add_special_tokens=False)["input_ids"],
        )
        for context, continuation in requests
    ]
    got = backend.loglikelihood(requests)
    assert got == pytest.approx(expected, abs=1e-4)
    assert all(score < 0 for score in got)


def test_count_tokens_and_chat_template_carry_one_bos(tiny_llama_dir):
    backend = load(tiny_llama_dir)
    bos = backend.tokenizer.bos_token_id
    assert backend.count_tokens("Answer: Paris") == len(backend.tokenizer("Answer: Paris")["input_ids"])
    assert encode_prompt(backend.tokenizer, "Answer: Paris", chat_template=False)[0] == bos

    backend.tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[user] {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} [bot]{% endif %}"
    )
    ids = encode_prompt(backend.tokenizer, "Answer: Paris", chat_template=True)
    assert ids.count(bos) == 1 and ids[0] == bos  # the template's BOS, not a second one added on top


def test_chat_template_auto_follows_the_tokenizer_and_true_needs_one(tiny_gpt2_dir, tmp_path):
    assert load(tiny_gpt2_dir).chat_template is False  # auto, and the tokenizer has no template
    with pytest.raises(ValueError, match="has no chat template"):
        load(tiny_gpt2_dir, chat_template=True)  # at load time, before any arm runs
    with_template = shutil.copytree(tiny_gpt2_dir, tmp_path / "with-template")
    tokenizer = AutoTokenizer.from_pretrained(with_template)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    tokenizer.save_pretrained(with_template)
    backend = load(with_template)
    assert backend.chat_template is True
    assert backend.render("Paris?") == "<user>Paris?<assistant>"
    conversation = (Message("system", "Be brief."), Message("user", "Paris?"))
    assert backend.render(conversation) == "<system>Be brief.<user>Paris?<assistant>"
    assert load(with_template, chat_template=False).render("Paris?") == "Paris?"
    with pytest.raises(ValueError, match="without its chat template"):
        load(with_template, chat_template=False).render(conversation)


def test_empty_prompt_is_a_clear_error(tiny_gpt2_dir):
    backend = load(tiny_gpt2_dir)
    with pytest.raises(ValueError, match="generate request 1: the prompt encodes to no tokens"):
        backend.generate(["Paris", ""], GenerationSettings(max_new_tokens=2))
    with pytest.raises(ValueError, match="loglikelihood request 0: the continuation '' encodes to no tokens"):
        backend.loglikelihood([("Paris", "")])


def test_context_length_and_too_long_prompt(tiny_gpt2_dir):
    backend = load(tiny_gpt2_dir)
    assert backend.context_length == 256  # n_positions; the tokenizer sets no limit
    long_prompt = "Paris is the capital and largest city of France. " * 40
    with pytest.raises(PromptTooLongError, match=r"request 1: \d+ prompt tokens \+ 8 more exceed .* 256"):
        backend.generate(["Paris", long_prompt], GenerationSettings(max_new_tokens=8))

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir, model_max_length=64)
    capped = HFBackend(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), tokenizer, fingerprint="test")
    assert capped.context_length == 64


# ---- identity and loading ------------------------------------------------------------------------------


def test_fingerprint_follows_how_the_model_is_served(tiny_gpt2_dir, tmp_path):
    # The generation cache is keyed by it: a float32 answer must never be served to a bfloat16 run,
    # nor a plain prompt's answer to a chat-templated one.
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with_template = tmp_path / "with-template"
    shutil.copytree(tiny_gpt2_dir, with_template)
    tokenizer.save_pretrained(with_template)
    plain = load(with_template, chat_template=False).fingerprint
    assert load(with_template, chat_template=False, dtype="bfloat16").fingerprint != plain
    assert load(with_template, chat_template=True).fingerprint != plain
    assert load(with_template, chat_template=False).fingerprint == plain


def test_fingerprint_follows_the_weights(tiny_gpt2_dir, tmp_path):
    assert load(tiny_gpt2_dir).fingerprint == load(tiny_gpt2_dir).fingerprint
    copied = shutil.copytree(tiny_gpt2_dir, tmp_path / "copy")
    assert fingerprint_directory(copied) == fingerprint_directory(tiny_gpt2_dir)
    other = build_tiny_gpt2(tmp_path / "other-seed", seed=1)
    assert fingerprint_directory(other) != fingerprint_directory(tiny_gpt2_dir)


def test_hub_id_resolves_from_the_local_cache(tiny_gpt2_dir, tmp_path, monkeypatch):
    # The layout huggingface_hub writes: models--{org}--{name}/refs/main -> snapshots/{commit}/files.
    repo = tmp_path / "hub" / "models--local--tiny-gpt2"
    commit = "0" * 40
    shutil.copytree(tiny_gpt2_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    backend = load_hf_backend(ModelConfig(path="local/tiny-gpt2", device="cpu"))
    assert backend.fingerprint == load(tiny_gpt2_dir).fingerprint  # the same files, served the same way


def test_load_errors_name_the_path_and_what_was_tried(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="model directory '/no/such/model' does not exist"):
        load(Path("/no/such/model"))
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelLoadError, match=r"model '.*not-a-model': no weight files"):
        load(tmp_path / "not-a-model")
    broken = shutil.copytree(tiny_gpt2_dir, tmp_path / "broken")
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"cannot load model .*broken.*tried the directory"):
        load(broken)
    with pytest.raises(ModelLoadError, match="'nobody/missing-model'.*not in the Hugging Face cache"):
        load_hf_backend(ModelConfig(path="nobody/missing-model", device="cpu"))


def test_adapter_changes_outputs_and_fingerprint(tiny_llama_dir, tmp_path):
    base = load(tiny_llama_dir)
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter changes outputs as a trained one would.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config).save_pretrained(tmp_path / "adapter")

    adapted = load_hf_backend(ModelConfig(path=str(tiny_llama_dir), device="cpu"), adapter=tmp_path / "adapter")
    again = load_hf_backend(ModelConfig(path=str(tiny_llama_dir), device="cpu"), adapter=tmp_path / "adapter")

    request = [("Question: What is the capital of France?\nAnswer:", " Paris")]
    assert adapted.loglikelihood(request)[0] != pytest.approx(base.loglikelihood(request)[0], abs=1e-3)
    assert adapted.fingerprint != base.fingerprint
    assert adapted.fingerprint == again.fingerprint
    assert adapted.num_parameters > base.num_parameters  # the LoRA matrices take part in every forward
    prompt = PROMPTS[0]
    expected = greedy_reference(adapted.model, encode_prompt(adapted.tokenizer, prompt, False), 8, eos_ids(adapted))
    completion = adapted.generate([prompt, "Paris"], GenerationSettings(max_new_tokens=8, stop=()))[0]
    assert completion.text == adapted.tokenizer.decode(expected, skip_special_tokens=True)
    with pytest.raises(ModelLoadError, match="no adapter_config.json"):
        load_hf_backend(ModelConfig(path=str(tiny_llama_dir), device="cpu"), adapter=tmp_path / "missing")


# ---- weights and code that can run on load ---------------------------------------------------------------

REQUEST = [("Question: What is the capital of France?\nAnswer:", " Paris")]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pickle_only_copy(model_dir: Path, directory: Path) -> Path:
    """The model with its weights in a pickle pytorch_model.bin instead of model.safetensors, as older
    checkpoints ship (transformers 5 saves safetensors even with safe_serialization=False)."""
    shutil.copytree(model_dir, directory)
    torch.save(AutoModelForCausalLM.from_pretrained(model_dir).state_dict(), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    return directory


class _OpensAFile:
    """Unpickled, this calls open(path, "w"): a harmless stand-in for any code a pickle can run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickle_weights_load_only_when_allowed(tiny_gpt2_dir, tmp_path):
    pickled = pickle_only_copy(tiny_gpt2_dir, tmp_path / "pickled")
    with pytest.raises(ModelLoadError) as refused:
        load(pickled)
    assert str(refused.value) == (
        f"model '{pickled}': {pickled} holds only pickle weights (pytorch_model.bin), and loading pickle can run "
        "code; set model.allow_pickle: true if you trust these files, or convert them to safetensors"
    )
    allowed = load(pickled, allow_pickle=True)
    assert allowed.loglikelihood(REQUEST) == pytest.approx(load(tiny_gpt2_dir).loglikelihood(REQUEST), abs=1e-5)


def test_pickle_only_hub_model_in_the_cache_is_refused_unless_allowed(tiny_gpt2_dir, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--local--tiny-pickled" / "snapshots" / COMMIT
    pickle_only_copy(tiny_gpt2_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match=re.escape(f"{snapshot} holds only pickle weights (pytorch_model.bin)")):
        load_hf_backend(ModelConfig(path="local/tiny-pickled", device="cpu"))
    assert load_hf_backend(ModelConfig(path="local/tiny-pickled", device="cpu", allow_pickle=True)).fingerprint


@pytest.mark.parametrize("write", ["torch.save", "bare pickle", "corrupt"])
def test_pickle_that_would_run_code_is_refused_before_it_runs(tiny_gpt2_dir, tmp_path, write):
    model_dir = pickle_only_copy(tiny_gpt2_dir, tmp_path / "model")
    weights, marker = model_dir / "pytorch_model.bin", tmp_path / "code-ran"
    payload = {"transformer.wte.weight": _OpensAFile(marker)}
    if write == "torch.save":  # the zip format of current checkpoints
        torch.save(payload, weights)
    elif write == "bare pickle":  # a plain pickle stream (protocol 2, which torch's loader parses up to the call)
        weights.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        weights.write_bytes(b"truncated download")
    with pytest.raises(ModelLoadError, match=r"pickle weights \(\*\.bin\) in the directory .* are corrupt"):
        load(model_dir, allow_pickle=True)
    assert not marker.exists()


def test_corrupt_safetensors_is_a_load_error(tiny_gpt2_dir, tmp_path):
    model_dir = shutil.copytree(tiny_gpt2_dir, tmp_path / "model")
    (model_dir / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"cannot load model .*tried the directory .*deserializing header"):
        load(model_dir)


def with_own_code(model_dir: Path, directory: Path, marker: Path) -> Path:
    """The model plus a modelling file of its own, mapped in config.json as hub repos with custom
    architectures do; importing that file creates `marker`."""
    shutil.copytree(model_dir, directory)
    (directory / "custom_gpt2.py").write_text(
        "from pathlib import Path\n"
        "from transformers import GPT2LMHeadModel\n"
        f"Path({str(marker)!r}).touch()\n"
        "class CustomGPT2(GPT2LMHeadModel):\n"
        "    pass\n"
    )
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "custom_gpt2.CustomGPT2"}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_model_code_runs_only_with_trust_remote_code(tiny_gpt2_dir, tmp_path):
    marker = tmp_path / "code-ran"
    model_dir = with_own_code(tiny_gpt2_dir, tmp_path / "custom", marker)
    # A known architecture falls back to transformers' own class; the repository's file is not imported.
    assert type(load(model_dir, revision=COMMIT).model).__name__ == "GPT2LMHeadModel"
    assert not marker.exists()
    assert type(load(model_dir, revision=COMMIT, trust_remote_code=True).model).__name__ == "CustomGPT2"
    assert marker.exists()


def test_released_weights_load_again_on_next_use_with_the_same_answers(tiny_llama_dir):
    backend = load(tiny_llama_dir, batch_size=4)
    settings = GenerationSettings(max_new_tokens=8, stop=())
    before = backend.generate(PROMPTS, settings)
    first_model = backend.model
    backend.release()
    assert backend._model is None  # freed: fine-tuning trains its own copy meanwhile
    assert [c.text for c in backend.generate(PROMPTS, settings)] == [c.text for c in before]
    assert backend.model is not first_model


def test_the_run_cache_wrapper_releases_the_weights_it_wraps(tiny_gpt2_dir, tmp_path):
    backend = load(tiny_gpt2_dir)
    CachedBackend(backend, Store(tmp_path / "store.sqlite"), CacheCounts()).release()  # what fine-tuning calls
    assert backend._model is None


def test_a_backend_over_weights_in_memory_keeps_them_on_release(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    backend = HFBackend(model, AutoTokenizer.from_pretrained(tiny_gpt2_dir), fingerprint="in memory")
    backend.release()  # nothing could load them again (a model being fine-tuned is served this way)
    assert backend.model is model


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_where_there_is_none_is_one_line_before_anything_loads(tiny_gpt2_dir):
    with pytest.raises(ModelLoadError, match=r"model.device is 'cuda', but torch sees no CUDA device here"):
        load_hf_backend(ModelConfig(path=str(tiny_gpt2_dir), device="cuda"))
