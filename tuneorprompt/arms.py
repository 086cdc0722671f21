"""The arms: each adapts the base model to the task using only the training pool and the dev split,
and returns a `System` that the one evaluator scores on the test split.

Like an optimizer's `compile(student, trainset)`, prompt arms and weight arms share one signature,
`prepare(task, dev, base, seed) -> System`: frozen inputs in (`TaskData` holds train and dev but not
test, so no arm can choose anything on the test split), a system out. Every choice an arm makes is
scored by the `DevJudge`, on dev.

An arm kind is two things: its settings class (`config.ArmSpec`) and its arm class here, which names
that settings class (`spec_class`), declares its `family` (what the decision compares: prompt,
retrieval or finetune) and its `method_version` (bumped when its procedure changes), and is registered
with `@arm_kind`. Nothing else lists arm kinds.

An arm's test result is stored under a content key (`keys.arm_key`): the protocol key of the run
(model, data, prompt, decoding and scoring settings) plus the arm's own spec and seed. A re-run reads
it back only when nothing that determined it has changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Sequence

import jinja2
import numpy as np

from tuneorprompt import keys, stats
from tuneorprompt.backends.base import Backend
from tuneorprompt.backends.cached import CacheCounts, CachedBackend
from tuneorprompt.config import (
    ArmSpec,
    BaselineArm,
    ContextArm,
    ExperimentConfig,
    FewShotArm,
    FewShotKnnArm,
    FineTuneArm,
    InstructionArm,
    PromptSearchArm,
)
from tuneorprompt.decide import CostEstimate
from tuneorprompt.evaluate import PROMPTS_SHORTENED, Progress, Scorer, accuracy, evaluate, fit_prompts
from tuneorprompt.keys import jsonable
from tuneorprompt.machine import peak_rss_mb, reset_peak_rss
from tuneorprompt.metrics import user_metric_code
from tuneorprompt.model import ResolvedModel
from tuneorprompt.prompts import PlacedInstruction, PromptFormat, PromptRecipe, compile_template
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings, TrainingCost
from tuneorprompt.retrieval import Embed, NearestDemos, PassageRetriever, RandomDemos
from tuneorprompt.store import Store

Family = Literal["prompt", "retrieval", "finetune"]


# ---- what an arm is given ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """What an arm may adapt with: the training pool, the dev split, the task's prompt format, the
    reference corpus. Never the test split: of it, only its reference answers, which a prompt must not
    contain, for guards that reject a candidate (nothing is chosen by them)."""

    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    format: PromptFormat
    embed: Embed  # text -> vector, for retrieved demos and passages
    corpus: tuple[str, ...] | None = None
    # The test split's reference answers: a proposed instruction holding one would put a test answer into
    # every test prompt (prompt_search.copy_guard rejects it).
    test_answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Base:
    """The base model: the backend that answers for it, what it resolved to, and where weights trained
    from it are written."""

    backend: Backend
    model: ResolvedModel
    models_dir: Path


@dataclass
class System:
    """What an arm returns, ready to answer: a backend (base or fine-tuned weights) and a prompt recipe;
    the one evaluator (`evaluate.evaluate`) scores it."""

    name: str
    seed: int
    backend: Backend
    recipe: PromptRecipe
    info: dict = field(default_factory=dict)  # chosen instruction, k, training cost, ...


@dataclass(frozen=True)
class InstructionChoice:
    instruction: PlacedInstruction
    dev_accuracy: dict[str, float]  # candidate label -> dev accuracy, in the order tried


class DevJudge:
    """Scores systems on dev, the only split an arm may choose on. Each score's records are stored under
    a content key (a re-run reads them back) and every generation goes through the run's store. The
    instruction is chosen once per run and shared by every arm that uses one."""

    def __init__(self, task: TaskData, config: ExperimentConfig, settings: GenerationSettings, scorer: Scorer,
                 store: Store, counts: CacheCounts, protocol_key: str, progress: Progress | None = None):
        self.task = task
        self.config = config
        self.settings = settings
        self.scorer = replace(scorer, relevance=None)  # no choice uses relevance
        self.store = store
        self.counts = counts  # the run's answers read back / generated, over every backend it caches
        self.protocol_key = protocol_key
        self.progress = progress
        self._instruction: dict[str, InstructionChoice] = {}  # by the base's fingerprint
        # The scoring settings, and a user metric function's code (built-in metrics keep their keys).
        code = user_metric_code(config.metric)
        self._metric = config.metric if code is None else [config.metric, code]

    def key(self, recipe: PromptRecipe) -> str:
        """The content key of `recipe`'s dev score (`keys.dev_key`), without the model."""
        prompts = [recipe.build(e) for e in self.task.dev]
        return keys.dev_key(prompts, [e.targets for e in self.task.dev], self.config.generation, self._metric)

    def accuracy(self, system: System, key: str) -> float:
        """Accuracy of `system` on dev; its records are stored under `key`."""
        return accuracy(self.records(system, self.task.dev, key))

    def records(self, system: System, examples: Sequence[Example], key: str | None = None) -> list[ExampleRecord]:
        """`system`'s records on `examples` (dev, or a part of it), stored under `key`; by default the content
        key of their prompts and targets and of the answering model (`keys.dev_score_key`)."""
        if key is None:
            prompts = [system.recipe.build(e) for e in examples]
            dev_key = keys.dev_key(prompts, [e.targets for e in examples], self.config.generation, self._metric)
            key = keys.dev_score_key(dev_key, system.backend.fingerprint)
        cached = replace(system, backend=self.cached(system.backend))
        records = evaluate(cached, examples, "dev", self.settings, self.scorer, self.progress)
        self.store.put_records(key, records)
        return records

    def cached(self, backend: Backend) -> CachedBackend:
        """`backend` answering through the run's store, counted with the run's other answers."""
        return CachedBackend(backend, self.store, self.counts)

    def instruction(self, base: Backend) -> InstructionChoice:
        """The candidate instruction (and, with a chat template, its placement) with the best dev
        accuracy (ties: the earlier candidate)."""
        if base.fingerprint not in self._instruction:
            key = keys.instruction_choice_key(self.protocol_key)
            candidates = self.task.format.instruction_candidates()
            scores = {
                candidate.label: self.accuracy(
                    System(f"instruction-candidate-{i}", 0, base, PromptRecipe(self.task.format, instruction=candidate)),
                    key,
                )
                for i, candidate in enumerate(candidates)
            }
            best = max(scores.values())
            chosen = next(c for c in candidates if scores[c.label] == best)
            self._instruction[base.fingerprint] = InstructionChoice(chosen, scores)
        return self._instruction[base.fingerprint]


