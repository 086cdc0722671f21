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
    relevance = 100.0 * outcome_matrix(records_by_seed, "relevance")  # reported on a 0-100 scale
    accuracy = stats.accuracy_interval(correct, level=level)
    relevance_ci = stats.mean_interval(relevance, level=level, resamples=resamples)
    all_records = [r for records in records_by_seed for r in records]
    prompt_tokens = float(np.mean([r.prompt_tokens for r in all_records]))
    generated_tokens = float(np.mean([r.generated_tokens for r in all_records]))
    seconds = float(np.mean([r.seconds for r in all_records]))
    training = [info["training"] for info in info_by_seed if info.get("training")]
    return {
        "name": name,
        "kind": kind,
        "seeds": [records[0].seed for records in records_by_seed],
        "accuracy": _metric(accuracy, correct),
        "relevance": _metric(relevance_ci, relevance),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "seconds_per_query": seconds,
        "queries_per_second": 1.0 / seconds if seconds > 0 else None,
        "flops_per_query": (
            stats.inference_flops(num_parameters, prompt_tokens, generated_tokens) if num_parameters else None
        ),
        "training": mean_training_cost(training) if training else None,
        "details": [{k: v for k, v in info.items() if k != "training"} for info in info_by_seed],
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
