"""Content keys: every stored result is found by a hash of everything that determined it.

A result is looked up by what produced it, never by a name. Change any input and the key changes,
so a re-run into the same directory recomputes exactly what the change affects and reads back the
rest; the same inputs always give the same key, in any process on any machine.

This file holds every recipe, one function per stored thing, so a staleness audit reads one file:
  model identity     `fingerprint_files`, `adapter_fingerprint`, `serving_fingerprint`,
                     `served_model_key`, `trained_weights_fingerprint`
  the protocol       `protocol_key` (model as served, data, prompt, decoding, scoring; `PROTOCOL_VERSION`),
                     `user_metric_key` (a user's `module:function` metric, by its code)
  a generation       `generation_key` (serving identity, decoding settings, exact prompt text)
  dev scores         `dev_key` (dev prompts and targets, decoding, scoring), `dev_score_key`,
                     `instruction_choice_key`
  an arm's result    `arm_key` (protocol, arm name and spec, seed)
  a fine-tuning job  `training_data_key`, `finetune_job_key`, `grid_key`
  a run              `config_key`, `plan_key`, `report_page_key`
and the version of the store's layout (`STORE_LAYOUT`) beside them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tuneorprompt.records import Example, GenerationSettings
from tuneorprompt.safe_text import mask_credentials

# Part of every stored result's key (through `protocol_key`): bumped when a change to prompting,
# decoding or scoring code changes what a stored result means, so results of the old code are not
# read back as current.
PROTOCOL_VERSION = 1
# The plan's checks and cost estimates (`experiment.plan_run`): bumped when a change to them would make
# a stored plan wrong for the same inputs (2: a plan holds its searches' budgets beside the estimates;
# 3: match_finetune matches fine-tuning without a chain's search).
PLAN_VERSION = 3
# The store's table layout (`store.Store`): bumped whenever a table or a key's meaning changes, so a
# store of another layout is refused rather than read with the wrong meaning.
STORE_LAYOUT = 3


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---- model identity -------------------------------------------------------------------------------------


def fingerprint_files(paths: Iterable[Path]) -> str:
    """sha256 (hex) over each file's name, size and bytes, in name order.

    Names, not full paths: a model copied to another directory keeps its fingerprint. The size
    delimits one file's bytes from the next name.
    """
    digest = hashlib.sha256()
    for path in sorted((Path(p) for p in paths), key=lambda p: p.name):
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def adapter_fingerprint(base_fingerprint: str, adapter_files: Iterable[Path]) -> str:
    """A base model's files with a PEFT adapter's files on top."""
    return hashlib.sha256((base_fingerprint + fingerprint_files(adapter_files)).encode()).hexdigest()


def serving_fingerprint(files_fingerprint: str, dtype: str, device: str, chat_template: bool) -> str:
    """A local model's identity as transformers serves it: its files (`fingerprint_files`), and the
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
        # The URL without its credentials: a changed password is not a changed model (its answers stay
        # valid), and the key, like everything derived from the config, stays free of the secret.
        url = mask_credentials(spec.base_url).rstrip("/")
        return content_key("openai", url, spec.model, spec.mode, spec.revision, spec.seed)
    return content_key("vllm", files_fingerprint, spec.dtype, spec.chat_template)


def trained_weights_fingerprint(base_fingerprint: str, tensors: Iterable[tuple[str, Any]]) -> str:
    """Weights being fine-tuned, in memory, for the generation cache during dev scoring: the base
    files plus the name and bytes of every trainable tensor (the adapter for LoRA, all weights for
    full fine-tuning); each tensor as a buffer of its bytes."""
    digest = hashlib.sha256(base_fingerprint.encode())
    for name, data in tensors:
        digest.update(name.encode() + b"\0")
        digest.update(data)
    return "trained-" + digest.hexdigest()


# ---- the protocol and the data --------------------------------------------------------------------------


def examples_key(examples: Sequence[Example]) -> str:
    """The content of a split as the run uses it: ids, inputs and acceptable targets, in order.
    Hashing the parsed examples (not the file bytes) covers the file's content, `fields`, the seeded
    split and `max_test` at once; reformatting a file without changing its records keeps the key."""
    return content_key([[e.id, e.input, list(e.targets)] for e in examples])