# ---- the arm protocol and its registry -------------------------------------------------------------------


class Arm(Protocol):
    family: ClassVar[Family]
    # Part of the arm's result key: bumped when the arm's procedure would choose differently from the
    # same settings (a changed search), so that results of the old procedure are not read back.
    method_version: ClassVar[int]
    spec_class: ClassVar[type[ArmSpec]]
    name: str
    spec: ArmSpec  # the arm's settings, part of its result's key
    stochastic: bool  # repeated for every configured seed
    uses_instruction: bool  # queried with the instruction chosen on dev
    retrieves_by_embedding: bool  # looks inputs up by embedding (their vectors are computed once, up front)

    @classmethod
    def expand(cls, spec: ArmSpec) -> list["Arm"]:
        """One arm per report row: a few-shot spec with k: [1, 4] is few_shot@1 and few_shot@4."""
        ...

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        """How the arm's queries are prompted, given the instruction (None unless `uses_instruction`)."""
        ...

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System: ...


_ARM_CLASSES: dict[type[ArmSpec], type] = {}


def arm_kind(cls: type) -> type:
    """Registers an arm class for its `spec_class`: configs with that kind expand into it."""
    _ARM_CLASSES[cls.spec_class] = cls
    return cls


def expand_arms(config: ExperimentConfig) -> list[Arm]:
    """One arm object per report row, in the config's order."""
    arms: list[Arm] = []
    for spec in config.arms:
        arms += _ARM_CLASSES[type(spec)].expand(spec)
    names = [a.name for a in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"arms: {', '.join(duplicates)} listed more than once")
    return arms


def _instruction_for(arm: Arm, dev: DevJudge, base: Base) -> PlacedInstruction | None:
    return dev.instruction(base.backend).instruction if arm.uses_instruction else None


