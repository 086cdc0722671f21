"""The model, resolved once per run: `resolve_model(spec) -> ResolvedModel`.

Everything that depends on which model answers reads this one frozen record: the backends (what to
load, on which device, in which dtype, with how many threads, with or without the chat template),
fine-tuning (which local weights to train), the content keys (the model's fingerprint) and the
report (the model's label, its size, the basis its costs are counted on). A `.gguf` file is
converted here, once, into a plain model directory; `chat_template: auto` and `device: auto` are
decided here, once.

Nothing here imports torch or transformers at module level: resolving reads the model's files
(weights headers, tokenizer config) and hashes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from tuneorprompt.config import ModelConfig, ModelSpec, OpenAIModelConfig, VLLMModelConfig
from tuneorprompt import keys


class ModelLoadError(ValueError):
    """A model or adapter that cannot be found or loaded; the message names the path and what was tried."""


@dataclass(frozen=True)
class LocalWeights:
    """A Hugging Face model with files on this machine, as this run loads it: to serve it with
    transformers, and to fine-tune it."""

    spec: ModelConfig  # path: a local directory (a .gguf converted) or a hub id; chat_template a bool; threads set
    directory: Path  # where its files are: the local directory, or the hub cache's snapshot
    files_fingerprint: str  # `fingerprint_files` of its weights, configs and tokenizer files
    device: str  # "cpu", "cuda", "cuda:1": `model.device` with "auto" decided
    dtype: str  # "float32", "bfloat16", "float16": `model.dtype` with "auto" read from the checkpoint
    num_parameters: int  # from the weight files' headers, tied weights stored once

    @property
    def chat_template(self) -> bool:
        return bool(self.spec.chat_template)

    @property
    def fingerprint(self) -> str:
        """The identity of this model as served by transformers here (`keys.serving_fingerprint`)."""
        return keys.serving_fingerprint(self.files_fingerprint, self.dtype, self.device, self.chat_template)

    def with_files(self, directory: Path) -> "LocalWeights":
        """Other weights of the same shape in `directory` (a fully fine-tuned copy), served the same way."""
        directory = Path(directory)
        spec = self.spec.model_copy(update={"path": str(directory), "revision": None})
        return replace(self, spec=spec, directory=directory, files_fingerprint=fingerprint_directory(directory))


@dataclass(frozen=True)
class ResolvedModel:
    """The run's model, every "auto" decided and its files hashed; made once per run."""

    spec: ModelSpec  # as resolved: an hf spec's path converted, chat_template and num_threads decided
    label: str  # how the report names the model: the path or file the user gave
    fingerprint: str  # the identity of the model as it answers (the generation cache and results are keyed by it)
    chat_template: bool  # prompts are conversations rendered by the model's chat template
    # Parameters, for FLOPs estimates: counted from the weight files, or declared for a served model
    # (`model.num_parameters`); None when unknown, and costs are then counted in tokens.
    num_parameters: int | None
    # The local weights fine-tuning trains and serves with transformers; None: the model cannot be
    # trained here (a served model without `local_path`).
    weights: LocalWeights | None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def trainable(self) -> bool:
        return self.weights is not None


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """`spec` resolved: converted, hashed, every "auto" decided (see the module docstring)."""
    if isinstance(spec, ModelConfig):
        weights = resolve_local_weights(spec)
        return ResolvedModel(weights.spec, spec.label, weights.fingerprint, weights.chat_template,
                             weights.num_parameters, weights)
    if isinstance(spec, OpenAIModelConfig):
        chat = spec.mode == "chat"
        weights = _served_model_weights(spec) if spec.local_path is not None else None
        # The size the user declares for the served model, else that of its local copy, else unknown.
        size = spec.num_parameters if spec.num_parameters is not None else (weights and weights.num_parameters)
        return ResolvedModel(spec, spec.label, keys.served_model_key(spec), chat, size, weights)
    if isinstance(spec, VLLMModelConfig):
        weights = resolve_local_weights(
            ModelConfig(path=spec.path, revision=spec.revision, dtype=spec.dtype, chat_template=spec.chat_template)
        )
        spec = spec.model_copy(update={"chat_template": weights.chat_template})
        # vLLM's kernels are not transformers': its answers are cached apart from the hf backend's.
        fingerprint = keys.served_model_key(spec, files_fingerprint=weights.files_fingerprint)
        return ResolvedModel(spec, spec.label, fingerprint, weights.chat_template, weights.num_parameters, weights)
    raise TypeError(f"unknown model kind {type(spec).__name__}")


