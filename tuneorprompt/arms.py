"""The arms: each adapts the base model to the task using only the training pool and the dev split,
and returns a `System` that the one evaluator scores on the test split.

Like an optimizer's `compile(student, trainset)`, prompt arms and weight arms share one signature:
`prepare(context, seed) -> System`. The context carries train and dev but not test, so no arm can
choose anything on the test split.

An arm's test result is stored under a content key (`arm_key`): the protocol key of the run (model,
data, prompt, decoding and scoring settings) plus the arm's own spec and seed. A re-run reads it back
only when nothing that determined it has changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import jinja2
import numpy as np
from pydantic import BaseModel

from tuneorprompt import stats
from tuneorprompt.backends import local_weights
from tuneorprompt.backends.base import Backend
from tuneorprompt.backends.cached import CachedBackend
from tuneorprompt.config import (
    ContextArm,
    ExperimentConfig,
    FewShotArm,
    FineTuneArm,
)
from tuneorprompt.decide import CostEstimate
from tuneorprompt.evaluate import PROMPTS_SHORTENED, Progress, Scorer, System, accuracy, evaluate, fit_prompts
from tuneorprompt.keys import content_key, jsonable
from tuneorprompt.machine import peak_rss_mb, reset_peak_rss
from tuneorprompt.prompts import PlacedInstruction, PromptFormat, PromptRecipe, compile_template
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings
from tuneorprompt.retrieval import Embed, NearestDemos, PassageRetriever, RandomDemos
from tuneorprompt.store import Store


@dataclass
class ArmContext:
    """Everything an arm may use to adapt: the training pool, the dev split, the base model."""

    config: ExperimentConfig
    train: list[Example]
    dev: list[Example]
    base: Backend
    format: PromptFormat
    settings: GenerationSettings
    scorer: Scorer
    store: Store | None  # None while the run is planned; set when it starts (nothing is stored before)
    run_dir: Path
    embed: Embed
    protocol_key: str  # content key of what every arm's result depends on (see experiment.protocol_record)
    corpus: list[str] | None = None
    progress: Progress | None = None
    _instruction: PlacedInstruction | None = field(default=None, repr=False)
    instruction_scores: dict[str, float] = field(default_factory=dict)  # candidate label -> dev accuracy

    def dev_accuracy(self, system: System, key: str) -> float:
        """Accuracy of `system` on dev; its records are stored under `key`. Relevance is not computed:
        no choice uses it."""
        records = evaluate(system, self.dev, "dev", self.settings, replace(self.scorer, relevance=None), self.progress)
        self.store.put_records(key, records)
        return accuracy(records)

    def dev_key(self, recipe: PromptRecipe) -> str:
        """Content key of a dev score: the exact dev prompts and targets, decoding and scoring settings.
        The model is not in it: the caller scores several models (fine-tuning epochs) under one key."""
        prompts = [recipe.build(e) for e in self.dev]
        targets = [list(e.targets) for e in self.dev]
        return content_key(prompts, targets, self.config.generation, self.config.metric)

    def chosen_instruction(self) -> PlacedInstruction:
        """The candidate instruction (and, with a chat template, its placement) with the best dev
        accuracy (ties: the earlier candidate), chosen once per run and shared by every arm that uses
        an instruction."""
        if self._instruction is None:
            key = content_key(self.protocol_key, "instruction-choice")
            candidates = self.format.instruction_candidates()
            for i, candidate in enumerate(candidates):
                recipe = PromptRecipe(self.format, instruction=candidate)
                self.instruction_scores[candidate.label] = self.dev_accuracy(
                    System(f"instruction-candidate-{i}", 0, self.base, recipe), key
                )
            best = max(self.instruction_scores.values())
            self._instruction = next(c for c in candidates if self.instruction_scores[c.label] == best)
        return self._instruction

    def longest_instruction(self) -> PlacedInstruction:
        """For cost estimates made before any dev scoring: the candidate whose prompt has the most tokens."""
        example = self.dev[0]
        return max(
            self.format.instruction_candidates(),
            key=lambda candidate: self.base.count_tokens(PromptRecipe(self.format, instruction=candidate).build(example)),
        )


class Arm(Protocol):
    name: str
    kind: str
    stochastic: bool  # repeated for every configured seed
    uses_instruction: bool  # queried with the instruction chosen on dev
    spec: BaseModel | None  # the arm's settings, part of its result's key

    def recipe(self, ctx: ArmContext, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        """How the arm's queries are prompted, given the instruction (None unless `uses_instruction`)."""
        ...

    def prepare(self, ctx: ArmContext, seed: int) -> System: ...


