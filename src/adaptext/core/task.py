"""Tasks: what kind of answer a model gives. One label per text, any number of labels per text, or one number.

Code that behaves differently by task asks the `Task` rather than threading a `multi_label` flag through its
signatures; a later task (token classification) is a new `Task` registered in `TASKS`. The config keys
`data.multi_label` and `data.problem` stay: `task_of(config)` reads them.

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
    """A kind of answer: how scores come from logits and labels from scores.

    A regression task has one output whose raw value is the score (`activation` `identity`); it has no labels to
    decide between.
    """

    name: str
    multi_label: bool
    problem_type: str  # transformers' `config.problem_type`
    activation: Literal["softmax", "sigmoid", "identity"]

    @property
    def regression(self) -> bool:
        """True for a task that predicts one number per text rather than labels."""
        return self.activation == "identity"

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """(n, num_labels) logits -> probabilities: softmax over labels, or a sigmoid per label (regression: the
        logits themselves, the predicted values).

        Computed in the logits' float precision (float32 logits give float32 probabilities); other input as float64.
        """
        logits = np.asarray(logits)
        if not np.issubdtype(logits.dtype, np.floating):
            logits = logits.astype(np.float64)
        if self.activation == "identity":
            return logits
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def decide(self, probabilities: np.ndarray, threshold: float) -> np.ndarray:
        """(n, num_labels) probabilities -> (n, num_labels) booleans: the top label, or every label over threshold."""
        probabilities = np.asarray(probabilities)
        if self.regression:
            raise ValueError("a regression task predicts a value, not labels")
        if self.multi_label:
            return probabilities >= threshold
        chosen = np.zeros(probabilities.shape, dtype=bool)
        if probabilities.size:
            chosen[np.arange(len(probabilities)), probabilities.argmax(axis=-1)] = True
        return chosen


SINGLE_LABEL = Task("single_label", False, "single_label_classification", "softmax")
MULTI_LABEL = Task("multi_label", True, "multi_label_classification", "sigmoid")
REGRESSION = Task("regression", False, "regression", "identity")

# The one output of a regression model, as its config's `id2label` names it.
REGRESSION_LABEL = "score"

TASKS: Registry[Task] = Registry("task")
TASKS.add(SINGLE_LABEL.name, SINGLE_LABEL)
TASKS.add(MULTI_LABEL.name, MULTI_LABEL)
TASKS.add(REGRESSION.name, REGRESSION)


def task_for(*, multi_label: bool) -> Task:
    """The task of a model or data set that is (or is not) multi-label."""
    return MULTI_LABEL if multi_label else SINGLE_LABEL


def task_of(config: Config) -> Task:
    """The task a run config asks for (`data.problem`, then `data.multi_label`)."""
    if config.data.problem == "regression":
        return REGRESSION
    return task_for(multi_label=config.data.multi_label)


def task_of_problem_type(problem_type: str | None) -> Task:
    """The task of a saved transformers model by its `problem_type` (single-label when unset)."""
    by_type = {task.problem_type: task for task in (MULTI_LABEL, REGRESSION)}
    return by_type.get(problem_type or "", SINGLE_LABEL)