# ---- the arms ----------------------------------------------------------------------------------------------


@arm_kind
@dataclass(frozen=True)
class Baseline:
    spec: BaselineArm = field(default_factory=BaselineArm)

    family: ClassVar[Family] = "prompt"
    method_version: ClassVar[int] = 1
    spec_class: ClassVar[type[ArmSpec]] = BaselineArm
    name = "baseline"
    stochastic = False
    uses_instruction = False
    retrieves_by_embedding = False

    @classmethod
    def expand(cls, spec: BaselineArm) -> list[Arm]:
        return [cls(spec)]

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        return PromptRecipe(task.format)

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
        return System(self.name, seed, base.backend, self.recipe(task, seed, None))


@arm_kind
@dataclass(frozen=True)
class Instruction:
    spec: InstructionArm = field(default_factory=InstructionArm)

    family: ClassVar[Family] = "prompt"
    method_version: ClassVar[int] = 1
    spec_class: ClassVar[type[ArmSpec]] = InstructionArm
    name = "instruction"
    stochastic = False
    uses_instruction = True
    retrieves_by_embedding = False

    @classmethod
    def expand(cls, spec: InstructionArm) -> list[Arm]:
        return [cls(spec)]

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        return PromptRecipe(task.format, instruction=instruction)

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
        choice = dev.instruction(base.backend)
        info = {"instruction": choice.instruction.text, "placement": choice.instruction.placement,
                "dev_accuracy_by_instruction": dict(choice.dev_accuracy)}
        return System(self.name, seed, base.backend, self.recipe(task, seed, choice.instruction), info)


@arm_kind
@dataclass(frozen=True)
class FewShot:
    """k demonstrations before the query: a seeded random draw from the training pool, repeated per seed."""

    spec: FewShotArm
    k: int

    family: ClassVar[Family] = "prompt"
    method_version: ClassVar[int] = 1
    spec_class: ClassVar[type[ArmSpec]] = FewShotArm
    stochastic = True
    retrieves_by_embedding = False

    @classmethod
    def expand(cls, spec: FewShotArm) -> list[Arm]:
        return [cls(spec, k) for k in spec.k]

    @property
    def uses_instruction(self) -> bool:
        return self.spec.instruction

    @property
    def name(self) -> str:
        return f"{self.spec.kind}@{self.k}" + ("+instruction" if self.spec.instruction else "")

    def demos(self, task: TaskData, seed: int):
        return RandomDemos(task.train, self.k, seed)

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        return PromptRecipe(task.format, instruction=instruction, demos=self.demos(task, seed))

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
        instruction = _instruction_for(self, dev, base)
        recipe = self.recipe(task, seed, instruction)
        info: dict[str, Any] = {"k": self.k, "instruction": instruction.label if instruction else None}
        if isinstance(recipe.demos, RandomDemos):
            info["demo_ids"] = [d.id for d in recipe.demos.chosen]
        return System(self.name, seed, base.backend, recipe, info)


@arm_kind
@dataclass(frozen=True)
class FewShotKnn(FewShot):
    """The k training examples nearest to the query by embedding (deterministic: one seed)."""

    spec: FewShotKnnArm
    spec_class: ClassVar[type[ArmSpec]] = FewShotKnnArm
    stochastic = False
    retrieves_by_embedding = True

    def demos(self, task: TaskData, seed: int):
        return NearestDemos(list(task.train), self.k, task.embed)


@arm_kind
@dataclass(frozen=True)
class Context:
    """Passages of the reference corpus retrieved per question, before the prompt."""

    spec: ContextArm

    family: ClassVar[Family] = "retrieval"
    method_version: ClassVar[int] = 1
    spec_class: ClassVar[type[ArmSpec]] = ContextArm
    name = "context"
    stochastic = False
    uses_instruction = False

    @classmethod
    def expand(cls, spec: ContextArm) -> list[Arm]:
        return [cls(spec)]

    @property
    def retrieves_by_embedding(self) -> bool:
        return self.spec.retriever == "embedding"

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        if not task.corpus:
            raise ValueError("the context arm needs data.corpus (reference documents) in the config")
        retriever = PassageRetriever(list(task.corpus), self.spec.top_k, self.spec.retriever, task.embed)
        template: jinja2.Template = compile_template(self.spec.template, "context.template")
        return PromptRecipe(task.format, passages=retriever, context_template=template)

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
        info = {"top_k": self.spec.top_k, "retriever": self.spec.retriever}
        return System(self.name, seed, base.backend, self.recipe(task, seed, None), info)