def _instruction_for(arm: Arm, ctx: ArmContext) -> PlacedInstruction | None:
    return ctx.chosen_instruction() if arm.uses_instruction else None


@dataclass(frozen=True)
class Baseline:
    name: str = "baseline"
    kind: str = "baseline"
    stochastic: bool = False
    uses_instruction: bool = False
    spec: None = None

    def recipe(self, ctx: ArmContext, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        return PromptRecipe(ctx.format)

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        return System(self.name, seed, ctx.base, self.recipe(ctx, seed, None))


@dataclass(frozen=True)
class Instruction:
    name: str = "instruction"
    kind: str = "instruction"
    stochastic: bool = False
    uses_instruction: bool = True
    spec: None = None

    def recipe(self, ctx: ArmContext, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        return PromptRecipe(ctx.format, instruction=instruction)

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        instruction = ctx.chosen_instruction()
        info = {"instruction": instruction.text, "placement": instruction.placement,
                "dev_accuracy_by_instruction": dict(ctx.instruction_scores)}
        return System(self.name, seed, ctx.base, self.recipe(ctx, seed, instruction), info)


@dataclass(frozen=True)
class FewShot:
    """k demonstrations before the query: a seeded random draw from the training pool (`few_shot`,
    repeated per seed), or the k nearest training examples by embedding (`few_shot_knn`, deterministic)."""

    spec: FewShotArm  # a FewShotKnnArm for retrieved demos
    k: int

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def retrieved(self) -> bool:
        return self.spec.kind == "few_shot_knn"

    @property
    def stochastic(self) -> bool:
        return not self.retrieved

    @property
    def uses_instruction(self) -> bool:
        return self.spec.instruction

    @property
    def name(self) -> str:
        return f"{self.spec.kind}@{self.k}" + ("+instruction" if self.spec.instruction else "")

    def recipe(self, ctx: ArmContext, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        demos = NearestDemos(ctx.train, self.k, ctx.embed) if self.retrieved else RandomDemos(tuple(ctx.train), self.k, seed)
        return PromptRecipe(ctx.format, instruction=instruction, demos=demos)

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        instruction = _instruction_for(self, ctx)
        recipe = self.recipe(ctx, seed, instruction)
        info: dict[str, Any] = {"k": self.k, "instruction": instruction.label if instruction else None}
        if isinstance(recipe.demos, RandomDemos):
            info["demo_ids"] = [d.id for d in recipe.demos.chosen]
        return System(self.name, seed, ctx.base, recipe, info)


@dataclass(frozen=True)
class Context:
    spec: ContextArm

    name = "context"
    kind = "context"
    stochastic = False
    uses_instruction = False

    def recipe(self, ctx: ArmContext, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        if not ctx.corpus:
            raise ValueError("the context arm needs data.corpus (reference documents) in the config")
        retriever = PassageRetriever(ctx.corpus, self.spec.top_k, self.spec.retriever, ctx.embed)
        template: jinja2.Template = compile_template(self.spec.template, "context.template")
        return PromptRecipe(ctx.format, passages=retriever, context_template=template)

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        info = {"top_k": self.spec.top_k, "retriever": self.spec.retriever}
        return System(self.name, seed, ctx.base, self.recipe(ctx, seed, None), info)


@dataclass(frozen=True)
class FineTune:
    """LoRA or full fine-tuning on the training pool, learning rate and epoch chosen on dev."""

    spec: FineTuneArm
    name_suffix: str = ""  # learning-curve variants: "@n=32"

    stochastic = True

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name + self.name_suffix

    @property
    def uses_instruction(self) -> bool:
        return self.spec.instruction

    def recipe(self, ctx: ArmContext, seed: int, instruction: PlacedInstruction | None) -> PromptRecipe:
        demos = RandomDemos(tuple(ctx.train), self.spec.few_shot_k, seed) if self.spec.few_shot_k else None
        return PromptRecipe(ctx.format, instruction=instruction, demos=demos)

    def training_pool(self, ctx: ArmContext) -> list[Example]:
        return ctx.train[: self.spec.max_train_examples] if self.spec.max_train_examples else ctx.train

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        from tuneorprompt.finetune import (  # heavy imports only when training
            TrainingExample,
            describe_job,
            finetune,
        )

        instruction = _instruction_for(self, ctx)
        train_recipe = PromptRecipe(ctx.format, instruction=instruction)
        examples = [TrainingExample(e.id, train_recipe.build(e), ctx.format.answer(e)) for e in self.training_pool(ctx)]
        query_recipe = self.recipe(ctx, seed, instruction)
        dev_key = ctx.dev_key(query_recipe)
        # Dev is scored by throwaway Systems while training (and not at all once the training is found
        # finished), so the dev prompts that lose demos to fit the context are counted here, for the report.
        dev_shortened = fit_prompts(query_recipe, ctx.dev, ctx.base, ctx.settings)[1]

        def dev_score(backend: Backend) -> float:
            system = System(f"{self.name}-dev", seed, CachedBackend(backend, ctx.store), query_recipe)
            return ctx.dev_accuracy(system, content_key(dev_key, backend.fingerprint))

        # The folder is named by the job's content (and the base weights as served), so a changed model,
        # data, setting or dev scoring trains into a new folder instead of resuming another job's state.
        base = local_weights(ctx.config.model)  # not None: plan_run skips fine-tuning arms without local weights
        job = content_key(ctx.base.fingerprint, describe_job(base, self.spec, examples, seed, dev_key))
        out_dir = ctx.run_dir / "models" / f"{self.name}-seed{seed}-{job[:12]}"
        # Training loads its own copy of the base model: the run's copy is freed meanwhile (and loaded
        # again by the next arm that asks it for a generation), so no arm holds two.
        ctx.base.release()
        tuned = finetune(base, self.spec, examples, dev_score, out_dir, seed, dev_key=dev_key)
        info = {"instruction": instruction.label if instruction else None, "train_examples": len(examples),
                "model_dir": str(tuned.model_dir),
                "training": tuned.cost} | ({PROMPTS_SHORTENED["dev"]: dev_shortened} if dev_shortened else {})
        return System(self.name, seed, CachedBackend(tuned.backend, ctx.store), query_recipe, info)


def expand_arms(config: ExperimentConfig) -> list[Arm]:
    """One arm object per report row: a few-shot spec with k: [1, 4] becomes few_shot@1 and few_shot@4."""
    arms: list[Arm] = []
    makers: dict[str, Callable] = {
        "baseline": lambda spec: [Baseline()],
        "instruction": lambda spec: [Instruction()],
        "few_shot": lambda spec: [FewShot(spec, k) for k in spec.k],
        "few_shot_knn": lambda spec: [FewShot(spec, k) for k in spec.k],
        "context": lambda spec: [Context(spec)],
        "lora": lambda spec: [FineTune(spec)],
        "full": lambda spec: [FineTune(spec)],
    }
    for spec in config.arms:
        arms += makers[spec.kind](spec)
    names = [a.name for a in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"arms: {', '.join(duplicates)} listed more than once")
    return arms


def seeds_of(arm: Arm, seeds: list[int]) -> list[int]:
    """The seeds an arm runs under: all of them when it draws at random, else the first."""
    return list(seeds) if arm.stochastic else list(seeds[:1])


def arm_key(arm: Arm, seed: int, protocol_key: str) -> str:
    spec = arm.spec.model_dump(mode="json") if arm.spec is not None else None
    return content_key(protocol_key, arm.name, spec, seed)


def run_arm(arm: Arm, seed: int, ctx: ArmContext, test: list[Example]) -> tuple[list[ExampleRecord], dict]:
    """Test records of one arm and seed: read back when the store has them under this arm's content
    key, else prepare and evaluate.

    The test split enters here only, after the arm has finished all of its choices on train/dev."""
    key = arm_key(arm, seed, ctx.protocol_key)
    info = ctx.store.finished_arm(key)
    if info is not None:
        return ctx.store.records(key, "test"), info
    reset_peak_rss()
    system = arm.prepare(ctx, seed)
    arm_records = evaluate(system, test, "test", ctx.settings, ctx.scorer, ctx.progress)
    ctx.store.put_records(key, arm_records)
    info = jsonable(system.info | {"peak_rss_mb": round(peak_rss_mb())})
    ctx.store.finish_arm(key, arm.name, seed, info)
    return arm_records, info


# ---- cost estimates, before anything runs ------------------------------------------------------------


def estimate_cost(
    arm: Arm, recipe: PromptRecipe, instruction: PlacedInstruction | None, ctx: ArmContext
) -> CostEstimate:
    """What the arm will cost, from token counts on dev and the model's size, without generating or
    training: the order the `ladder` strategy runs arms in and the recommendation ranks them by.
    `recipe` is how the arm will prompt, with `instruction` standing in for the one dev will choose.

    Per query: 2 * params * (mean dev prompt tokens + mean reference answer tokens + 1 for the stop).
    The answer length is the same for every arm: what differs before running is the prompt. Once:
    fine-tuning's forward and backward passes over the training tokens, every epoch of every learning
    rate in the grid (LoRA as frozen weights: its adapters are a rounding error).
    """
    params = ctx.base.num_parameters or 0
    budget = ctx.base.context_length - ctx.settings.max_new_tokens
    prompts = [recipe.build(e) for e in ctx.dev]
    prompt_tokens = np.mean([min(ctx.base.count_tokens(p), budget) for p in prompts])
    answer_tokens = np.mean([_answer_tokens(ctx, e) + 1 for e in ctx.dev])
    per_query = stats.inference_flops(params, float(prompt_tokens), float(answer_tokens))
    one_time = 0.0
    if isinstance(arm, FineTune):
        from tuneorprompt.finetune import DEFAULT_LEARNING_RATES  # heavy imports only with fine-tuning arms

        train_recipe = PromptRecipe(ctx.format, instruction=instruction)
        tokens_per_epoch = 0
        for example in arm.training_pool(ctx):
            prompt = train_recipe.build(example)
            tokens_per_epoch += ctx.base.count_tokens(prompt) + _answer_tokens(ctx, example) + 1
        grid = arm.spec.learning_rates or DEFAULT_LEARNING_RATES[arm.kind]
        trainable = params if arm.kind == "full" else 0
        one_time = stats.training_flops(params, tokens_per_epoch * arm.spec.epochs * len(grid), trainable)
    return CostEstimate(arm.name, per_query, one_time)


def _answer_tokens(ctx: ArmContext, example: Example) -> int:
    """Tokens the reference answer adds after the example's question, counted as a difference of two
    prompts so that a chat template's wrapping (the same in both) cancels out."""
    question = ctx.format.plain(example)
    return max(1, ctx.base.count_tokens(question + ctx.format.answer(example)) - ctx.base.count_tokens(question))
