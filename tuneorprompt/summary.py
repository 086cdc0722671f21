"""Pure aggregation: per-example records of one arm (one list per seed) -> the arm's report row, an
`ArmSummary`.

Nothing here touches a model or a file; the same records always give the same row. Each kind of
figure has one `Scale`, decided here: the scale report.json and MLflow hold it on, and the scale a
reader sees it on. Every view formats a figure through its scale, never by a factor of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from tuneorprompt import stats
from tuneorprompt.evaluate import PROMPTS_SHORTENED, REPLIES_CUT
from tuneorprompt.records import ExampleRecord, TrainingCost


# ---- scales ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How one kind of figure is reported and shown: report.json holds `reported` x the mean of the
    per-example values; a reader sees that x `shown`, followed by `unit`."""

    reported: float
    shown: float
    unit: str

    def to_shown(self, value: float) -> float:
        """A reported value on the scale a reader sees (a plot's axis)."""
        return self.shown * value

    def show(self, value: float, digits: int = 1) -> str:
        """A reported value as a reader sees it, without its unit (tables name it in the header)."""
        return f"{self.to_shown(value):.{digits}f}"

    def with_unit(self, value: float, digits: int = 1) -> str:
        return self.show(value, digits) + self.unit

    def show_interval(self, value: float, low: float, high: float, digits: int = 1) -> str:
        return f"{self.show(value, digits)} [{self.show(low, digits)}, {self.show(high, digits)}]"

    def show_difference(self, test: stats.PairedTest, digits: int = 1) -> str:
        """A paired difference (of reported values) with its interval, signed."""
        d, low, high = (self.to_shown(x) for x in (test.difference, test.diff_low, test.diff_high))
        return f"{d:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


ACCURACY = Scale(reported=1.0, shown=100.0, unit="%")  # a fraction of the test items, shown as a percentage
RELEVANCE = Scale(reported=100.0, shown=1.0, unit="")  # a cosine similarity in [-1, 1], reported x100


def outcome_matrix(records_by_seed: Sequence[Sequence[ExampleRecord]], field: str) -> np.ndarray:
    """[n_seeds, n_items] of one per-example field, items in the same (test file) order for every seed."""
    return np.array([[getattr(r, field) for r in records] for records in records_by_seed], dtype=float)


def relevance_matrix(records_by_seed: Sequence[Sequence[ExampleRecord]]) -> np.ndarray:
    """Per-example relevance on its reported scale, [n_seeds, n_items]."""
    return RELEVANCE.reported * outcome_matrix(records_by_seed, "relevance")


# ---- the arm's row ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A headline figure with its CI, and the per-seed means and their spread, on its reported scale."""

    value: float
    ci_low: float
    ci_high: float
    ci_method: str
    n: int  # test items
    per_seed: tuple[float, ...]
    seed_std: float
    scale: Scale

    def shown(self, digits: int = 1) -> str:
        """'61.5 [54.6, 68.1]': the figure and its interval as a reader sees them."""
        return self.scale.show_interval(self.value, self.ci_low, self.ci_high, digits)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_method": self.ci_method,
                "n": self.n, "per_seed": list(self.per_seed), "seed_std": self.seed_std}


@dataclass(frozen=True)
class TrainingSummary:
    """A fine-tuned arm's training cost: each cost the mean over seeds; `extra` (chosen learning rate
    and epoch, dev scores, ...) one dict per seed."""

    wall_seconds: float
    train_tokens: float
    trainable_params: float
    total_params: float
    peak_rss_mb: float
    peak_gpu_mb: float | None  # mean over the seeds that measured it (None: trained without a GPU)
    adapter_mb: float
    flops: float
    extra: list[dict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArmNotes:
    """Caveats on how an arm was scored, per seed: prompts that lost demonstrations (the least relevant
    dropped first) to fit the model's context. Such an arm was scored with fewer demos than its name
    says, on some items; on dev, its choices (learning rate, epoch) were made on such prompts."""

    prompts_shortened_test: tuple[int, ...]
    prompts_shortened_dev: tuple[int, ...]


@dataclass(frozen=True)
class ScoredExample:
    """One reply as both views scored it, for a reader to judge which view is right."""

    arm: str
    seed: int
    id: str
    reply: str  # cut at MAX_REPLY_CHARS
    answer: str  # what the extraction rule took from the reply: what the strict view scored
    reference: str
    strict: float
    lenient: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoringAudit:
    """How an arm's replies meet the two scoring views (see `scoring_audit`)."""

    reply_words: float
    answer_words: float
    reference_words: float
    replies: int
    empty_replies: int
    replies_cut: int  # replies longer than the size cap (`backends.text.reply_cap`), cut to it before scoring
    strict_only: int
    lenient_only: int
    examples: tuple[ScoredExample, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "examples"},
                "examples": [e.to_dict() for e in self.examples]}


