"""Pruning: a callback that reports a trial's validation scores to optuna and stops the trial when told to.

Trials of one study differ in length (batch size and epochs are searched), so their global steps do not line up.
A trial reports at most `REPORTS` times, once per equal share of its planned steps (the first evaluation in each
share), numbered 1 to `REPORTS`: the pruner then compares trials at the same share of their training.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from adaptext.training.callbacks import Callback
from adaptext.training.state import TrainingState

REPORTS = 4


class TrialPruning(Callback):
    """Reports `eval_<metric>` to `trial` and raises `optuna.TrialPruned` when its pruner says so.

    The last report (the end of training) never prunes: the trial is complete by then.
    """

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.total_steps = 0
        self.steps = 0  # optimizer steps trained so far (the trial's compute)
        self.reported = 0  # the last share reported
        self.last_value: float | None = None

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        self.total_steps = state.total_steps
        self.steps = state.global_step

    def on_step_end(self, state: TrainingState) -> None:
        self.steps = state.global_step

    def on_evaluate(self, record: dict[str, Any]) -> None:
        value = record.get(f"eval_{self.metric}")
        if value is None or not math.isfinite(value):
            return
        self.steps = max(self.steps, int(record["step"]))
        share = self.share(int(record["step"]))
        if share <= self.reported:
            return
        self.reported, self.last_value = share, float(value)
        self.trial.report(float(value), share)
        if share < REPORTS and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {record['step']}: {self.metric}={value:.4f}")

    def share(self, step: int) -> int:
        """Which of the `REPORTS` shares of the planned steps `step` completes (0: not the first one yet)."""
        if self.total_steps <= 0:
            return REPORTS
        return min(REPORTS, REPORTS * step // self.total_steps)
