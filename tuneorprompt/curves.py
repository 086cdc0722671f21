"""Learning curves: test accuracy against the number of labelled examples an approach uses —
k demonstrations in the prompt, or n training examples for fine-tuning — on the same axes, and
where (if anywhere within the data) fine-tuning overtakes prompting.

Points re-use the main arms' runs where they coincide (few_shot@k, the full-pool fine-tune) and
go through the same store under the same content keys, so a resumed run recomputes none of them.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from tuneorprompt import stats
from tuneorprompt.arms import Arm, ArmRun, Baseline, FewShot, FineTune, TaskData
from tuneorprompt.config import ExperimentConfig, FewShotArm, FineTuneArm
from tuneorprompt.forecast import forecast_labels
from tuneorprompt.summary import outcome_matrix


def run_learning_curve(
    config: ExperimentConfig,
    task: TaskData,
    arms: Sequence[Arm],
    done: Mapping[str, list[ArmRun]],
    run: Callable[[Arm], list[ArmRun]],
) -> tuple[dict, dict[str, list[ArmRun]]]:
    """The curve, and the runs of its points that are not main arms (`run` runs an arm under every
    seed it takes, through the store; `done` holds the main arms' runs, which points re-use)."""
    curve_config = config.learning_curve
    pool = len(task.train)

    few_shot_arms: list[tuple[int, Arm]] = []
    for k in sorted(set(curve_config.few_shot_k)):
        if k > pool:
            continue
        few_shot_arms.append((k, Baseline() if k == 0 else FewShot(FewShotArm(k=[k]), k)))

    # The curve's fine-tuning settings are those of the matching main arm when there is one.
    main_spec = next(
        (a.spec for a in arms if isinstance(a, FineTune) and a.spec.kind == curve_config.finetune
         and not a.spec.instruction and not a.spec.few_shot_k and not a.name_suffix),
        FineTuneArm(kind=curve_config.finetune),
    )
    finetune_arms: list[tuple[int, Arm]] = []
    for n in sorted({n for n in curve_config.train_sizes if n < pool} | {pool}):
        if n == pool:
            finetune_arms.append((n, FineTune(main_spec.model_copy(update={"max_train_examples": None}))))
        else:
            finetune_arms.append((n, FineTune(main_spec.model_copy(update={"max_train_examples": n}), f"@n={n}")))

    new: dict[str, list[ArmRun]] = {}
    outcomes: dict[str, np.ndarray] = {}  # arm name -> [n_seeds, n_test] correctness, for the forecast

    def point(x: int, arm: Arm) -> dict:
        if arm.name not in done and arm.name not in new:  # not a main arm: run it (or read it back) for the curve
            new[arm.name] = run(arm)
        arm_runs = done.get(arm.name) or new[arm.name]
        outcomes[arm.name] = outcome_matrix([r.records for r in arm_runs], "correct")
        interval = stats.accuracy_interval(outcomes[arm.name])
        return {"x": x, "arm": arm.name, "accuracy": interval.value, "ci_low": interval.low, "ci_high": interval.high}

    prompting = [point(k, arm) for k, arm in few_shot_arms]
    finetuning = [point(n, arm) for n, arm in finetune_arms]

    def label_forecast(points: list[dict]) -> dict:
        # Zero-shot (x = 0) has no label count to fit; forecast_labels ignores it.
        return forecast_labels([(p["x"], outcomes[p["arm"]]) for p in points], config.target.accuracy).to_dict()
    crossover = stats.crossover(
        [(p["x"], p["accuracy"]) for p in finetuning], [(p["x"], p["accuracy"]) for p in prompting]
    )
    curve = {
        "x_label": "labelled examples used (k demos / n training examples)",
        "few_shot": prompting,
        "finetune": finetuning,
        "finetune_kind": curve_config.finetune,
        "crossover": crossover,
        "hint": curve_hint(finetuning),
        # Where more labels would lead, with a band: training examples for fine-tuning, demos for few-shot.
        "forecast": {"finetune": label_forecast(finetuning), "few_shot": label_forecast(prompting)},
    }
    return curve, new


def curve_hint(finetuning: list[dict]) -> str:
    """What the end of the fine-tuning curve suggests when no arm reaches the target."""
    if len(finetuning) < 2:
        return "Too few learning-curve points to say whether more data would help."
    last, previous = finetuning[-1], finetuning[-2]
    gain = last["accuracy"] - previous["accuracy"]
    doublings = float(np.log2(last["x"] / previous["x"]))
    if gain > 0 and last["ci_low"] > previous["accuracy"]:
        return (f"Fine-tuning accuracy was still rising at the full pool (+{100 * gain:.1f} points over the last "
                f"{doublings:.1f} doublings of data): more labelled data is likely to help.")
    return ("Fine-tuning accuracy has flattened at the full pool: more data of the same kind is unlikely to help "
            "much; a larger base model, or adding the missing knowledge to the prompt (context), may.")
