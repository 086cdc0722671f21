"""Pure aggregation: per-example records of one arm (one list per seed) -> the arm's report row.

Nothing here touches a model or a file; the same records always give the same row.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import numpy as np

from tuneorprompt import stats
from tuneorprompt.records import ExampleRecord, TrainingCost


def outcome_matrix(records_by_seed: Sequence[Sequence[ExampleRecord]], field: str) -> np.ndarray:
    """[n_seeds, n_items] of one per-example field, items in the same (test file) order for every seed."""
    return np.array([[getattr(r, field) for r in records] for records in records_by_seed], dtype=float)


def summarize_arm(
    name: str,
    kind: str,
    records_by_seed: Sequence[Sequence[ExampleRecord]],
    info_by_seed: Sequence[dict],
    num_parameters: int | None,
    level: float = 0.95,
    resamples: int = 2000,
) -> dict:
    correct = outcome_matrix(records_by_seed, "correct")
    correct_lenient = outcome_matrix(records_by_seed, "correct_lenient")
    relevance = 100.0 * outcome_matrix(records_by_seed, "relevance")  # reported on a 0-100 scale
    accuracy = stats.accuracy_interval(correct, level=level)
    relevance_ci = stats.mean_interval(relevance, level=level, resamples=resamples)
    all_records = [r for records in records_by_seed for r in records]
    prompt_tokens = float(np.mean([r.prompt_tokens for r in all_records]))
    generated_tokens = float(np.mean([r.generated_tokens for r in all_records]))
    seconds = float(np.mean([r.seconds for r in all_records]))
    training = [info["training"] for info in info_by_seed if info.get("training")]
    peaks = [info["peak_rss_mb"] for info in info_by_seed if info.get("peak_rss_mb") is not None]
    return {
        "name": name,
        "kind": kind,
        "seeds": [records[0].seed for records in records_by_seed],
        "accuracy": _metric(accuracy, correct),
        # The same interval on the lenient view, so the two views compare like for like.
        "accuracy_lenient": _metric(stats.accuracy_interval(correct_lenient, level=level), correct_lenient),
        "relevance": _metric(relevance_ci, relevance),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "seconds_per_query": seconds,
        "queries_per_second": 1.0 / seconds if seconds > 0 else None,
        "flops_per_query": (
            stats.inference_flops(num_parameters, prompt_tokens, generated_tokens) if num_parameters else None
        ),
        "training": mean_training_cost(training) if training else None,
        # The process's peak resident memory while the arm prepared and ran (MiB; the highest over
        # seeds), base model included: what a machine running this arm needs.
        "peak_rss_mb": max(peaks) if peaks else None,
        "details": [{k: v for k, v in info.items() if k != "training"} for info in info_by_seed],
        # The exact text the model saw for the first test item (chat template, system message and all).
        "example_prompt": records_by_seed[0][0].prompt if records_by_seed and records_by_seed[0] else None,
        "scoring_audit": scoring_audit(records_by_seed),
    }


def _metric(interval: stats.Interval, per_item: np.ndarray) -> dict:
    """A headline figure with its CI, and the per-seed means and their spread (`per_item` is [n_seeds, n_items])."""
    per_seed = per_item.mean(axis=1)
    return {
        "value": interval.value,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "ci_method": interval.method,
        "n": per_item.shape[1],
        "per_seed": per_seed.tolist(),
        "seed_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
    }


# ---- the scoring audit -----------------------------------------------------------------------------

AUDIT_EXAMPLES = 3
MAX_REPLY_CHARS = 300  # an example shows the start of a long reply; report.json stays small


def scoring_audit(records_by_seed: Sequence[Sequence[ExampleRecord]], limit: int = AUDIT_EXAMPLES) -> dict:
    """How an arm's replies meet the two scoring views, to tell a format problem from a content one.

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
    return {
        "reply_words": _mean_words(r.completion for r in all_records),
        "answer_words": _mean_words(r.answer for r in all_records),
        "reference_words": _mean_words(r.targets[0] if r.targets else "" for r in all_records),
        "replies": len(all_records),
        "empty_replies": sum(not r.completion.strip() for r in all_records),
        "strict_only": len(strict_only),
        "lenient_only": len(lenient_only),
        "examples": [scored_example(r) for r in interleave(kinds)[:limit]],
    }


def scored_example(record: ExampleRecord) -> dict:
    """One reply as both views scored it, for a reader to judge which view is right."""
    reply = record.completion.strip()
    return {
        "arm": record.arm,
        "seed": record.seed,
        "id": record.example_id,
        "reply": reply if len(reply) <= MAX_REPLY_CHARS else reply[:MAX_REPLY_CHARS] + "...",
        "answer": record.answer,  # what the extraction rule took from the reply: what the strict view scored
        "reference": record.targets[0] if record.targets else "",
        "strict": record.correct,
        "lenient": record.correct_lenient,
    }


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


def mean_training_cost(costs: Sequence[dict | TrainingCost]) -> dict:
    """Mean of each numeric cost field over seeds; per-seed choices (learning rate, epoch) kept as lists."""
    rows = [asdict(c) if isinstance(c, TrainingCost) else c for c in costs]
    merged: dict = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if all(isinstance(v, (int, float)) for v in values):
            merged[key] = float(np.mean(values))
        elif all(v is None for v in values):
            merged[key] = None
        else:
            merged[key] = values
    return merged
