"""Caveats a reader must see next to the numbers, as sentences the terminal and the page both show."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneorprompt.report.build import Report


def shortened_prompts(report: Report) -> list[str]:
    """One sentence per arm whose prompts lost demonstrations to fit the model's context, on the test
    split (it was scored with fewer demos than its name says, on some items) or on dev (its choices
    were made on such prompts)."""
    notes = []
    for arm in report.arms:
        counts = {"test": arm.notes.prompts_shortened_test, "dev": arm.notes.prompts_shortened_dev}
        parts = [f"{_per_seed(per_seed, arm.seeds)} of {report.data.size(split)} {split}"
                 for split, per_seed in counts.items() if any(per_seed)]
        if parts:
            notes.append(f"{arm.name}: {' and '.join(parts)} prompts shortened (demos dropped to fit the context)")
    return notes


def _per_seed(counts: tuple[int, ...], seeds: tuple[int, ...]) -> str:
    if len(set(counts)) == 1:
        return str(counts[0])
    return ", ".join(f"{count} (seed {seed})" for count, seed in zip(counts, seeds))
