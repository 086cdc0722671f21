"""Warnings a reader must see before the numbers: the two scoring views disagree, or a choice made
on dev was a tie. Each is a plain dict `{"code", "message", ...}` in report.json's `warnings`, shown
first by the terminal summary and the page.

Pure functions of the arm summaries (`summary.ArmSummary`) and, for paired tests, the records.

When do the views disagree? A decision is taken on the strict view; it is wrong when the strict view
scores format rather than content. Two signs, either enough:
- an arm whose strict and lenient accuracy differ by more than `decide.VIEW_GAP` (10 points): most
  of its right (or "right") answers depend on the view;
- a pair of arms that the two views order oppositely, where the order in at least one view is
  significant (paired McNemar test on the same items): that view's conclusion is reversed by the
  other. A rank correlation over all arms was considered and not used: with 3-10 arms it swings on
  ties and on flips between arms within noise of each other, and it names no pair to look at.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence

import numpy as np

from tuneorprompt import stats
from tuneorprompt.backends.text import REPLY_CHARS_FLOOR, REPLY_CHARS_PER_TOKEN
from tuneorprompt.decide import VIEW_GAP
from tuneorprompt.records import ExampleRecord
from tuneorprompt.summary import ArmSummary, interleave, outcome_matrix

SHOWN_EXAMPLES = 3


def report_warnings(
    summaries: Sequence[ArmSummary], records: dict[str, list[list[ExampleRecord]]], metric: str
) -> list[dict]:
    """Every warning, the scoring views first (they decide whether any number below can be trusted)."""
    disagreement = scoring_disagreement(summaries, records, metric)
    return ([disagreement] if disagreement else []) + replies_cut(summaries) + dev_ties(summaries) + \
        chains_trained_plain(summaries)


def replies_cut(summaries: Sequence[ArmSummary]) -> list[dict]:
    """A `replies_cut` warning when replies were longer than a model can write in max_new_tokens
    tokens (`backends.text.reply_cap`): a server or model out of protocol, whose scores are suspect."""
    cut = [f"{s.name} {s.scoring_audit.replies_cut} of {s.scoring_audit.replies}"
           for s in summaries if s.scoring_audit.replies_cut]
    if not cut:
        return []
    return [{"code": "replies_cut", "message": (
        f"Replies longer than generation.max_new_tokens allows ({REPLY_CHARS_PER_TOKEN} characters a token, plus "
        f"{REPLY_CHARS_FLOOR:,}) were cut to that size before they were stored and scored: {'; '.join(cut)}. "
        "The model or server sent far more than it was asked for; check what it serves before trusting these "
        "arms' scores.")}]


def chains_trained_plain(summaries: Sequence[ArmSummary]) -> list[dict]:
    """A `chain_trained_plain` warning per chain (p -> w) whose search, on some seed, picked neither an
    instruction nor a format line: the chain leaves the searched demos out, so that seed trained on the
    plain prompt, as the plain fine-tuning arm does, and paid for the search on top."""
    warnings = []
    for summary in summaries:
        plain = [seed for seed, info in enumerate(summary.details) if "trained_with" in info
                 and not info["trained_with"]["instruction"] and not info["trained_with"]["format_line"]]
        if plain:
            warnings.append({"code": "chain_trained_plain", "arm": summary.name, "seeds": plain, "message": (
                f"{summary.name}: on {len(plain)} of its {len(summary.details)} seeds the search picked no instruction "
                "and no format line, only demos, which a chain leaves out of training; there it trained on the plain "
                "prompt, as the fine-tuning arm without a search does, and its one-time cost still counts the search.")})
    return warnings


# ---- the two scoring views ---------------------------------------------------------------------------


def scoring_disagreement(
    summaries: Sequence[ArmSummary], records: dict[str, list[list[ExampleRecord]]], metric: str
) -> dict | None:
    """A `scoring_disagreement` warning naming the arms concerned, with example replies; None when
    the views agree (module docstring)."""
    gaps = sorted(
        (s for s in summaries if _beyond_gap(_lenient(s) - _strict(s))),
        key=lambda s: -abs(_strict(s) - _lenient(s)),
    )
    flips = reversed_pairs(summaries, records)
    if not gaps and not flips:
        return None
    concerned = list(dict.fromkeys([s.name for s in gaps] + [name for flip in flips for name in flip["arms"]]))
    findings = [f"{s.name} {_strict(s):.1%} strict against {_lenient(s):.1%} lenient" for s in gaps]
    findings += [flip["message"] for flip in flips]
    message = (
        f"The strict view (metric.accuracy: {metric}, on the extracted answer) and the lenient view (a reference "
        f"answer anywhere in the reply) disagree: {'; '.join(findings)}. The recommendation uses the strict view, "
        "so it may reward answer format rather than content. Check the replies below: if the lenient view is "
        "right, use an extraction rule or matcher that accepts them before deciding."
    )
    by_name = {s.name: s for s in summaries}
    examples = [[e.to_dict() for e in by_name[name].scoring_audit.examples] for name in concerned]
    return {
        "code": "scoring_disagreement",
        "message": message,
        "arms": concerned,
        "examples": interleave(examples)[:SHOWN_EXAMPLES],  # one arm after another: several arms show
    }


def reversed_pairs(scored: Sequence[ArmSummary], records: dict[str, list[list[ExampleRecord]]]) -> list[dict]:
    """Pairs of arms the two views order oppositely, where at least one view's order is significant."""
    flips = []
    for a, b in combinations(scored, 2):
        if (_strict(a) - _strict(b)) * (_lenient(a) - _lenient(b)) >= 0:
            continue  # tests only for opposite point differences: nothing to pay when the views agree
        tests = views_reversed(*(outcome_matrix(records[s.name], field)
                                 for s in (a, b) for field in ("correct", "correct_lenient")))
        if tests is not None:
            strict, lenient = tests
            flips.append({
                "arms": [a.name, b.name],
                "message": (
                    f"{a.name} minus {b.name} is {_points(strict.difference)} strict (p = {strict.p_value:.3g}) "
                    f"but {_points(lenient.difference)} lenient (p = {lenient.p_value:.3g})"
                ),
            })
    return flips


