"""An arm kind is its settings class and its arm class, nothing else: one defined here, in the test
file alone, is accepted by the config, ranked by cost, reported, and compared with fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest
from rich.console import Console

from tests.fakes import ScriptedBackend
from tests.test_experiment import write_task
from tuneorprompt import arms as arms_module
from tuneorprompt.arms import Base, DevJudge, System, TaskData, arm_kind
from tuneorprompt.config import ArmSpec
from tuneorprompt.experiment import run_experiment
from tuneorprompt.prompts import PlacedInstruction, PromptRecipe

MARKER = "Think of the atlas."


@pytest.fixture
def registries(monkeypatch):
    """The kind registries as they are, restored after the test (the toy kind leaves no trace)."""
    monkeypatch.setattr(ArmSpec, "_classes", dict(ArmSpec._classes))
    monkeypatch.setattr(arms_module, "_ARM_CLASSES", dict(arms_module._ARM_CLASSES))


def define_atlas_arm():
    class AtlasArm(ArmSpec):
        kind: Literal["atlas"] = "atlas"
        hint: str = MARKER

    @arm_kind
    @dataclass(frozen=True)
    class Atlas:
        spec: AtlasArm

        family: ClassVar[str] = "prompt"
        method_version: ClassVar[int] = 1
        spec_class: ClassVar[type[ArmSpec]] = AtlasArm
        name = "atlas"
        stochastic = False
        uses_instruction = False
        retrieves_by_embedding = False

        @classmethod
        def expand(cls, spec):
            return [cls(spec)]

        def recipe(self, task: TaskData, seed, instruction) -> PromptRecipe:
            return PromptRecipe(task.format, instruction=PlacedInstruction(self.spec.hint))

        def prepare(self, task: TaskData, dev: DevJudge, base: Base, seed: int) -> System:
            PREPARED.append(self.method_version)
            return System(self.name, seed, base.backend, self.recipe(task, seed, None), {"hint": self.spec.hint})

    return Atlas


PREPARED: list[int] = []  # the method version of each Atlas.prepare call


def answer(prompt: str) -> str:
    """Right whenever the atlas hint is in the prompt, else right on every fourth item."""
    item = prompt.rsplit("item ", 1)[1].split("?")[0]
    return f" Place {item}\n" if MARKER in prompt or int(item[2:]) % 4 == 0 else " no idea\n"


def test_an_arm_defined_in_a_test_file_is_ranked_reported_and_compared_with_fine_tuning(
    registries, tiny_gpt2_dir, tmp_path
):
    define_atlas_arm()
    config = {
        "name": "atlas",
        "model": {"path": str(tiny_gpt2_dir), "num_threads": 1, "chat_template": False},
        "data": write_task(tmp_path / "data"),
        "arms": ["baseline", {"kind": "atlas"}, {"kind": "lora", "epochs": 1, "learning_rates": [1e-3]}],
        "generation": {"max_new_tokens": 6},
        "target": {"accuracy": 0.5},
    }
    result = run_experiment(config, tmp_path / "run", backend=ScriptedBackend(answer),
                            console=Console(file=open(tmp_path / "terminal.txt", "w"), width=200))
    report = result.report.to_dict()
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["atlas"]["family"] == "prompt" and arms["atlas"]["accuracy"]["value"] == 1.0
    assert arms["atlas"]["details"] == [{"hint": MARKER, "peak_rss_mb": arms["atlas"]["details"][0]["peak_rss_mb"]}]
    # Ranked by its estimated cost: its prompts are longer than the baseline's, and it needs no training.
    assert [e["name"] for e in report["cost_order"]] == ["baseline", "atlas", "lora"]
    assert report["recommendation"]["arm"] == "atlas"
    # On the prompt side of the question, against the fine-tuned arm.
    assert report["prompt_vs_finetune"]["prompt_arm"] == "atlas"
    assert report["prompt_vs_finetune"]["finetuned_arm"] == "lora"
    assert "atlas" in (tmp_path / "run" / "report.html").read_text()


def test_a_changed_procedure_prepares_the_arm_again_instead_of_reading_its_old_result(
    registries, tiny_gpt2_dir, tmp_path
):
    atlas = define_atlas_arm()
    config = {
        "name": "atlas",
        "model": {"path": str(tiny_gpt2_dir), "num_threads": 1, "chat_template": False},
        "data": write_task(tmp_path / "data"),
        "arms": [{"kind": "atlas"}],
        "generation": {"max_new_tokens": 6},
    }

    def run() -> None:
        run_experiment(config, tmp_path / "run", backend=ScriptedBackend(answer),
                       console=Console(file=open(tmp_path / "terminal.txt", "w"), width=200))

    PREPARED.clear()
    run()
    run()  # same settings, same procedure: read back
    assert PREPARED == [1]
    atlas.method_version = 2  # the arm's search changed: its stored result is not this procedure's
    run()
    assert PREPARED == [1, 2]
