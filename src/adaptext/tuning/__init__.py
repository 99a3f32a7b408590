"""Hyperparameter search: `tune(config, trials=...)` runs an optuna study whose trials are ordinary training runs.

`space` holds the search space (defaults per strategy, `tune.space`), `pruning` the callback that stops poor
trials early, `plan` how a trial's parameters become its config, `study` the study itself and its workers, and
`report` what the study leaves in its folder. docs/tuning.md describes the command.
"""

from __future__ import annotations

from adaptext.tuning.study import TuneResult, tune

__all__ = ["TuneResult", "tune"]
