"""Tasks: what kind of answer a classifier gives. One label per text, or any number of labels per text.

Code that behaves differently by task asks the `Task` rather than threading a `multi_label` flag through its
signatures; a later task (token classification, regression) is a new `Task` registered in `TASKS`. The config key
`data.multi_label` stays: `task_of(config)` reads it.

>>> task_for(multi_label=True).activation
'sigmoid'
>>> SINGLE_LABEL.decide(np.array([[0.2, 0.8]]), threshold=0.5).tolist()
[[False, True]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from adaptext.core.registry import Registry

if TYPE_CHECKING:
    from adaptext.core.config import Config


@dataclass(frozen=True)
class Task:
    """A kind of classification: how scores come from logits and labels from scores."""

    name: str
    multi_label: bool
    problem_type: str  # transformers' `config.problem_type`
    activation: Literal["softmax", "sigmoid"]

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """(n, num_labels) logits -> probabilities: softmax over labels, or a sigmoid per label.

        Computed in the logits' float precision (float32 logits give float32 probabilities); other input as float64.
        """
        logits = np.asarray(logits)
        if not np.issubdtype(logits.dtype, np.floating):
            logits = logits.astype(np.float64)
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def decide(self, probabilities: np.ndarray, threshold: float) -> np.ndarray:
        """(n, num_labels) probabilities -> (n, num_labels) booleans: the top label, or every label over threshold."""
        probabilities = np.asarray(probabilities)
        if self.multi_label:
            return probabilities >= threshold
        chosen = np.zeros(probabilities.shape, dtype=bool)
        if probabilities.size:
            chosen[np.arange(len(probabilities)), probabilities.argmax(axis=-1)] = True
        return chosen


SINGLE_LABEL = Task("single_label", False, "single_label_classification", "softmax")
MULTI_LABEL = Task("multi_label", True, "multi_label_classification", "sigmoid")

TASKS: Registry[Task] = Registry("task")
TASKS.add(SINGLE_LABEL.name, SINGLE_LABEL)
TASKS.add(MULTI_LABEL.name, MULTI_LABEL)


def task_for(*, multi_label: bool) -> Task:
    """The task of a model or data set that is (or is not) multi-label."""
    return MULTI_LABEL if multi_label else SINGLE_LABEL


def task_of(config: Config) -> Task:
    """The task a run config asks for (`data.multi_label`)."""
    return task_for(multi_label=config.data.multi_label)


def task_of_problem_type(problem_type: str | None) -> Task:
    """The task of a saved transformers model by its `problem_type` (single-label when unset)."""
    return MULTI_LABEL if problem_type == MULTI_LABEL.problem_type else SINGLE_LABEL
