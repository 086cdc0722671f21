"""Caveats a reader must see next to the numbers, as sentences the terminal and the page both show.

Read from the report dict alone, so a report.json loaded later gives the same notes.
"""

from __future__ import annotations


def shortened_prompts(report: dict) -> list[str]:
    """One sentence per arm whose prompts lost demonstrations to fit the model's context: such an
    arm was scored with fewer demos than its name says, on some items."""
    notes = []
    for arm in report["arms"]:
        parts = []
        for split in ("test", "dev"):
            counts = [details.get(f"prompts_shortened_{split}", 0) for details in arm["details"]]
            if any(counts):
                parts.append(f"{_per_seed(counts, arm['seeds'])} of {report['data'][f'n_{split}']} {split}")
        if parts:
            notes.append(f"{arm['name']}: {' and '.join(parts)} prompts shortened (demos dropped to fit the context)")
    return notes


def _per_seed(counts: list[int], seeds: list[int]) -> str:
    if len(set(counts)) == 1:
        return str(counts[0])
    return ", ".join(f"{count} (seed {seed})" for count, seed in zip(counts, seeds))