def as_local_weights(weights: LocalWeights | ModelConfig) -> LocalWeights:
    """Resolved weights as given, or a `ModelConfig` resolved now (notebooks and tests load models by config)."""
    return weights if isinstance(weights, LocalWeights) else resolve_local_weights(weights)


def _served_model_weights(spec: OpenAIModelConfig) -> LocalWeights:
    """A served model's local copy, prompted as the server is: conversations in chat mode (so its
    tokenizer needs a chat template), plain text in completions mode."""
    chat = spec.mode == "chat"
    if chat and not has_chat_template(model_directory(spec.local_path, None)):
        raise ModelLoadError(
            f"model.local_path: {spec.local_path!r} has no chat template, and model.mode is chat: a model fine-tuned "
            "from it could not be prompted as the server prompts it; give a copy with its chat template"
        )
    return resolve_local_weights(ModelConfig(path=spec.local_path, chat_template=chat))


def resolve_local_weights(spec: ModelConfig) -> LocalWeights:
    from tuneorprompt.backends.gguf import local_model_config
    from tuneorprompt.machine import free_cores

    spec = local_model_config(spec)
    directory = model_directory(spec.path, spec.revision)
    if not spec.allow_pickle:
        _refuse_pickle_only(spec, directory)
    chat = uses_chat_template(spec.chat_template, directory, spec.path)
    # Chosen once, here, while this process is idle: every later load (fine-tuned models included)
    # uses the same count, and environment.json records it.
    threads = spec.num_threads if spec.num_threads is not None else free_cores()
    spec = spec.model_copy(update={"chat_template": chat, "num_threads": threads})
    return LocalWeights(
        spec=spec,
        directory=directory,
        files_fingerprint=fingerprint_directory(directory, spec.path),
        device=resolve_device(spec.device),
        dtype=resolve_dtype(spec.dtype, directory),
        num_parameters=count_parameters(directory, spec),
    )


# ---- where the files are ------------------------------------------------------------------------------


def model_directory(path_or_id: str, revision: str | None) -> Path:
    """The directory holding a model's files: the local directory `path_or_id` names, or a hub
    model's snapshot already in the Hugging Face cache (no network)."""
    return local_dir(path_or_id) or hub_snapshot(path_or_id, revision)


def local_dir(path_or_id: str) -> Path | None:
    """The local model directory `path_or_id` names, or None when it is a hub id ("name", "org/name")."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelLoadError(f"model path {path_or_id!r} is a file; give the model's directory")
    if path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1:
        raise ModelLoadError(f"model directory {path_or_id!r} does not exist")
    return None


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot folder of a hub model already in the Hugging Face cache (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as error:
        raise ModelLoadError(
            f"model {repo_id!r} (revision {revision or 'main'}): not a local directory, and not in the "
            f"Hugging Face cache ({error}); download it once with network access, or give a local path"
        ) from None


# ---- the files' fingerprint -----------------------------------------------------------------------------

# Files whose bytes decide what a model answers to a given prompt text: weights, model and generation
# configs (eos ids), tokenizer files (how text becomes tokens, the chat template), adapter config.
_FINGERPRINT_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.json",  # config.json, generation_config.json, tokenizer*.json, adapter_config.json, ...
    "*.model",  # SentencePiece tokenizers
    "merges.txt",
    "*.jinja",  # chat templates saved beside the tokenizer
)


def fingerprinted_files(directory: Path) -> list[Path]:
    found = {path for pattern in _FINGERPRINT_PATTERNS for path in directory.glob(pattern) if path.is_file()}
    return sorted(found)


def fingerprint_directory(directory: Path, name: str | None = None) -> str:
    """Fingerprint of a model directory's files; it must hold weights."""
    files = fingerprinted_files(directory)
    if not any(path.suffix in {".safetensors", ".bin"} for path in files):
        raise ModelLoadError(f"model {name or str(directory)!r}: no weight files (*.safetensors, *.bin) in {directory}")
    return keys.fingerprint_files(files)


def adapter_fingerprint(base_fingerprint: str, adapter: Path) -> str:
    """A base model's fingerprint with a PEFT adapter's files on top (`keys.adapter_fingerprint`)."""
    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {adapter}: not a PEFT adapter directory (no adapter_config.json)")
    return keys.adapter_fingerprint(base_fingerprint, fingerprinted_files(adapter))


# ---- "auto" decided ---------------------------------------------------------------------------------


