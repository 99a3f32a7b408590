"""What a sequence of tasks did to a model: the accuracy matrix and the summaries read from it.

`matrix[i][j]` is the accuracy on task j's evaluation data after training task i (None for j > i, a task not seen
yet). With T tasks (Lopez-Paz and Ranzato, 2017; Chaudhry et al., 2018):

- average accuracy: the mean over tasks of the final row;
- average incremental accuracy: the mean, over increments, of the average accuracy on the tasks seen so far;
- backward transfer: the mean over the first T-1 tasks of (final accuracy - accuracy just after learning it);
  negative when the model forgot;
- forgetting: the mean over the first T-1 tasks of (best accuracy before the last task - final accuracy).

>>> summary = summarise([[0.9, None], [0.8, 0.7]])
>>> summary["average_accuracy"], round(summary["backward_transfer"], 4), round(summary["forgetting"], 4)
(0.75, -0.1, 0.1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float | None]]


def _seen(matrix: Matrix, i: int) -> list[float]:
    row = matrix[i]
    values = [row[j] for j in range(i + 1)]
    if any(value is None for value in values):
        raise ValueError(f"row {i} of the accuracy matrix lacks a task it has seen")
    return [float(value) for value in values if value is not None]


def summarise(matrix: Matrix) -> dict[str, Any]:
    """Average accuracy, average incremental accuracy, backward transfer and forgetting of a complete matrix."""
    tasks = len(matrix)
    if tasks == 0 or any(len(row) != tasks for row in matrix):
        raise ValueError("the accuracy matrix must be square, one row and one column per task")
    final = _seen(matrix, tasks - 1)
    rows = [_seen(matrix, i) for i in range(tasks)]
    summary: dict[str, Any] = {
        "average_accuracy": sum(final) / tasks,
        "average_incremental_accuracy": sum(sum(row) / len(row) for row in rows) / tasks,
        "backward_transfer": None,
        "forgetting": None,
    }
    if tasks > 1:
        earlier = range(tasks - 1)
        summary["backward_transfer"] = sum(final[j] - rows[j][j] for j in earlier) / (tasks - 1)
        summary["forgetting"] = sum(max(rows[i][j] for i in range(j, tasks - 1)) - final[j] for j in earlier) / (
            tasks - 1
        )
    return summary