@arm_kind
@dataclass(frozen=True)
class FineTune:
    """LoRA or full fine-tuning on the training pool, learning rate and epoch chosen on dev.

    With `prompt_search` settings, a chain as DSPy's BetterTogether builds one (p -> w): the prompt is
    searched on the base model (`prompt_search.search`, with the settings, budget and seed a plain
    prompt_search arm would have, so its looks are read back from the store when that arm ran), and the
    model is trained and queried with the searched instruction, placement and format line. With
    `search_again`, the prompt is searched once more on the fine-tuned model (p -> w -> p), and the
    model is queried with that search's pick. The searches' FLOPs are part of the arm's one-time cost."""

    spec: FineTuneArm
    name_suffix: str = ""  # learning-curve variants: "@n=32"
    budget_basis: str = ""  # a chain's search budget: what it matched, in words (the spec holds the number)

    family: ClassVar[Family] = "finetune"
    # 2: a chained search keeps ties at a rung's cut; 3: its proposals may not hold a test answer
    method_version: ClassVar[int] = 3
    spec_class: ClassVar[type[ArmSpec]] = FineTuneArm
    stochastic = True

    @classmethod
    def expand(cls, spec: FineTuneArm) -> list[Arm]:
        return [cls(spec)]

    @property
    def name(self) -> str:
        return self.spec.name + self.name_suffix

    @property
    def uses_instruction(self) -> bool:
        return self.spec.instruction

    @property
    def retrieves_by_embedding(self) -> bool:
        return self.spec.prompt_search is not None and "nearest" in self.spec.prompt_search.selections

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        if self.spec.prompt_search is not None:  # before the search: as a prompt_search arm's
            return search_stand_in(task, self.spec.prompt_search)
        demos = RandomDemos(task.train, self.spec.few_shot_k, seed) if self.spec.few_shot_k else None
        return PromptRecipe(task.format, instruction=instruction, demos=demos)

    def training_pool(self, task: TaskData) -> tuple[Example, ...]:
        return task.train[: self.spec.max_train_examples] if self.spec.max_train_examples else task.train

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
        from tuneorprompt.finetune import describe_job, finetune  # heavy imports only when training
        from tuneorprompt.training_data import TrainingExample

        instruction = _instruction_for(self, dev, base)
        query_recipe = self.recipe(task, seed, instruction)
        searched: dict = {}
        if self.spec.prompt_search is not None:
            # p -> w: trained and queried with the searched instruction, placement and format line, and
            # without the searched demos. BetterTogether trains on the program's traces, demos included;
            # here they are dropped, for three reasons: the demos come from the training pool itself, so a
            # training prompt's demos would hold its own answer (the nearest demo of a training question is
            # that question) and teach copying; the weights learn from every training example what a few
            # demos show (the answer style); and a fine-tuned model queried with k demos pays for k more
            # examples on every query, for good, which is what fine-tuning is meant to save. The cost is
            # counted as measured either way: queries are priced from their own prompts. search_again gives
            # the demos their chance back, chosen on the fine-tuned model at that price.
            found = self._search(task, dev, base, seed)
            instruction = found.candidate.placed
            query_recipe = PromptRecipe(task.format, instruction=instruction)
            searched = {"candidate": found.candidate.describe(), "id": found.candidate.id,
                        "demos_dropped": found.candidate.demos is not None}
        train_recipe = PromptRecipe(task.format, instruction=instruction)
        examples = [TrainingExample(e.id, train_recipe.build(e), task.format.answer(e)) for e in self.training_pool(task)]
        dev_key = dev.key(query_recipe)
        # Dev is scored by throwaway Systems while training (and not at all once the training is found
        # finished), so the dev prompts that lose demos to fit the context are counted here, for the report.
        dev_shortened = fit_prompts(query_recipe, task.dev, base.backend, dev.settings)[1]

        def dev_score(backend: Backend) -> float:
            system = System(f"{self.name}-dev", seed, backend, query_recipe)
            return dev.accuracy(system, keys.dev_score_key(dev_key, backend.fingerprint))

        weights = base.model.weights  # not None: plan_run skips fine-tuning arms without local weights
        # The folder is named by the job's content, so a changed model, data, setting or dev scoring
        # trains into a new folder instead of resuming another job's state.
        # The searched recipe is in the training prompts (the data key) and in the dev prompts (dev_key); it
        # is also named in the job, so the folder says which prompt it was trained with.
        job = keys.finetune_job_key(describe_job(weights, self.spec, examples, seed, dev_key, searched or None))
        # Named by the training (a p -> w -> p chain's is its p -> w chain's), so the two share one job folder.
        trained_as = self.spec.model_copy(update={"search_again": False}).name + self.name_suffix
        out_dir = base.models_dir / f"{trained_as}-seed{seed}-{job[:12]}"
        # Training loads its own copy of the base model: the run's copy is freed meanwhile (and loaded
        # again by the next arm that asks it for a generation), so no arm holds two.
        base.backend.release()
        tuned = finetune(weights, self.spec, examples, dev_score, out_dir, seed, dev_key=dev_key, progress=dev.progress,
                         recipe=searched or None)
        info = {"instruction": instruction.label if instruction else None, "train_examples": len(examples),
                "model_dir": str(tuned.model_dir), "training": tuned.cost}
        info |= {PROMPTS_SHORTENED["dev"]: dev_shortened} if dev_shortened else {}
        if self.spec.prompt_search is not None:
            chain = [found]
            if self.spec.search_again:  # p -> w -> p: the fine-tuned model answers and proposes
                again = self._search(task, dev, replace(base, backend=tuned.backend), seed)
                query_recipe = again.recipe
                chain.append(again)
            info |= chain_info(chain, tuned.cost, self.budget_basis)
            # As the fine-tuned model sees it, for the first dev item: p -> w drops the searched demos, so the
            # search's winning prompt is not what test is answered with.
            info["query_prompt"] = tuned.backend.render(query_recipe.build(task.dev[0]))
        return System(self.name, seed, tuned.backend, query_recipe, info)

    def _search(self, task: TaskData, dev: DevJudge, base: Base, seed: int):
        from tuneorprompt.prompt_search import load_proposer, search

        spec = self.spec.prompt_search
        if spec is None or not isinstance(spec.budget, float):
            raise ValueError(f"{self.name}: the search budget is resolved when the run is planned (with_budgets)")
        return search(spec, spec.budget, task, dev, base, seed, load_proposer(spec))