def texts_key(texts: Iterable[str]) -> str:
    return content_key(list(texts))


def protocol_key(record: dict) -> str:
    """What every arm's result depends on (`experiment.protocol_record`, which holds `PROTOCOL_VERSION`),
    without `data_files`: the file hashes are provenance only, the parsed data is what results depend on."""
    return content_key({k: v for k, v in record.items() if k != "data_files"})


def user_metric_key(function: Callable) -> str:
    """A user's metric function (`metric.accuracy: "module:function"`) by its code, not its name: the
    function's source and the bytes of its module's file (helpers it calls live there too), so editing
    either scores again instead of reading back the old scores. Built-in metrics are code of this package
    (`PROTOCOL_VERSION` covers them) and have no such key."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):  # no source to read (a compiled extension, a function made in memory)
        source = None
    file = inspect.getsourcefile(function) if source is not None else getattr(inspect.getmodule(function), "__file__", None)
    module_bytes = file_sha256(Path(file)) if file and Path(file).is_file() else None
    return content_key(function.__module__, function.__qualname__, source, module_bytes)


def config_key(config) -> str:
    """A run's resolved config, as the store's list of runs records it."""
    return content_key(config)


def plan_key(protocol: str, arms: Sequence[tuple[str, dict]], seed: int, costs, learning_curve) -> str:
    """A run's plan: what its checks (the model trainable, every prompt within the context) and its
    arms' cost estimates depended on: the protocol (model files, data, prompt, decoding), each arm's
    name and settings, the seed whose demos were measured, the cost settings, and the learning curve
    (which decides whether the model must be trainable)."""
    return content_key(PLAN_VERSION, protocol, [list(arm) for arm in arms], seed, costs, learning_curve)


def report_page_key(shown: dict, examples, renderer_files: Iterable[Path]) -> str:
    """report.html: what the page shows (the report, and its per-item answers table) and the bytes of
    the code that renders it, so a page is written again exactly when it would read differently."""
    return content_key(shown, examples, [file_sha256(path) for path in renderer_files])


# ---- generations, dev scores, arm results --------------------------------------------------------------


def generation_key(fingerprint: str, settings: GenerationSettings, prompt: str) -> str:
    """One greedy generation: who answered, with which decoding settings, to which exact text."""
    return content_key(fingerprint, settings, prompt)


def dev_key(prompts: Sequence, targets: Sequence[Sequence[str]], generation, metric) -> str:
    """A dev score: the exact dev prompts and targets, decoding and scoring settings. The model is not
    in it: a caller scoring several models (fine-tuning epochs) adds each one's fingerprint
    (`dev_score_key`)."""
    return content_key(list(prompts), [list(t) for t in targets], generation, metric)


def dev_score_key(dev: str, fingerprint: str) -> str:
    return content_key(dev, fingerprint)


def instruction_choice_key(protocol: str) -> str:
    """The dev records of the candidate instructions, chosen once per run and shared by every arm."""
    return content_key(protocol, "instruction-choice")


def arm_key(protocol: str, arm_name: str, spec: dict | None, seed: int, method_version: int) -> str:
    """An arm's test records and notes: the protocol, the arm's name, settings and procedure version
    (`arms.Arm.method_version`), and its seed."""
    return content_key(protocol, arm_name, spec, seed, method_version)


# ---- fine-tuning ---------------------------------------------------------------------------------------


def training_data_key(examples: Sequence) -> str:
    """The training examples as rendered for training: ids, prompts (text or conversation), answers."""
    return content_key([[e.id, e.prompt, e.answer] for e in examples])


def finetune_job_key(job: dict) -> str:
    """A fine-tuning job's folder (`finetune.describe_job`: model as served, data, arm settings, seed,
    dev scoring, batching), so a changed input trains into a new folder instead of resuming another's."""
    return content_key(job)


def grid_key(learning_rates: Sequence[float]) -> str:
    """The selection among a job's learning rates: each grid has its own."""
    return content_key(tuple(learning_rates))
