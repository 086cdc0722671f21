"""The `prompt_search` arm's search, top to bottom: the prompt engineer's hour, automated and given the
same budget as fine-tuning.

    split dev      -> the search part and a held-out part the search never sees (seeded)
    bootstrap      -> the model's own right replies to training questions, as demos in its own style
    the space      -> every candidate prompt: instruction x placement x format line x demos
    race           -> successive halving on growing prefixes of the search part: as many first looks
                      as the budget affords with the rest of the schedule reserved; after them the
                      proposer rewrites the leaders' instructions from their wrong replies
    rounds         -> while the budget affords first looks at fresh candidates, another round of
                      halving, the best so far carried into its later rungs
    pick           -> the finalists scored on the held-out part; the best there wins

Every look at a candidate is a dev evaluation through the DevJudge (the run's store), so a re-run, or a
run resumed after kill -9, reads each generation back and makes the same choices: every choice is a
function of the seed and of the stored answers. The spend is counted in model FLOPs from the token
counts of the generations the search asked for (2 * params * tokens, `stats.inference_flops`), each
distinct prompt once, whether this run generated it or read it back: the search's cost does not depend
on what an earlier run left in the store. Every look is priced before it is made (its prompts as built,
replies as long as the model's replies so far) and made only if that fits what is left, with the
held-out pick reserved: a search overspends only by how much longer its last replies ran than those
before them.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from tuneorprompt import stats
from tuneorprompt.backends.base import Backend
from tuneorprompt.config import PromptSearchArm
from tuneorprompt.evaluate import accuracy
from tuneorprompt.keys import content_key
from tuneorprompt.metrics import contains_match
from tuneorprompt.prompts import DemoSource, PlacedInstruction, PromptRecipe
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings, TrainingCost
from tuneorprompt.retrieval import NearestDemos, RandomDemos

if TYPE_CHECKING:  # arms imports this module inside PromptSearch.prepare
    from tuneorprompt.arms import Base, DevJudge, TaskData


# ---- a candidate: one prompt, hashed by its content -------------------------------------------------


@dataclass(frozen=True)
class Demos:
    k: int
    selection: Literal["random", "nearest"]
    draw: int  # which seeded fixed set (random only; 0 is the few_shot arm's draw for the same seed)
    order: Literal["forward", "reversed"]
    source: Literal["given", "bootstrapped"]

    def describe(self) -> str:
        chosen = f"random set {self.draw}" if self.selection == "random" else "nearest"
        return f"{self.k} {self.source} demos ({chosen}{', reversed' if self.order == 'reversed' else ''})"


@dataclass(frozen=True)
class Candidate:
    instruction: str | None  # None: no instruction
    placement: Literal["prompt", "system"]
    format_line: str | None  # an answer-format constraint line after the instruction
    demos: Demos | None  # None: no demos

    @cached_property
    def id(self) -> str:
        return content_key(self)[:12]

    @property
    def placed(self) -> PlacedInstruction | None:
        text = "\n".join(t for t in (self.instruction, self.format_line) if t)
        return PlacedInstruction(text, self.placement) if text else None

    def describe(self) -> str:
        parts = [f"instruction {self.instruction!r}" + (" [system]" if self.placement == "system" else "")
                 if self.instruction else "no instruction"]
        parts += [f"format line {self.format_line!r}"] if self.format_line else []
        parts += [self.demos.describe()] if self.demos else []
        return ", ".join(parts)


@dataclass(frozen=True)
class Reversed:
    """A demo source's demos in reverse order (the nearest first, instead of next to the query)."""

    inner: DemoSource

    @property
    def k(self) -> int:
        return self.inner.k

    def __call__(self, example: Example) -> list[Example]:
        return self.inner(example)[::-1]