def chain_info(chain: list, training: TrainingCost, budget_basis: str) -> dict:
    """A chained arm's notes: each search's pick and spend (`searches`, in order: on the base model, then on
    the fine-tuned one), what it was trained with, and its one-time cost: the searches plus the training,
    in `training` where every arm's one-time cost is (its `extra` keeps the parts apart)."""
    first = chain[0]
    searches = [{key: found.info[key] for key in SEARCH_NOTES} for found in chain]
    search_flops = sum(found.info["training"].flops for found in chain)
    search_seconds = sum(found.info["training"].wall_seconds for found in chain)
    cost = replace(training, flops=training.flops + search_flops, wall_seconds=training.wall_seconds + search_seconds,
                   extra=training.extra | {"search_flops": search_flops, "training_flops": training.flops,
                                           "search_flops_before_training": first.info["training"].flops,
                                           "search_seconds": search_seconds,
                                           "one_time": "prompt search, then training"
                                           + (", then prompt search again" if len(chain) > 1 else "")})
    return {"trained_with": {"instruction": first.info["instruction"], "placement": first.info["placement"],
                             "format_line": first.info["format_line"], "demos_dropped": first.info["demos"]},
            "searches": searches, "budget_basis": budget_basis, "training": cost}


# What a chained arm keeps of each search's notes (a prompt_search arm keeps them all, trajectory included).
SEARCH_NOTES = ("chosen", "chosen_id", "instruction", "placement", "format_line", "demos", "winning_prompt",
                "budget_flops", "spent_flops", "calls", "stopped", "dev_items", "best_search_score", "holdout_score",
                "dev_optimism", "top")


