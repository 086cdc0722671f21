"""Content keys: every stored result is found by a hash of everything that determined it.

A result is looked up by what produced it, never by a name: a generation by the serving identity
of the model, the decoding settings and the exact prompt; an arm's test records by the model, the
data, the prompt, decoding and scoring settings, the arm's spec and its seed; a fine-tuning run by
its training data, model, arm settings, seed and how dev scored it. Change any input and the key
changes, so a re-run into the same directory recomputes exactly what the change affects and reads
back the rest; the same inputs always give the same key, in any process on any machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tuneorprompt.records import Example


def jsonable(value: Any) -> Any:
    """JSON-ready form with a single spelling per value: dataclasses and pydantic models as dicts,
    tuples as lists, paths as strings (dict keys are sorted by json.dumps). Also how arm notes
    (`System.info`) are stored."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if hasattr(value, "model_dump"):  # pydantic
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"content_key: cannot hash a {type(value).__name__} ({value!r})")


def content_key(*parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of `parts`. Floats are written by repr, so 1e-3 and 0.001
    hash alike and 0.1 + 0.2 does not collide with 0.3."""
    payload = json.dumps(jsonable(list(parts)), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---- models ------------------------------------------------------------------------------------------


def serving_fingerprint(files_fingerprint: str, dtype: str, device: str, chat_template: bool) -> str:
    """A local model's identity as transformers serves it: its files (`model.fingerprint_files`), and the
    dtype and device type its weights run in (kernels round differently) and whether prompts are
    wrapped in its chat template, all of which change what it answers. The dtype is spelled as torch
    prints it ("torch.float32"), the device by its type ("cuda" for "cuda:1")."""
    return content_key(files_fingerprint, f"torch.{dtype}", device.split(":")[0], chat_template)


def served_model_key(spec, files_fingerprint: str | None = None) -> str:
    """A model served by another engine: an OpenAI-compatible server is its URL, served name, mode,
    revision label and seed (the server cannot prove which weights it runs: the revision label is the
    user's word); vLLM in this process is its files, dtype setting and chat-template use, under its own
    name so that its answers are never mixed with transformers'."""
    if spec.kind == "openai":
        return content_key("openai", spec.base_url.rstrip("/"), spec.model, spec.mode, spec.revision, spec.seed)
    return content_key("vllm", files_fingerprint, spec.dtype, spec.chat_template)


def examples_key(examples: Sequence[Example]) -> str:
    """The content of a split as the run uses it: ids, inputs and acceptable targets, in order.
    Hashing the parsed examples (not the file bytes) covers the file's content, `fields`, the seeded
    split and `max_test` at once; reformatting a file without changing its records keeps the key."""
    return content_key([[e.id, e.input, list(e.targets)] for e in examples])


def texts_key(texts: Iterable[str]) -> str:
    return content_key(list(texts))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