class Space:
    """Turns candidates into prompt recipes: the demo pools (given, bootstrapped) and the seed."""

    def __init__(self, task: TaskData, pools: dict[str, tuple[Example, ...]], seed: int):
        self.task, self.pools, self.seed = task, pools, seed
        self._nearest: dict[tuple[str, int], NearestDemos] = {}  # each embeds its pool once

    def draw_seed(self, draw: int) -> int:
        # Draw 0 is the seed itself, so the space holds the few_shot arm's demos for this seed.
        return self.seed if draw == 0 else int(content_key("prompt_search draw", self.seed, draw)[:8], 16)

    def recipe(self, candidate: Candidate) -> PromptRecipe:
        demos: DemoSource | None = None
        if candidate.demos is not None:
            d = candidate.demos
            pool = self.pools[d.source]
            if d.selection == "random":
                demos = RandomDemos(pool, d.k, self.draw_seed(d.draw))
            else:
                if (d.source, d.k) not in self._nearest:
                    self._nearest[d.source, d.k] = NearestDemos(pool, d.k, self.task.embed)
                demos = self._nearest[d.source, d.k]
            demos = Reversed(demos) if d.order == "reversed" else demos
        return PromptRecipe(self.task.format, instruction=candidate.placed, demos=demos)


def candidates(spec: PromptSearchArm, task: TaskData, pools: dict[str, tuple[Example, ...]], seed: int) -> list[Candidate]:
    """The whole space, anchors first, then the rest in a seeded order. The anchors are what the fixed
    arms try (the plain prompt, each instruction alone, k random given demos) and one candidate for every
    other value of each dimension (the format line alone; each demo source and selection at one k), so
    the search's first looks cover the space, not only instructions: a real model's first rung sees
    demos in its own answer style. Demo settings that cannot be built (k above the pool) are left out."""
    placements = ("prompt", "system") if task.format.chat else ("prompt",)
    instructions = [None, *task.format.instruction_texts()]
    formats = [None, *dict.fromkeys(spec.format_lines)]
    demo_options: list[Demos | None] = [None] if 0 in spec.k else []
    for k in (k for k in spec.k if k > 0):
        for source in spec.sources:
            if k > len(pools.get(source, ())):
                continue
            for selection in spec.selections:
                for draw in range(spec.draws if selection == "random" else 1):
                    demo_options += [Demos(k, selection, draw, order, source) for order in spec.orders]
    space = [
        Candidate(instruction, placement, format_line, demos)
        for instruction in instructions
        for placement in (placements if instruction else ("prompt",))
        for format_line in formats
        for demos in demo_options
    ]
    fixed_arms = [c for c in space if c.format_line is None and (
        c.demos is None or (c.instruction is None and c.demos == Demos(c.demos.k, "random", 0, "forward", "given")))]
    # One look per demo source and selection, at the smallest k of at least 2 that the pool holds (one
    # demo says little about a style; more cost more per look), and the format line on its own.
    coverage = [Candidate(None, "prompt", line, None) for line in formats[1:]]
    for source in spec.sources:
        ks = sorted(k for k in spec.k if 0 < k <= len(pools.get(source, ())))
        if ks:
            k = next((k for k in ks if k >= 2), ks[-1])
            coverage += [Candidate(None, "prompt", None, Demos(k, selection, 0, "forward", source))
                         for selection in spec.selections]
    anchors = list(dict.fromkeys(fixed_arms + [c for c in coverage if c in space]))
    rest = [c for c in space if c not in anchors]
    order = np.random.default_rng(seed).permutation(len(rest))
    return anchors + [rest[i] for i in order]


# ---- the spend ------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """FLOPs and calls the search has spent: each distinct prompt a model answered, counted once."""

    budget: float
    flops: float = 0.0
    calls: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)  # (model fingerprint, rendered prompt)
    replies: list[int] = field(default_factory=list)  # tokens of each task-model reply charged

    def charge(self, fingerprint: str, params: float, prompt: str, prompt_tokens: float, generated_tokens: float,
               task_model: bool = True) -> None:
        if (fingerprint, prompt) not in self.seen:
            self.seen.add((fingerprint, prompt))
            self.flops += stats.inference_flops(params, prompt_tokens, generated_tokens)
            self.calls += 1
            self.replies += [int(generated_tokens)] if task_model else []

    def affords(self, flops: float) -> bool:
        return self.flops + flops <= self.budget


