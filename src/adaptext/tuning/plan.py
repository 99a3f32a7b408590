"""What every worker of a study needs to know, and how a trial's parameters become its config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adaptext.core.config import Config, build_config
from adaptext.evaluation.metrics import LOWER_IS_BETTER
from adaptext.tuning.space import Space, set_dotted

TRIALS_DIR = "trials"


@dataclass(frozen=True)
class TuningPlan:
    """A study as its workers run it (picklable: worker processes receive it whole)."""

    config: Config  # the base config, as given
    space: Space
    root: Path  # the tune folder
    study_name: str
    storage: str
    metric: str
    n_trials: int  # finished trials (complete or pruned) the study ends at, counting earlier ones
    deadline: float | None = None  # time.time() after which no new trial starts
    jobs: int = 1
    parent_run_id: str | None = None  # the study's MLflow run, when tracking.backend is mlflow

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"

    def trial_dir(self, number: int) -> Path:
        return self.root / TRIALS_DIR / f"trial_{number:04d}"


def trial_config(plan: TuningPlan, params: dict[str, Any], output_dir: Path) -> Config:
    """The base config with the pinned and drawn `params`, the study's metric and `output_dir`.

    A trial needs no `train.eval_steps` for its pruner: its pruning callback asks for the evaluations it reports.
    """
    tree = plan.config.model_dump(mode="json")
    for key, value in (plan.space.fixed | params).items():
        tree = set_dotted(tree, key, value)
    tree = set_dotted(tree, "train.metric_for_best", plan.metric)
    tree = set_dotted(tree, "output_dir", str(output_dir))
    return build_config(tree, f"tuning trial in {output_dir}")
