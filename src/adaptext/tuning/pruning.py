"""Pruning: a callback that reports a trial's validation scores to optuna and stops the trial when told to.

Trials of one study differ in length (batch size and epochs are searched), so their global steps do not line up.
A trial reports at `RUNGS` points of its planned steps, each `REDUCTION` times further than the one before: after
1/9, 1/3 and all of them. It asks the engine to evaluate at the first step past each point (besides any evaluation
its config schedules), so no `train.eval_steps` is needed, and a report is numbered by the training it stands for, in
units of the first rung (1, 3, 9): the pruner compares trials at the same share of their training, and successive
halving's and Hyperband's rungs (`min_resource=1`, `reduction_factor=REDUCTION`) fall on the reports. Geometric
rungs let a trial be stopped after a ninth of its training while a complete trial evaluates only three times.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from adaptext.training.callbacks import Callback
from adaptext.training.state import TrainingState

REDUCTION = 3
RUNGS = 3
FINAL = REDUCTION ** (RUNGS - 1)  # the last report's number: the whole of a trial's training


def rung_steps(total_steps: int) -> list[int]:
    """The first step at or past each rung of `total_steps` planned steps (the last one is the end of training)."""
    return [math.ceil(total_steps * REDUCTION**k / FINAL) for k in range(RUNGS)]


class TrialPruning(Callback):
    """Reports `eval_<metric>` to `trial` at its rungs and raises `optuna.TrialPruned` when its pruner says so.

    The last report (the end of training) never prunes: the trial is complete by then.
    """

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.total_steps = 0
        self.steps = 0  # optimizer steps trained so far (the trial's compute)
        self.reported = 0  # the number of the last report (0: none yet)
        self.last_value: float | None = None
        self.evaluations = 0  # validation passes seen (their compute: each scores the whole validation split)

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        self.total_steps = state.total_steps
        self.steps = state.global_step

    def wants_evaluation(self, state: TrainingState) -> bool:
        return state.global_step in rung_steps(self.total_steps)

    def on_step_end(self, state: TrainingState) -> None:
        self.steps = state.global_step

    def on_evaluate(self, record: dict[str, Any]) -> None:
        self.evaluations += 1
        value = record.get(f"eval_{self.metric}")
        if value is None or not math.isfinite(value):
            return
        self.steps = max(self.steps, int(record["step"]))
        number = self.rung(int(record["step"]))
        if number <= self.reported:
            return
        self.reported, self.last_value = number, float(value)
        self.trial.report(float(value), number)
        if number < FINAL and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {record['step']}: {self.metric}={value:.4f}")

    def rung(self, step: int) -> int:
        """The number of the furthest rung `step` has reached (1, 3, 9; 0: not the first one yet)."""
        if self.total_steps <= 0:
            return FINAL
        reached = [k for k, at in enumerate(rung_steps(self.total_steps)) if step >= at]
        return REDUCTION ** reached[-1] if reached else 0