@dataclass(frozen=True)
class ArmSummary:
    """One arm's report row: its figures over every seed, its costs, and how it was scored."""

    name: str
    kind: str
    family: str  # "prompt", "retrieval" or "finetune": what the decision compares (`arms.Arm.family`)
    backend: str  # which backend answered: fine-tuned arms are served by transformers ("hf") whatever served the others
    seeds: tuple[int, ...]
    accuracy: Estimate  # strict view
    accuracy_lenient: Estimate  # the same interval on the lenient view, so the two views compare like for like
    relevance: Estimate
    prompt_tokens: float  # mean per query
    generated_tokens: float
    seconds_per_query: float
    flops_per_query: float | None  # None when the model's size is unknown (a served endpoint)
    training: TrainingSummary | None
    # The process's peak resident memory while the arm prepared and ran (MiB; the highest over seeds),
    # base model included: what a machine running this arm needs.
    peak_rss_mb: float | None
    details: list[dict]  # per seed, what the arm chose and recorded (instruction, k, demo ids, ...)
    example_prompt: str | None  # the exact text the model saw for the first test item (chat template and all)
    scoring_audit: ScoringAudit
    notes: ArmNotes

    @property
    def queries_per_second(self) -> float | None:
        return 1.0 / self.seconds_per_query if self.seconds_per_query > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The arm's entry in report.json."""
        return {
            "name": self.name,
            "kind": self.kind,
            "family": self.family,
            "seeds": list(self.seeds),
            "accuracy": self.accuracy.to_dict(),
            "accuracy_lenient": self.accuracy_lenient.to_dict(),
            "relevance": self.relevance.to_dict(),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "seconds_per_query": self.seconds_per_query,
            "queries_per_second": self.queries_per_second,
            "flops_per_query": self.flops_per_query,
            "training": self.training.to_dict() if self.training else None,
            "peak_rss_mb": self.peak_rss_mb,
            "details": self.details,
            "example_prompt": self.example_prompt,
            "scoring_audit": self.scoring_audit.to_dict(),
            "backend": self.backend,
        }


def summarize_arm(
    name: str,
    kind: str,
    records_by_seed: Sequence[Sequence[ExampleRecord]],
    info_by_seed: Sequence[dict],
    num_parameters: int | None,
    *,
    family: str,
    backend: str,
    level: float = 0.95,
    resamples: int = 2000,
) -> ArmSummary:
    """`info_by_seed`: what the arm recorded per seed (`arms.run_arm`), its training cost included."""
    correct = outcome_matrix(records_by_seed, "correct")
    correct_lenient = outcome_matrix(records_by_seed, "correct_lenient")
    relevance = relevance_matrix(records_by_seed)
    all_records = [r for records in records_by_seed for r in records]
    prompt_tokens = float(np.mean([r.prompt_tokens for r in all_records]))
    generated_tokens = float(np.mean([r.generated_tokens for r in all_records]))
    training = [info["training"] for info in info_by_seed if info.get("training")]
    peaks = [info["peak_rss_mb"] for info in info_by_seed if info.get("peak_rss_mb") is not None]
    return ArmSummary(
        name=name,
        kind=kind,
        family=family,
        backend=backend,
        seeds=tuple(records[0].seed for records in records_by_seed),
        accuracy=_estimate(stats.accuracy_interval(correct, level=level), correct, ACCURACY),
        accuracy_lenient=_estimate(stats.accuracy_interval(correct_lenient, level=level), correct_lenient, ACCURACY),
        relevance=_estimate(stats.mean_interval(relevance, level=level, resamples=resamples), relevance, RELEVANCE),
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        seconds_per_query=float(np.mean([r.seconds for r in all_records])),
        flops_per_query=(
            stats.inference_flops(num_parameters, prompt_tokens, generated_tokens) if num_parameters else None
        ),
        training=mean_training_cost(training) if training else None,
        peak_rss_mb=max(peaks) if peaks else None,
        details=[{k: v for k, v in info.items() if k != "training"} for info in info_by_seed],
        example_prompt=records_by_seed[0][0].prompt if records_by_seed and records_by_seed[0] else None,
        scoring_audit=scoring_audit(
            records_by_seed, replies_cut=sum(info.get(REPLIES_CUT["test"], 0) for info in info_by_seed)
        ),
        notes=ArmNotes(
            prompts_shortened_test=tuple(info.get(PROMPTS_SHORTENED["test"], 0) for info in info_by_seed),
            prompts_shortened_dev=tuple(info.get(PROMPTS_SHORTENED["dev"], 0) for info in info_by_seed),
        ),
    )