@arm_kind
@dataclass(frozen=True)
class PromptSearch:
    """Instruction, placement, demos and format searched on dev within a FLOPs budget (`prompt_search.py`);
    the search's FLOPs are the arm's one-time cost. Its spec's `budget` is a number once the run is
    planned (`with_search_budgets`), so the arm's result is keyed by the FLOPs it was given."""

    spec: PromptSearchArm = field(default_factory=PromptSearchArm)
    budget_basis: str = ""  # what the budget matched, in words (the spec holds the number)

    family: ClassVar[Family] = "prompt"
    method_version: ClassVar[int] = 3  # 2: ties at a rung's cut go on together; 3: no test answer in a proposal
    spec_class: ClassVar[type[ArmSpec]] = PromptSearchArm
    name = "prompt_search"
    stochastic = True  # the dev split, demo draws and the order candidates are looked at follow the seed
    uses_instruction = False  # it searches its own

    @classmethod
    def expand(cls, spec: PromptSearchArm) -> list[Arm]:
        return [cls(spec)]

    @property
    def retrieves_by_embedding(self) -> bool:
        return "nearest" in self.spec.selections

    def recipe(self, task: TaskData, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        return search_stand_in(task, self.spec)

    def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
        from tuneorprompt.prompt_search import load_proposer, search

        if not isinstance(self.spec.budget, float):
            raise ValueError("prompt_search: the budget is resolved when the run is planned (with_search_budgets)")
        found = search(self.spec, self.spec.budget, task, dev, base, seed, load_proposer(self.spec))
        info = found.info | {"budget_basis": self.budget_basis}
        return System(self.name, seed, base.backend, found.recipe, info)


def search_stand_in(task: TaskData, spec: PromptSearchArm) -> PromptRecipe:
    """Before a search: the longest instruction with the longest format line and no demos, for the plan's
    checks that every prompt fits (demos are dropped to fit, as for any arm) and its cost estimates."""
    texts = [max(task.format.instruction_texts(), key=len, default=""), max(spec.format_lines, key=len, default="")]
    text = "\n".join(t for t in texts if t)
    return PromptRecipe(task.format, instruction=PlacedInstruction(text) if text else None)


# ---- running an arm ----------------------------------------------------------------------------------------


def seeds_of(arm: Arm, seeds: list[int]) -> list[int]:
    """The seeds an arm runs under: all of them when it draws at random, else the first."""
    return list(seeds) if arm.stochastic else list(seeds[:1])


@dataclass(frozen=True)
class TestSplit:
    """The held-out split and its scorer (relevance included): read by `run_arm` only."""

    examples: list[Example]
    scorer: Scorer


@dataclass(frozen=True)
class ArmRun:
    """One arm under one seed: its test records and its notes (choices, training cost, peak memory)."""

    records: list[ExampleRecord]
    info: dict


def run_arm(arm: Arm, seed: int, task: TaskData, dev: DevJudge, base: Base, test: TestSplit) -> ArmRun:
    """Test records of one arm and seed: read back when the store has them under this arm's content
    key, else prepare and evaluate.

    The test split enters here only, after the arm has finished all of its choices on train/dev."""
    store = dev.store
    key = keys.arm_key(dev.protocol_key, arm.name, arm.spec.model_dump(mode="json"), seed, arm.method_version)
    info = store.finished_arm(key)
    if info is not None:
        # What a search's budget matched is said by this run's plan, not the run that stored the result: the
        # same budget, hence the same key, can be matched by other arms.
        basis = getattr(arm, "budget_basis", "")
        return ArmRun(store.records(key, "test"), info | ({"budget_basis": basis} if basis else {}))
    reset_peak_rss()
    system = arm.prepare(task, dev, base, seed)
    system = replace(system, backend=dev.cached(system.backend))
    records = evaluate(system, test.examples, "test", dev.settings, test.scorer, dev.progress)
    store.put_records(key, records)
    info = jsonable(system.info | {"peak_rss_mb": round(peak_rss_mb())})
    store.finish_arm(key, arm.name, seed, info)
    return ArmRun(records, info)


# ---- cost estimates, before anything runs ------------------------------------------------------------


def estimate_cost(
    arm: Arm, recipe: PromptRecipe, instruction: PlacedInstruction | None, task: TaskData, base: Base,
    settings: GenerationSettings,
) -> CostEstimate:
    """What the arm will cost, from token counts on dev and the model's size, without generating or
    training: the order the `ladder` strategy runs arms in and the recommendation ranks them by.
    `recipe` is how the arm will prompt, with `instruction` standing in for the one dev will choose.

    Per query: mean dev prompt tokens + mean reference answer tokens + 1 for the stop, and
    2 * params * those tokens in FLOPs when the model's size is known (else None: a served model of
    unknown size is ranked by tokens). The answer length is the same for every arm: what differs
    before running is the prompt. Once: fine-tuning's forward and backward passes over the training
    tokens, every epoch of every learning rate in the grid (LoRA as frozen weights: its adapters are
    a rounding error).
    """
    backend, params = base.backend, base.model.num_parameters
    budget = backend.context_length - settings.max_new_tokens
    prompt_tokens = float(np.mean([min(backend.count_tokens(recipe.build(e)), budget) for e in task.dev]))
    answer_tokens = float(np.mean([_answer_tokens(task, backend, e) + 1 for e in task.dev]))
    per_query = stats.inference_flops(params, prompt_tokens, answer_tokens) if params is not None else None
    one_time = 0.0
    if isinstance(arm, FineTune):
        from tuneorprompt.finetune import DEFAULT_LEARNING_RATES  # heavy imports only with fine-tuning arms

        # Trained with the instruction the recipe holds: the one given, or a chain's stand-in for its search's.
        train_recipe = PromptRecipe(task.format, instruction=recipe.instruction)
        tokens_per_epoch = sum(
            backend.count_tokens(train_recipe.build(e)) + _answer_tokens(task, backend, e) + 1
            for e in arm.training_pool(task)
        )
        grid = arm.spec.learning_rates or DEFAULT_LEARNING_RATES[arm.spec.kind]
        trainable = params if arm.spec.kind == "full" else 0
        one_time = stats.training_flops(params, tokens_per_epoch * arm.spec.epochs * len(grid), trainable)
    return CostEstimate(arm.name, per_query, one_time, prompt_tokens + answer_tokens)


def search_settings(arm: Arm) -> PromptSearchArm | None:
    """The prompt search an arm runs: a prompt_search arm's, or a chained fine-tuning arm's; None for others."""
    if isinstance(arm, PromptSearch):
        return arm.spec
    return arm.spec.prompt_search if isinstance(arm, FineTune) else None


def searches_run(arm: Arm) -> int:
    """How many searches an arm runs, each within its budget: a chain with search_again runs two."""
    return 1 + int(isinstance(arm, FineTune) and arm.spec.search_again) if search_settings(arm) is not None else 0


def with_search_budgets(
    arms: list[Arm], estimates: list[CostEstimate], task: TaskData, base: Base, settings: GenerationSettings, seed: int,
) -> tuple[list[CostEstimate], dict[str, float]]:
    """`estimates` (one per arm, in order) with the searches' budgets counted, and each searching arm's
    budget per search in FLOPs (by arm name). A budget is a number given, or `match_finetune`: the most
    expensive fine-tuning arm's estimated training plus its dev evaluations, one after every epoch of every
    learning rate (`finetune_total`), its searches not included. Without a fine-tuning arm, a `lora` arm
    with default settings stands in. A prompt_search arm's one-time cost is its budget; a chained arm's,
    its training plus its searches' budgets. Every search of a run with the same settings so gets the same
    budget, and a chain's search on the base model is the prompt_search arm's, looks and pick alike."""
    if not any(search_settings(arm) is not None for arm in arms):
        return estimates, {}
    if base.model.num_parameters is None:
        raise ValueError("arms: prompt_search counts its budget in model FLOPs, and the model's size is unknown; "
                         "set model.num_parameters")
    # Matched against fine-tuning as it runs without a search. A chain's own estimate prices its dev queries
    # at the search's stand-in prompt, demos included, and a run that adds a chain must not change the budget
    # of the run's other searches; a run whose only fine-tuning arms are chains matches their training alone.
    tuned = [(arm, e) for arm, e in zip(arms, estimates) if isinstance(arm, FineTune) and arm.spec.prompt_search is None]
    if not tuned:
        tuned = [(stand_in, estimate_cost(stand_in, stand_in.recipe(task, seed, None), None, task, base, settings))
                 for stand_in in budget_stand_ins(arms)]
    match = max(finetune_total(arm, estimate, task) for arm, estimate in tuned)
    budgets = {arm.name: match if spec.budget == "match_finetune" else float(spec.budget)
               for arm in arms if (spec := search_settings(arm)) is not None}
    resolved = []
    for arm, estimate in zip(arms, estimates):
        if isinstance(arm, PromptSearch):
            estimate = replace(estimate, one_time_flops=budgets[arm.name])
        elif searches_run(arm):
            estimate = replace(estimate, one_time_flops=estimate.one_time_flops + searches_run(arm) * budgets[arm.name])
        resolved.append(estimate)
    return resolved, budgets


def budget_stand_ins(arms: list[Arm]) -> list[FineTune]:
    """What `match_finetune` matches in a run without a plain fine-tuning arm: each chain's fine-tuning without
    its search, or, without a chain either, a `lora` arm with default settings."""
    plain = [FineTune(arm.spec.model_copy(update={"prompt_search": None, "search_again": False}))
             for arm in arms if isinstance(arm, FineTune)]
    return plain or [FineTune(FineTuneArm(kind="lora"))]


def finetune_total(arm: FineTune, estimate: CostEstimate, task: TaskData) -> float:
    """A fine-tuning arm's one-time cost as prompt_search matches it: training (the estimate's, before any
    search of a chain is added) plus a dev evaluation after every epoch of every learning rate, each dev
    query at the arm's per-query estimate."""
    from tuneorprompt.finetune import DEFAULT_LEARNING_RATES  # heavy imports only with fine-tuning arms

    grid = arm.spec.learning_rates or DEFAULT_LEARNING_RATES[arm.spec.kind]
    return estimate.one_time_flops + len(grid) * arm.spec.epochs * len(task.dev) * (estimate.per_query_flops or 0.0)


def with_budgets(arms: list[Arm], budgets: dict[str, float]) -> list[Arm]:
    """Each searching arm with its budget as the number of FLOPs `with_search_budgets` gave it, so that its
    result's content key holds what it was given; the other arms as they are."""
    tuned = [arm.name for arm in arms if isinstance(arm, FineTune) and arm.spec.prompt_search is None]
    chains = [arm.name for arm in arms if isinstance(arm, FineTune) and arm.spec.prompt_search is not None]
    matched = (", ".join(tuned) if tuned else f"the fine-tuning of {', '.join(chains)} without its search" if chains
               else "a default lora arm (the run has no fine-tuning arm)")
    matched = f"the most expensive of {matched}" if len(tuned) > 1 or len(chains) > 1 and not tuned else matched
    resolved: list[Arm] = []
    for arm in arms:
        spec = search_settings(arm)
        if spec is not None:
            basis = (f"match_finetune: {matched}, training plus dev evaluations"
                     if spec.budget == "match_finetune" else "given")
            spec = spec.model_copy(update={"budget": float(budgets[arm.name])})
            if isinstance(arm, PromptSearch):
                arm = replace(arm, spec=spec, budget_basis=basis)
            else:
                arm = replace(arm, spec=arm.spec.model_copy(update={"prompt_search": spec}), budget_basis=basis)
        resolved.append(arm)
    return resolved


def _answer_tokens(task: TaskData, backend: Backend, example: Example) -> int:
    """Tokens the reference answer adds after the example's question, counted as a difference of two
    prompts so that a chat template's wrapping (the same in both) cancels out."""
    question = task.format.plain(example)
    return max(1, backend.count_tokens(question + task.format.answer(example)) - backend.count_tokens(question))


def longest_instruction(task: TaskData, backend: Backend) -> PlacedInstruction:
    """For cost estimates made before any dev scoring: the candidate whose prompt has the most tokens."""
    example = task.dev[0]
    return max(
        task.format.instruction_candidates(),
        key=lambda candidate: backend.count_tokens(PromptRecipe(task.format, instruction=candidate).build(example)),
    )
