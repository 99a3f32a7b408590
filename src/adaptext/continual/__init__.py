"""Continual learning: a trained classifier continued on new data (new labels or a new domain) without forgetting.

`extend` continues one saved run; `run_plan` trains a sequence of tasks and measures what each method keeps
(docs/continual.md).
"""

from __future__ import annotations

from adaptext.continual.plan import ContinualPlan, load_plan
from adaptext.continual.runner import PlanResult, extend, extend_config, run_plan
from adaptext.continual.strategy import Continue, previous_run

__all__ = [
    "ContinualPlan",
    "Continue",
    "PlanResult",
    "extend",
    "extend_config",
    "load_plan",
    "previous_run",
    "run_plan",
]