def _estimate(interval: stats.Interval, per_item: np.ndarray, scale: Scale) -> Estimate:
    """`per_item` is [n_seeds, n_items], on the same scale as `interval`."""
    per_seed = per_item.mean(axis=1)
    return Estimate(
        value=interval.value,
        ci_low=interval.low,
        ci_high=interval.high,
        ci_method=interval.method,
        n=per_item.shape[1],
        per_seed=tuple(per_seed.tolist()),
        seed_std=float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
        scale=scale,
    )


# ---- the scoring audit -----------------------------------------------------------------------------

AUDIT_EXAMPLES = 3
MAX_REPLY_CHARS = 300  # an example shows the start of a long reply; report.json stays small


def scoring_audit(
    records_by_seed: Sequence[Sequence[ExampleRecord]], limit: int = AUDIT_EXAMPLES, *, replies_cut: int = 0
) -> ScoringAudit:
    """How an arm's replies meet the two scoring views, to tell a format problem from a content one.
    `replies_cut`: how many of the replies were cut to the size cap (the evaluator counts them).

    Lengths are mean words over every seed's records: a reply many times longer than its reference
    is a sentence that an exact matcher cannot accept. `strict_only` / `lenient_only` count records
    (all seeds) right in one view and wrong in the other; `examples` shows up to `limit` of them
    from the first seed, alternating between the two kinds so that both show when both occur.
    """
    all_records = [r for records in records_by_seed for r in records]
    strict_only = [r for r in all_records if _right(r.correct) and not _right(r.correct_lenient)]
    lenient_only = [r for r in all_records if _right(r.correct_lenient) and not _right(r.correct)]
    first_seed = records_by_seed[0][0].seed if records_by_seed and records_by_seed[0] else None
    kinds = [[r for r in rows if r.seed == first_seed] for rows in (lenient_only, strict_only)]
    return ScoringAudit(
        reply_words=_mean_words(r.completion for r in all_records),
        answer_words=_mean_words(r.answer for r in all_records),
        reference_words=_mean_words(r.targets[0] if r.targets else "" for r in all_records),
        replies=len(all_records),
        empty_replies=sum(not r.completion.strip() for r in all_records),
        replies_cut=replies_cut,
        strict_only=len(strict_only),
        lenient_only=len(lenient_only),
        examples=tuple(scored_example(r) for r in interleave(kinds)[:limit]),
    )


def scored_example(record: ExampleRecord) -> ScoredExample:
    reply = record.completion.strip()
    return ScoredExample(
        arm=record.arm,
        seed=record.seed,
        id=record.example_id,
        reply=reply if len(reply) <= MAX_REPLY_CHARS else reply[:MAX_REPLY_CHARS] + "...",
        answer=record.answer,
        reference=record.targets[0] if record.targets else "",
        strict=record.correct,
        lenient=record.correct_lenient,
    )


def _right(score: float) -> bool:
    # A user metric may give partial credit; at least half counts as right, as in the report's tables.
    return score >= 0.5


def _mean_words(texts) -> float:
    counts = [len(text.split()) for text in texts]
    return float(np.mean(counts)) if counts else 0.0


def interleave(groups: Sequence[Sequence]) -> list:
    """[a1, b1, a2, b2, ...], then what remains of the longer group."""
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def mean_training_cost(costs: Sequence[dict | TrainingCost]) -> TrainingSummary:
    """Mean of each cost over seeds (as stored, a cost is a dict of `TrainingCost`'s fields)."""
    rows = [c if isinstance(c, TrainingCost) else TrainingCost(**c) for c in costs]

    def mean(name: str) -> float:
        return float(np.mean([getattr(row, name) for row in rows]))

    gpu = [row.peak_gpu_mb for row in rows if row.peak_gpu_mb is not None]
    return TrainingSummary(
        wall_seconds=mean("wall_seconds"),
        train_tokens=mean("train_tokens"),
        trainable_params=mean("trainable_params"),
        total_params=mean("total_params"),
        peak_rss_mb=mean("peak_rss_mb"),
        peak_gpu_mb=float(np.mean(gpu)) if gpu else None,
        adapter_mb=mean("adapter_mb"),
        flops=mean("flops"),
        extra=[row.extra for row in rows],
    )
