"""GGUF files (llama.cpp's format) as plain transformers model directories.

transformers reads a `.gguf` (`from_pretrained(folder, gguf_file=name)`) and unpacks its weights to
float32, but the model it returns still says it is GGUF-quantized (`config.quantization_config`):
PEFT and Trainer refuse to train it and `save_pretrained` refuses to save it. The rest of
tuneorprompt loads, fingerprints and checks models by directory. So a `.gguf` is converted once
into a float32 safetensors directory, and every later load (inference and fine-tuning) uses that.

The directory is named by the sha256 of the file's bytes: the backend's fingerprint of the directory
then stands for the file, and a changed file gets a directory of its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tuneorprompt.config import ModelConfig
from tuneorprompt.keys import file_sha256
from tuneorprompt.model import ModelLoadError

SOURCE_FILE = "gguf_source.json"  # written into each converted directory: which file it came from
_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


def is_gguf(path: str) -> bool:
    return str(path).lower().endswith(".gguf")


def local_model_config(model: ModelConfig) -> ModelConfig:
    """`model` itself, or for a `.gguf` path a copy whose `path` is the converted directory
    (converting the file the first time it is seen)."""
    if not is_gguf(model.path):
        return model
    return model.model_copy(update={"path": str(dequantized_dir(Path(model.path)))})


def default_cache_dir() -> Path:
    root = os.environ.get("TUNEORPROMPT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tuneorprompt") / "gguf"


def dequantized_dir(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    """The transformers model directory holding `gguf_path`'s weights in float32, converted once."""
    gguf_path = Path(gguf_path).expanduser()
    _check_gguf(gguf_path)
    digest = file_sha256(gguf_path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / digest
    if target.is_dir():  # only a finished conversion is ever renamed to this name
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # The lock makes a second process wait for the first's conversion instead of racing it. The lock
    # file stays: deleting it while another process waits on it would let a third lock a new one.
    with _locked(cache / f"{digest}.lock"):
        if target.is_dir():  # converted by another process while this one waited
            return target
        # Holding the lock, nobody else writes here: whatever is left is from a killed conversion.
        partial = cache / f"{digest}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _convert(gguf_path, partial)
        # The file's name, not its path: the backend fingerprints every *.json here, and an
        # absolute path would give the same weights another fingerprint on another machine.
        (partial / SOURCE_FILE).write_text(json.dumps({"file": gguf_path.name, "sha256": digest}, indent=2) + "\n")
        partial.rename(target)  # atomic: the directory appears complete or not at all
    return target


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist (GGUF models load from a local file)")
    with path.open("rb") as handle:
        if handle.read(4) != _MAGIC:
            raise ModelLoadError(f"{str(path)!r} is not a GGUF file (it does not start with {_MAGIC!r})")
    try:
        import gguf  # noqa: F401  (transformers reads the file with it)
    except ImportError:
        raise ModelLoadError(
            f"reading GGUF file {str(path)!r} needs the `gguf` package: pip install 'tuneorprompt[gguf]'"
        ) from None


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; the kernel releases it if the holder dies
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _convert(gguf_path: Path, out: Path) -> None:
    """Load the GGUF through transformers and save it as a plain model: weights, config without
    `quantization_config`, generation config, tokenizer (with the file's chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, **_unpacked_weights()
        )
    except (ValueError, KeyError, TypeError, OSError, struct.error) as error:
        # transformers says "GGUF model with architecture X is not supported yet", "Cannot build a
        # tokenizer from a GGUF file stating tokenizer ...", or fails deep inside a truncated file.
        import transformers

        raise ModelLoadError(
            f"GGUF file {str(gguf_path)!r}: transformers {transformers.__version__} cannot load it as a causal LM: "
            f"{type(error).__name__}: {error}"
        ) from error

    # A fresh model of the same class from a config without `quantization_config` carries no trace
    # of GGUF; loading the unpacked weights into it (strictly: every name and shape must match) makes
    # it the same model. Built on the meta device and given the loaded tensors themselves (assign),
    # so a large model is neither held twice in memory nor randomly initialised first; the buffers
    # left on meta are the non-persistent ones (rotary frequencies), which are not saved anyway.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)


def _unpacked_weights() -> dict:
    """Ask for dense weights explicitly: newer transformers can keep GGUF blocks packed (with the
    `kernels` package, on a GPU), and packed blocks cannot be trained nor saved as safetensors."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always unpack
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