def uses_chat_template(setting: bool | str, directory: Path, name: str) -> bool:
    """`model.chat_template` resolved against the tokenizer's files: "auto" uses the template when there
    is one. The HF backend checks the loaded tokenizer agrees (`backends.hf.load_hf_backend`)."""
    found = has_chat_template(directory)
    if setting == "auto":
        return found
    if setting and not found:
        raise ModelLoadError(
            f"model.chat_template is true but the tokenizer {name!r} has no chat template; "
            "set it to auto or false for base models"
        )
    return bool(setting)


def has_chat_template(directory: Path) -> bool:
    """Whether the tokenizer saved in `directory` has a chat template, in any of the places transformers
    reads one from: tokenizer_config.json's `chat_template`, chat_template.jinja, chat_template.json, or
    additional_chat_templates/."""
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    if any((directory / "additional_chat_templates").glob("*.jinja")):
        return True
    config = _read_json(directory / "tokenizer_config.json")
    return bool(config.get("chat_template"))


def resolve_device(device: str) -> str:
    """'auto' is cuda when there is one, else cpu. A CUDA device asked for where there is none is an error
    here, before anything runs."""
    if device != "auto" and not device.startswith("cuda"):
        return device
    cuda = _cuda_available()
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if not cuda:
        raise ModelLoadError(f"model.device is {device!r}, but torch sees no CUDA device here; use cpu or auto")
    return device


def _cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch (seconds) where the answer is known: torch's
    CPU-only builds carry the local version label "+cpu" and never see a CUDA device. A run that reads
    every answer from its store then imports no torch at all."""
    from importlib import metadata

    try:
        if metadata.version("torch").endswith("+cpu"):
            return False
    except metadata.PackageNotFoundError:
        return False
    import torch

    return torch.cuda.is_available()


_CHECKPOINT_DTYPES = {"float32", "bfloat16", "float16"}


def resolve_dtype(dtype: str, directory: Path) -> str:
    """'auto' is the checkpoint's own dtype (config.json's `dtype`, `torch_dtype` before transformers 5),
    float32 where it names none."""
    if dtype != "auto":
        return dtype
    config = _read_json(directory / "config.json")
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return saved if saved in _CHECKPOINT_DTYPES else "float32"


def _refuse_pickle_only(spec: ModelConfig, directory: Path) -> None:
    """A model whose only weights are pickle files is refused up front: transformers' own error
    ("no file named model.safetensors") would not say why, nor what to do."""
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in directory.glob("*.bin"))
    if pickles:
        raise ModelLoadError(
            f"model {spec.path!r}: {directory} holds only pickle weights ({', '.join(pickles)}), and loading "
            "pickle can run code; set model.allow_pickle: true if you trust these files, or convert them to safetensors"
        )


def count_parameters(directory: Path, spec: ModelConfig) -> int:
    """Parameters in the model's weight files, from the safetensors headers (no tensor is read).
    transformers saves tied weights once, so this is the count the loaded model reports; the HF
    backend checks that (`backends.hf.HFBackend`). Pickle-only weights are counted by loading them
    with torch's safe loader, memory-mapped, where `model.allow_pickle` permits it."""
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return sum(_safetensors_parameters(path, spec.path) for path in safetensors)
    import torch  # pickle weights (model.allow_pickle: true; else refused before this)

    try:
        # A state dict saved with torch.save keeps tied weights (an output head sharing the input
        # embedding) as two entries over one storage: each storage region counts once.
        regions = {
            (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)): tensor.numel()
            for path in sorted(directory.glob("*.bin"))
            for tensor in torch.load(path, map_location="cpu", mmap=True, weights_only=True).values()
        }
        return sum(regions.values())
    except Exception as error:  # noqa: BLE001 - whatever the bytes raise, say which model and why
        raise pickle_refused(spec.path, f"directory {directory}", error) from None


def pickle_refused(name: str, where: str, error: BaseException) -> ModelLoadError:
    """Pickle weights torch's safe loader refused (weights_only=True raises before any forbidden call
    runs; a truncated or corrupt file ends in EOFError, IndexError, struct.error, ... as its bytes fall).
    The loader's own message is not repeated: it quotes the file's globals and carries terminal escapes."""
    return ModelLoadError(
        f"cannot load model {name!r}: the pickle weights (*.bin) in the {where} are corrupt or hold more than "
        f"tensors ({type(error).__name__}); torch's safe loader refused them, so no code in them ran. Use a "
        "safetensors copy of the model."
    )


def _safetensors_parameters(path: Path, name: str) -> int:
    """Elements of every tensor in a safetensors file, read from its header by the safetensors library
    (which checks the header's length and JSON before trusting either)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {name!r}: tried the directory {path.parent}: {path.name}: {error}") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot read it as JSON: {error}") from None