# ---- the search -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposer:
    """The model that writes new instructions (the task model unless `proposer:` names another)."""

    backend: Backend
    params: float


@dataclass(frozen=True)
class SearchResult:
    candidate: Candidate
    recipe: PromptRecipe
    info: dict  # JSON-plain: budget, spend, trajectory, proposals, top 5, the winner's prompt, dev optimism


def search(
    spec: PromptSearchArm, budget: float, task: TaskData, dev: DevJudge, base: Base, seed: int,
    proposer: Proposer | None = None,
) -> SearchResult:
    """The search, as the module docstring lays it out. `budget`: model FLOPs (resolved from
    `spec.budget` at plan time); `proposer`: None for the task model."""
    started = time.perf_counter()
    params = base.model.num_parameters
    if params is None:
        raise ValueError("prompt_search counts its budget in model FLOPs and the model's size is unknown; "
                         "set model.num_parameters")
    proposer = proposer or Proposer(base.backend, params)
    ledger = Ledger(budget)
    trajectory: list[dict] = []

    # ---- split dev: the search part and the held-out part ------------------------------------------------
    order = np.random.default_rng(seed).permutation(len(task.dev))
    held = max(1, round(spec.holdout * len(task.dev)))
    if len(task.dev) - held < 1:
        raise ValueError(f"prompt_search: dev has {len(task.dev)} items; holding out {spec.holdout:g} of them "
                         "leaves none to search on")
    search_items = [task.dev[i] for i in order[held:]]
    holdout_items = [task.dev[i] for i in order[:held]]

    def look(candidate: Candidate, items: Sequence[Example], recipe: PromptRecipe) -> list[ExampleRecord]:
        """`candidate`'s dev records on `items`, through the run's store, charged to the ledger."""
        from tuneorprompt.arms import System

        records = dev.records(System(f"prompt_search-{candidate.id}", seed, base.backend, recipe), items)
        for r in records:
            ledger.charge(base.backend.fingerprint, params, r.prompt, r.prompt_tokens, r.generated_tokens)
        return records

    # Before the first reply: the references' length (+1 for the stop), as the plan's estimates take it.
    reference_tokens = float(np.mean([base.backend.count_tokens(e.target) + 1 for e in task.dev]))

    def expected(recipe: PromptRecipe, items: Sequence[Example]) -> float:
        """FLOPs of answering `items`: each prompt as built, replies as long as the model's so far."""
        reply = float(np.mean(ledger.replies)) if ledger.replies else reference_tokens
        return 2.0 * params * sum(base.backend.count_tokens(recipe.build(e)) + reply for e in items)

    # ---- bootstrap: the model's own right replies to training questions --------------------------------
    pools: dict[str, tuple[Example, ...]] = {"given": task.train}
    bootstrap: dict = {"asked": 0, "kept": 0}
    if "bootstrapped" in spec.sources:
        asked = [task.train[i] for i in np.random.default_rng([seed, 1]).permutation(len(task.train))]
        asked = asked[: spec.bootstrap_examples]
        plain = PromptRecipe(task.format)
        # At most a quarter of the budget: a search that spent everything on demos would try none of them.
        while asked and expected(plain, asked) > budget / 4:
            asked = asked[: len(asked) // 2]
        records = look(Candidate(None, "prompt", None, None), asked, plain) if asked else []
        # The reply as the model gave it, not the reference: the demo keeps the model's answer style.
        pools["bootstrapped"] = tuple(replace(e, targets=(r.completion.strip(),))
                                      for e, r in zip(asked, records) if r.correct >= 0.5 and r.completion.strip())
        bootstrap = {"asked": len(asked), "kept": len(pools["bootstrapped"]), "flops": ledger.flops}

    # ---- the space, and what the budget affords ------------------------------------------------------
    space = Space(task, pools, seed)
    pool = candidates(spec, task, pools, seed)
    space_size = len(pool)
    pool = fitting(pool, space, base.backend, search_items[0], dev.settings)
    rungs = rung_sizes(min(spec.min_items, len(search_items)), spec.eta, len(search_items))
    probe = search_items[0]

    def per_item(candidate: Candidate) -> float:
        return expected(space.recipe(candidate), [probe])

    meta_flops = 2.0 * proposer.params * (
        proposer.backend.count_tokens(reflection_prompt(None, [(e, e.target) for e in search_items[: spec.reflection_examples]]))
        + spec.proposer_max_new_tokens
    )
    costs: list[float] = []  # expected FLOPs per item of each candidate given a first look

    def pick_reserve() -> float:
        """The finalists' held-out looks, at the mean first-looked candidate's cost per item."""
        return spec.finalists * len(holdout_items) * sum(costs) / len(costs)

    def after_first_looks(first_looks: int, proposals: int, carried: int) -> float:
        """What a round's schedule needs once `first_looks` candidates had a first look: the proposals and
        their looks, the later rungs and the pick, at the mean first-looked candidate's cost per item. The
        `carried` best so far hold places in the later rungs at no cost."""
        mean = sum(costs) / len(costs)
        later = later_rungs_items(first_looks + proposals, rungs, spec.eta, spec.finalists, carried)
        return proposals * (meta_flops + mean * rungs[0]) + mean * later + pick_reserve()

    # ---- race: successive halving on growing prefixes of the search part ------------------------------
    scores: dict[Candidate, tuple[int, float]] = {}  # candidate -> (rung reached, score there)
    records_at: dict[Candidate, list[ExampleRecord]] = {}
    spent_on: dict[Candidate, float] = {}
    proposals: list[dict] = []
    stopped = None
    rounds: list[dict] = []

    def race(candidate: Candidate, rung: int, round_: int) -> bool:
        """One look at `candidate` on the first rungs[rung] search items, if it leaves the pick its reserve
        (the very first look is always made); False when it does not."""
        recipe = space.recipe(candidate)
        items = search_items[: rungs[rung]]
        if scores and not ledger.affords(expected(recipe, items) + pick_reserve()):
            return False
        before = ledger.flops
        records = look(candidate, items, recipe)
        spent_on[candidate] = spent_on.get(candidate, 0.0) + ledger.flops - before
        scores[candidate] = (rung, accuracy(records))
        records_at[candidate] = records
        trajectory.append({"candidate": candidate.describe(), "id": candidate.id, "round": round_, "rung": rung,
                           "items": len(items),
                           "dev_score": scores[candidate][1], "flops_so_far": ledger.flops, "calls_so_far": ledger.calls})
        return True

    def standing(candidate: Candidate) -> tuple[int, float]:
        return scores[candidate]

    def ranked(group: Sequence[Candidate]) -> list[Candidate]:
        # Higher rung, then higher score; ties keep the earlier candidate (anchors come first).
        return sorted(group, key=lambda c: (-standing(c)[0], -standing(c)[1]))

    fresh = list(pool)  # in the space's order: each round takes the next candidates no round has looked at

    def first_looks(round_: int, proposals: int, carried: int, least: int) -> list[Candidate] | None:
        """A round's first rung: candidates in the space's order for as long as the budget affords each
        one's first look and the rest of the round's schedule after it, priced with the replies measured
        so far (the very first look is always made). None, having looked at nothing, when the next `least`
        candidates do not all fit."""
        nonlocal fresh
        if not fresh:
            return None
        ahead = [per_item(c) for c in fresh[:least]]
        mean = (sum(costs) + sum(ahead)) / (len(costs) + len(ahead))
        if scores and (len(ahead) < least or not ledger.affords(
                sum(ahead) * rungs[0] + mean * later_rungs_items(least + proposals, rungs, spec.eta, spec.finalists,
                                                                 carried)
                + proposals * (meta_flops + mean * rungs[0]) + spec.finalists * len(holdout_items) * mean)):
            return None
        entrants: list[Candidate] = []
        for candidate in fresh:
            costs.append(per_item(candidate))
            if scores and not ledger.affords(costs[-1] * rungs[0] + after_first_looks(len(entrants) + 1, proposals, carried)):
                costs.pop()
                break
            race(candidate, 0, round_)
            entrants.append(candidate)
        fresh = fresh[len(entrants):]
        return entrants

    def halve(looked: list[Candidate], carried: list[Candidate], round_: int) -> str | None:
        """Successive halving from the first rung: each rung keeps the best 1/eta (at least the finalists)
        of the round's survivors and the `carried` best so far, compared on the same items (the carried
        ones' looks span every rung's items, so they are compared on their first ones and never looked at
        again). Why it stopped, when the budget ran out; None when the schedule finished."""
        for rung in range(1, len(rungs)):
            # Carried first: ties keep the incumbent, then the earlier candidate (anchors come first).
            contenders = carried + looked
            keep = max(min(spec.finalists, len(contenders)), math.ceil(len(contenders) / spec.eta))
            on_items = {c: accuracy(records_at[c][: rungs[rung - 1]]) for c in contenders}
            by_score = sorted(contenders, key=lambda c: -on_items[c])
            # Candidates tied at the cut go on together, up to twice the places: on a first rung of a few
            # items many tie, and the space's order says nothing about which of them is better.
            tied = [c for c in by_score[keep:] if on_items[c] == on_items[by_score[keep - 1]]]
            alive = by_score[:keep] + tied[:keep]
            carried, looked = [c for c in alive if c in carried], []
            for candidate in (c for c in alive if c not in carried):
                if not race(candidate, rung, round_):
                    return f"budget spent at round {round_}, rung {rung}"
                looked.append(candidate)
        return None

    # Round 0: the anchors and as many others as the budget affords with the proposals and the whole
    # schedule reserved; the proposals join its first rung.
    looked = first_looks(0, spec.proposals, 0, 1) or []
    if spec.proposals:
        new, proposals = propose(spec, ranked(looked), records_at, proposer, dev, task, ledger, pick_reserve(),
                                 meta_flops)
        for candidate in (c for c in new if c not in scores):
            if not race(candidate, 0, 0):
                stopped = "budget spent at round 0, rung 0"
                break
            looked.append(candidate)
    rounds.append({"round": 0, "first_looks": len(looked), "carried": [], "flops_after": None})
    stopped = stopped or halve(looked, [], 0)
    rounds[-1]["flops_after"] = ledger.flops
    # Further rounds, while the budget affords first looks at a few (eta) fresh candidates and their
    # schedule: a round that finishes under budget would leave unspent what fine-tuning was given. The
    # best so far are carried into each round's later rungs, so a round can only add a better pick.
    while stopped is None:
        carried = [c for c in ranked(list(scores))[: spec.finalists] if standing(c)[0] == len(rungs) - 1]
        looked = first_looks(len(rounds), 0, len(carried), spec.eta)
        if not looked:  # each round looks at one fresh candidate at least, so the rounds end
            stopped = ("space exhausted" if not fresh else
                       f"budget spent: too little left for round {len(rounds)}'s first looks at {spec.eta} new candidates")
            break
        rounds.append({"round": len(rounds), "first_looks": len(looked), "carried": [c.id for c in carried],
                       "flops_after": None})
        stopped = halve(looked, carried, rounds[-1]["round"])
        rounds[-1]["flops_after"] = ledger.flops

    # ---- pick: the finalists on the held-out part ----------------------------------------------------
    finalists, held_out = [], {}
    for candidate in ranked(list(scores))[: spec.finalists]:
        recipe = space.recipe(candidate)
        if finalists and not ledger.affords(expected(recipe, holdout_items)):
            break  # the reserve fell short (prompts longer than planned for): fewer finalists, not overspending
        finalists.append(candidate)
        held_out[candidate] = look(candidate, holdout_items, recipe)
    winner = max(finalists, key=lambda c: (accuracy(held_out[c]), standing(c)[0], standing(c)[1], -finalists.index(c)))
    best_search = standing(finalists[0])[1]

    info = {
        "chosen": winner.describe(),
        "chosen_id": winner.id,
        "instruction": winner.instruction,
        "placement": winner.placement if winner.instruction else None,
        "format_line": winner.format_line,
        "demos": None if winner.demos is None else {
            "k": winner.demos.k, "selection": winner.demos.selection, "draw": winner.demos.draw,
            "order": winner.demos.order, "source": winner.demos.source},
        "winning_prompt": held_out[winner][0].prompt,  # as the model saw it, for one held-out dev item
        "budget_flops": budget,
        "spent_flops": ledger.flops,
        "calls": ledger.calls,
        "stopped": stopped,
        "rounds": rounds,
        "dev_items": {"search": len(search_items), "holdout": len(holdout_items), "holdout_fraction": spec.holdout},
        "rungs": rungs,
        "candidates_in_space": space_size,
        "candidates_looked_at": len(scores),
        "bootstrap": bootstrap,
        "proposals": proposals,
        "finalists": [{"candidate": c.describe(), "id": c.id, "search_score": standing(c)[1],
                       "holdout_score": accuracy(held_out[c])} for c in finalists],
        "best_search_score": best_search,
        "holdout_score": accuracy(held_out[winner]),
        # How much the search's own best score flatters: it was chosen among many on the same items.
        "dev_optimism": best_search - accuracy(held_out[winner]),
        "top": [top_entry(c, standing(c), records_at[c], spent_on[c], params) for c in ranked(list(scores))[:5]],
        "trajectory": trajectory,
    }
    seconds = time.perf_counter() - started
    # The search's cost is the arm's one-time cost, where fine-tuning's training cost goes: the cost
    # order, break-even and the recommendation count it alike.
    info["training"] = TrainingCost(
        wall_seconds=seconds, train_tokens=0, trainable_params=0, total_params=int(params), peak_rss_mb=0.0,
        peak_gpu_mb=None, adapter_mb=0.0, flops=ledger.flops,
        extra={"one_time": "prompt search", "calls": ledger.calls, "budget_flops": budget},
    )
    return SearchResult(winner, space.recipe(winner), info)


def rung_sizes(first: int, eta: int, total: int) -> list[int]:
    """Items per rung: `first`, eta times more each rung, the whole search part last."""
    sizes = [first]
    while sizes[-1] < total:
        sizes.append(min(sizes[-1] * eta, total))
    return sizes


def later_rungs_items(first_look: int, rungs: Sequence[int], eta: int, finalists: int, carried: int = 0) -> float:
    """Candidate-items evaluated after the first rung, when `first_look` candidates start beside `carried`
    ones whose looks already span every rung (they cost nothing more). The new ones are taken to win
    their share of the places: reserving every place for them would leave a later round too little for
    any first looks, and a round the budget cuts short keeps the carried best as they were."""
    alive, items = first_look + carried, 0.0
    for size in rungs[1:]:
        alive = max(min(finalists, alive), math.ceil(alive / eta))
        items += alive * size * first_look / (first_look + carried)
    return items


def fitting(pool: list[Candidate], space: Space, backend: Backend, probe: Example, settings: GenerationSettings) -> list[Candidate]:
    """The candidates whose prompt for `probe` leaves room for the reply in the model's context: the
    evaluator would drop demos from the others, making them copies of smaller candidates."""
    room = backend.context_length - settings.max_new_tokens
    return [c for c in pool if c.demos is None or backend.count_tokens(space.recipe(c).build(probe)) <= room]


def top_entry(candidate: Candidate, standing: tuple[int, float], records: list[ExampleRecord], spent: float,
              params: float) -> dict:
    prompt_tokens = float(np.mean([r.prompt_tokens for r in records]))
    generated = float(np.mean([r.generated_tokens for r in records]))
    return {"candidate": candidate.describe(), "id": candidate.id, "rung": standing[0], "items": len(records),
            "dev_score": standing[1], "search_flops": spent, "prompt_tokens_per_query": prompt_tokens,
            "flops_per_query": stats.inference_flops(params, prompt_tokens, generated)}


# ---- the proposer: new instructions from wrong replies ------------------------------------------------------


def reflection_prompt(instruction: str | None, wrong: Sequence[tuple[Example, str]]) -> str:
    """What the proposer is asked: the current instruction, some questions the model got wrong with it
    (its reply and the reference), and a request for a better instruction on one line."""
    shown = "\n\n".join(f"Question: {e.input}\nModel's reply: {reply.strip() or '(empty)'}\nCorrect answer: {e.target}"
                        for e, reply in wrong)
    return (
        "You write instructions for a language model.\n"
        f"Current instruction: {instruction or '(none)'}\n"
        f"The model answered these questions wrongly with it:\n\n{shown}\n\n"
        "Write one better instruction, on one line, that makes the model answer questions like these correctly. "
        "Do not include any of the answers.\nBetter instruction:"
    )


def fitting_reflection(instruction: str | None, wrong: Sequence[ExampleRecord], task: TaskData, backend: Backend,
                       settings: GenerationSettings) -> str | None:
    """The reflection prompt with as many of the wrong replies as leave room for the proposal in the proposer's
    context (a small model's context can hold fewer than `reflection_examples`); None if not even one fits."""
    by_id = {e.id: e for e in task.dev}
    shown = [(by_id[r.example_id], r.completion) for r in wrong]
    while shown:
        prompt = reflection_prompt(instruction, shown)
        if backend.count_tokens(prompt) + settings.max_new_tokens <= backend.context_length:
            return prompt
        shown.pop()
    return None


def propose(
    spec: PromptSearchArm, leaders: list[Candidate], records_at: dict[Candidate, list[ExampleRecord]],
    proposer: Proposer, dev: DevJudge, task: TaskData, ledger: Ledger, reserve: float, meta_flops: float,
) -> tuple[list[Candidate], list[dict]]:
    """Up to `spec.proposals` new candidates: each of the best candidates with wrong replies (best first),
    its instruction rewritten by the proposer from them. Every proposal is recorded, the rejected ones
    with the reason."""
    settings = GenerationSettings(spec.proposer_max_new_tokens, ("\n",))
    labels = {label.lower() for label in dev.config.metric.labels}
    references = copy_guard(task, dev)
    questions = Questions.of([e.input for e in (*task.train, *task.dev)])
    tried = {*task.format.instruction_texts(), *(c.instruction for c in records_at)}
    new, recorded = [], []
    # Parents: the best candidates that got something wrong (one that answered every item right leaves
    # nothing to reflect on).
    parents = [c for c in leaders if any(r.correct < 0.5 for r in records_at[c])][: spec.proposals]
    for leader in parents:
        wrong = [r for r in records_at[leader] if r.correct < 0.5][: spec.reflection_examples]
        entry: dict = {"parent": leader.id}
        if not ledger.affords(meta_flops + reserve):
            recorded.append(entry | {"accepted": False, "reason": "budget spent"})
            break
        prompt = fitting_reflection(leader.instruction, wrong, task, proposer.backend, settings)
        if prompt is None:
            recorded.append(entry | {"accepted": False, "reason": "the reflection prompt does not fit the proposer's "
                                     f"context of {proposer.backend.context_length} tokens, even with one wrong reply"})
            continue
        completion = dev.cached(proposer.backend).generate([prompt], settings)[0]
        ledger.charge(proposer.backend.fingerprint, proposer.params, proposer.backend.render(prompt),
                      completion.prompt_tokens, completion.generated_tokens, task_model=False)
        text = " ".join(completion.text.split())
        replies = [r.completion.strip() for r in wrong]
        reason = rejection(text, completion.generated_tokens, spec.proposer_max_new_tokens, references, tried,
                           questions, [r for r in replies if r and len(r.split()) <= 4 and r.lower() not in labels])
        recorded.append(entry | {"text": text, "accepted": reason is None} | ({"reason": reason} if reason else {}))
        if reason is None:
            tried.add(text)
            new.append(replace(leader, instruction=text))
    return new, recorded


def copy_guard(task: TaskData, dev: DevJudge) -> list[str]:
    """Reference answers a proposal must not contain: every training, dev and test target, except the
    task's labels, which an instruction may rightly name. A test answer in the instruction would be in
    every test prompt; the test answers only ever reject a proposal, so nothing is chosen by them."""
    labels = {label.lower() for label in dev.config.metric.labels}
    targets = {t for e in (*task.dev, *task.train) for t in e.targets} | set(task.test_answers)
    return sorted(t for t in targets if t.strip() and t.lower() not in labels)


RUN_WORDS = 4  # a proposal sharing this many consecutive words with a question quotes it


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@dataclass(frozen=True)
class Questions:
    """What an instruction must not quote or name: the training and dev questions' runs of RUN_WORDS
    words, and their subjects. An instruction speaks to the model about every question; a proposal that
    restates one question or names what one is about (a small proposer writes "The capital of French
    Guiana is Paris.") is a statement about one item, not an instruction. An item's subject, simply: its
    names and numbers (words capitalised after the question's first word, or holding a digit) that few
    questions share (under 5% of them: a word most questions hold is the task's, like "Capital" in a title)."""

    runs: frozenset[tuple[str, ...]]
    subjects: frozenset[str]

    @classmethod
    def of(cls, questions: Sequence[str]) -> Questions:
        runs = {tuple(w[i:i + RUN_WORDS]) for w in map(words, questions) for i in range(len(w) - RUN_WORDS + 1)}
        holding: dict[str, int] = {}
        for q in questions:
            for w in set(words(q)):
                holding[w] = holding.get(w, 0) + 1
        names = {t.lower() for q in questions for t in re.findall(r"\w+", q)[1:] if t[0].isupper() or any(c.isdigit() for c in t)}
        return cls(frozenset(runs), frozenset(n for n in names if holding.get(n, 0) < 0.05 * len(questions)))


def rejection(text: str, generated: int, cap: int, references: Sequence[str], tried: set,
              questions: Questions = Questions(frozenset(), frozenset()), replies: Sequence[str] = ()) -> str | None:
    """Why a proposal is unusable (None: it is usable): empty, cut at the token cap, copying a reference
    answer (as whole words, normalised), quoting a question or naming an item's subject (`Questions`),
    stating an answer the proposer was shown (a short reply of the model's, right or not: an instruction
    names no answers), or one already tried."""
    if not text:
        return "empty"
    if generated >= cap:
        return f"truncated: reached proposer_max_new_tokens ({cap}) before ending"
    copied = next((t for t in references if contains_match(text, t)), None)
    if copied is not None:
        return f"contains the reference answer {copied!r}"
    w = words(text)
    quoted = next((run for i in range(len(w) - RUN_WORDS + 1) if (run := tuple(w[i:i + RUN_WORDS])) in questions.runs), None)
    if quoted is not None:
        return f"not an instruction: quotes a question ({' '.join(quoted)!r})"
    named = next((x for x in w if x in questions.subjects), None)
    if named is not None:
        return f"not an instruction: names an item's subject ({named!r})"
    stated = next((r for r in replies if contains_match(text, r)), None)
    if stated is not None:
        return f"not an instruction: states an answer ({stated!r}, a reply it was shown)"
    if text in tried:
        return "repeats an instruction already tried"
    return None


def load_proposer(spec: PromptSearchArm) -> Proposer | None:
    """The proposer `spec.proposer` names, loaded on its first generation; None: the task model."""
    if spec.proposer is None:
        return None
    from tuneorprompt.backends import load_backend
    from tuneorprompt.model import resolve_model

    model = resolve_model(spec.proposer)
    if model.num_parameters is None:
        raise ValueError("prompt_search.proposer: its size is unknown, so its calls cannot be counted in FLOPs; "
                         "set its num_parameters")
    return Proposer(load_backend(model), model.num_parameters)