def views_reversed(
    strict_a: np.ndarray, lenient_a: np.ndarray, strict_b: np.ndarray, lenient_b: np.ndarray
) -> tuple[stats.PairedTest, stats.PairedTest] | None:
    """The paired tests of a against b in the strict and the lenient view, when the views order the
    two arms oppositely and at least one of them significantly; else None. Outcomes `[n_seeds, n_items]`."""
    if (strict_a.mean() - strict_b.mean()) * (lenient_a.mean() - lenient_b.mean()) >= 0:
        return None
    strict = stats.paired_accuracy_test(strict_a, strict_b)
    lenient = stats.paired_accuracy_test(lenient_a, lenient_b)
    return (strict, lenient) if strict.significant or lenient.significant else None


def _beyond_gap(difference: float) -> bool:
    # 51% - 41% is 0.10000000000000003 in floating point: exactly 10 points is not more than 10.
    return abs(difference) > VIEW_GAP + 1e-9


def _strict(summary: ArmSummary) -> float:
    return summary.accuracy.value


def _lenient(summary: ArmSummary) -> float:
    return summary.accuracy_lenient.value


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f} points"


# ---- ties in dev selection ----------------------------------------------------------------------------


def dev_ties(summaries: Sequence[ArmSummary]) -> list[dict]:
    """A `dev_tie` warning per arm whose dev choice (instruction; learning rate and epoch) was a tie
    at the top. Such a choice was made by the tie-break rule, not by the data, and when every
    candidate scored 0 the dev scoring itself may be at fault (see the scoring views)."""
    warnings = []
    for summary in summaries:
        ties = _instruction_ties(summary) + _finetune_ties(summary)
        if ties:
            warnings.append({"code": "dev_tie", "arm": summary.name, "message": _tie_message(summary.name, ties),
                             "tied": ties})
    return warnings


def tied_at_top(scores: dict[str, float]) -> list[str]:
    """The candidates sharing the best score, when there are at least two of them; else []."""
    if not scores:
        return []
    best = max(scores.values())
    # Dev accuracies are ratios of small counts; equal ones can differ in the last bit after averaging.
    tied = [name for name, score in scores.items() if math.isclose(score, best, rel_tol=0, abs_tol=1e-9)]
    return tied if len(tied) > 1 else []


def _instruction_ties(summary: ArmSummary) -> list[dict]:
    ties = []
    for seed, details in zip(summary.seeds, summary.details):
        scores = details.get("dev_accuracy_by_instruction") or {}
        tied = tied_at_top(scores)
        if tied:
            ties.append({"seed": seed, "what": "instruction", "candidates": tied, "dev_accuracy": scores[tied[0]],
                         "of": len(scores), "rule": "the earlier candidate"})
    return ties


def _finetune_ties(summary: ArmSummary) -> list[dict]:
    extras = summary.training.extra if summary.training else []  # one dict per seed
    ties = []
    for seed, extra in zip(summary.seeds, extras):
        scores = {
            f"learning rate {rate} epoch {epoch}": score
            for rate, per_epoch in (extra or {}).get("dev_scores", {}).items()
            for epoch, score in enumerate(per_epoch, start=1)
        }
        tied = tied_at_top(scores)
        if tied:
            ties.append({"seed": seed, "what": "learning rate and epoch", "candidates": tied,
                         "dev_accuracy": scores[tied[0]], "of": len(scores),
                         "rule": "the earliest epoch, then the first learning rate"})
    return ties


def _tie_message(arm: str, ties: list[dict]) -> str:
    parts = []
    for tie in ties:
        shown = ", ".join(_short(c) for c in tie["candidates"])
        parts.append(
            f"seed {tie['seed']}: {len(tie['candidates'])} of {tie['of']} candidates for the {tie['what']} share the "
            f"best dev accuracy {tie['dev_accuracy']:.1%} ({shown}); the tie went to {tie['rule']}"
        )
    message = f"{arm}: the dev split did not decide its choice ({'; '.join(parts)})."
    if all(tie["dev_accuracy"] == 0 for tie in ties):
        message += " Every candidate scored 0 on dev: the strict matcher may be rejecting every reply."
    return message


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
