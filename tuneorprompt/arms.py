"""The arms: each adapts the base model to the task using only the training pool and the dev split,
and returns a `System` that the one evaluator scores on the test split.

Like an optimizer's `compile(student, trainset)`, prompt arms and weight arms share one signature:
`prepare(context, seed) -> System`. The context carries train and dev but not test, so no arm can
choose anything on the test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import jinja2
from rich.progress import Progress

from tuneorprompt.backends.base import Backend
from tuneorprompt.config import (
    ContextArm,
    ExperimentConfig,
    FewShotArm,
    FineTuneArm,
)
from tuneorprompt.evaluate import Scorer, System, accuracy, evaluate
from tuneorprompt.prompts import PromptFormat, PromptRecipe, compile_template
from tuneorprompt.records import Example, ExampleRecord, GenerationSettings
from tuneorprompt.retrieval import Embed, NearestDemos, PassageRetriever, RandomDemos
from tuneorprompt.store import CachedBackend, Store


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
    store: Store
    run_dir: Path
    embed: Embed
    corpus: list[str] | None = None
    progress: Progress | None = None
    _instruction: str | None = field(default=None, repr=False)
    instruction_scores: dict[str, float] = field(default_factory=dict)

    def dev_accuracy(self, system: System) -> float:
        records = evaluate(system, self.dev, "dev", self.settings, self.scorer, self.progress)
        self.store.put_records(records)
        return accuracy(records)

    def chosen_instruction(self) -> str:
        """The candidate instruction with the best dev accuracy (ties: the earlier candidate), chosen
        once per run and shared by every arm that uses an instruction."""
        if self._instruction is None:
            for i, candidate in enumerate(self.format.instruction_candidates()):
                recipe = PromptRecipe(self.format, instruction=candidate)
                self.instruction_scores[candidate] = self.dev_accuracy(
                    System(f"instruction-candidate-{i}", 0, self.base, recipe)
                )
            self._instruction = max(self.instruction_scores, key=self.instruction_scores.__getitem__)
        return self._instruction


class Arm(Protocol):
    name: str
    kind: str
    stochastic: bool  # repeated for every configured seed
    ladder_rank: float  # position in the cheapest-first order of the `ladder` strategy

    def prepare(self, ctx: ArmContext, seed: int) -> System: ...


@dataclass(frozen=True)
class Baseline:
    name: str = "baseline"
    kind: str = "baseline"
    stochastic: bool = False
    ladder_rank: float = 0.0

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        return System(self.name, seed, ctx.base, PromptRecipe(ctx.format))


@dataclass(frozen=True)
class Instruction:
    name: str = "instruction"
    kind: str = "instruction"
    stochastic: bool = False
    ladder_rank: float = 1.0

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        instruction = ctx.chosen_instruction()
        info = {"instruction": instruction, "dev_accuracy_by_instruction": dict(ctx.instruction_scores)}
        return System(self.name, seed, ctx.base, PromptRecipe(ctx.format, instruction=instruction), info)


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
    def name(self) -> str:
        return f"{self.spec.kind}@{self.k}" + ("+instruction" if self.spec.instruction else "")

    @property
    def ladder_rank(self) -> float:
        return (3.0 if self.retrieved else 2.0) + self.k / 1000

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        instruction = ctx.chosen_instruction() if self.spec.instruction else None
        if self.retrieved:
            demos, info = NearestDemos(ctx.train, self.k, ctx.embed), {}
        else:
            demos = RandomDemos(tuple(ctx.train), self.k, seed)
            info = {"demo_ids": [d.id for d in demos.chosen]}
        recipe = PromptRecipe(ctx.format, instruction=instruction, demos=demos)
        return System(self.name, seed, ctx.base, recipe, {"k": self.k, "instruction": instruction, **info})


@dataclass(frozen=True)
class Context:
    spec: ContextArm

    name = "context"
    kind = "context"
    stochastic = False
    ladder_rank = 4.0

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        if not ctx.corpus:
            raise ValueError("the context arm needs data.corpus (reference documents) in the config")
        retriever = PassageRetriever(ctx.corpus, self.spec.top_k, self.spec.retriever, ctx.embed)
        template: jinja2.Template = compile_template(self.spec.template, "context.template")
        recipe = PromptRecipe(ctx.format, passages=retriever, context_template=template)
        return System(self.name, seed, ctx.base, recipe, {"top_k": self.spec.top_k, "retriever": self.spec.retriever})


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
    def ladder_rank(self) -> float:
        return (10.0 if self.spec.kind == "lora" else 11.0) + 0.1 * self.spec.instruction

    def prepare(self, ctx: ArmContext, seed: int) -> System:
        from tuneorprompt.finetune import (  # heavy imports only when training
            TrainingExample,
            finetune,
        )

        instruction = ctx.chosen_instruction() if self.spec.instruction else None
        train_recipe = PromptRecipe(ctx.format, instruction=instruction)
        pool = ctx.train[: self.spec.max_train_examples] if self.spec.max_train_examples else ctx.train
        examples = [TrainingExample(e.id, train_recipe.build(e), ctx.format.answer(e)) for e in pool]
        demos = RandomDemos(tuple(ctx.train), self.spec.few_shot_k, seed) if self.spec.few_shot_k else None
        query_recipe = PromptRecipe(ctx.format, instruction=instruction, demos=demos)

        def dev_score(backend: Backend) -> float:
            return ctx.dev_accuracy(System(f"{self.name}-dev", seed, CachedBackend(backend, ctx.store), query_recipe))

        out_dir = ctx.run_dir / "models" / f"{self.name}-seed{seed}"
        tuned = finetune(ctx.config.model, self.spec, examples, dev_score, out_dir, seed)
        info = {"instruction": instruction, "train_examples": len(examples), "model_dir": str(tuned.model_dir)}
        system = System(self.name, seed, CachedBackend(tuned.backend, ctx.store), query_recipe, info)
        system.info["training"] = tuned.cost
        return system


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


def run_arm(arm: Arm, seed: int, ctx: ArmContext, test: list[Example]) -> tuple[list[ExampleRecord], dict]:
    """Test records of one arm and seed: read back when the store has them, else prepare and evaluate.

    The test split enters here only, after the arm has finished all of its choices on train/dev."""
    info = ctx.store.finished_arm(arm.name, seed)
    if info is not None:
        return ctx.store.records(arm.name, seed, "test"), info
    system = arm.prepare(ctx, seed)
    arm_records = evaluate(system, test, "test", ctx.settings, ctx.scorer, ctx.progress)
    ctx.store.put_records(arm_records)
    info = _jsonable(system.info)
    ctx.store.finish_arm(arm.name, seed, info)
    return arm_records, info


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
