"""One relevance score per (query, item) text pair, from any saved model: what ranking sorts by.

- A regression model (`data.problem: regression`): its predicted value.
- A two-label model (clicked 0/1): the probability of the positive label. The positive label is `positive` when
  given, else the one label named `1`, `true`, `yes`, `relevant`, `clicked` or `positive` (letter case ignored), else
  the second label in the model's order (labels are sorted when training: `1` of `0`/`1`).
- A model with more labels whose names are all numbers (graded relevance trained as classes `0`..`4`): the expected
  grade, the sum of each grade times its probability; or the probability of `positive` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adaptext.core.errors import AdaptextError
from adaptext.inference.predictor import Predictor

POSITIVE_NAMES = ("1", "true", "yes", "relevant", "clicked", "positive")


@dataclass(frozen=True)
class PairScoring:
    """How a model's output becomes one score: the value (regression), one label's probability, or the expected
    grade over numeric labels (`grades`)."""

    kind: str  # "value", "probability" or "expected_grade"
    label: str | None = None  # the positive label of `probability`
    grades: tuple[float, ...] = ()

    def describe(self) -> str:
        if self.kind == "value":
            return "the predicted value"
        if self.kind == "probability":
            return f"the probability of label {self.label!r}"
        return "the expected grade over the numeric labels"

    def apply(self, outputs: np.ndarray, labels: list[str]) -> np.ndarray:
        """(n, num_labels) probabilities (or values) -> (n,) scores."""
        if self.kind == "value":
            return np.asarray(outputs[:, 0], dtype=np.float64)
        if self.kind == "probability":
            return np.asarray(outputs[:, labels.index(str(self.label))], dtype=np.float64)
        return np.asarray(outputs, dtype=np.float64) @ np.asarray(self.grades, dtype=np.float64)


def _number(name: str) -> float | None:
    try:
        return float(name)
    except ValueError:
        return None


def pair_scoring(predictor: Predictor, positive: str | None = None) -> PairScoring:
    """How `predictor`'s outputs become a relevance score (see the module's docstring); an `AdaptextError` says
    what to give when it cannot be decided."""
    labels = predictor.labels
    if predictor.task.regression:
        if positive is not None:
            raise AdaptextError("--positive names a label of a classifier; a regression model scores by its value")
        return PairScoring("value")
    if predictor.multi_label and positive is None:
        raise AdaptextError("a multi-label model scores pairs by one label's probability: name it with --positive")
    if positive is not None:
        if positive not in labels:
            raise AdaptextError(f"--positive {positive!r} is not a label of this model ({', '.join(labels[:20])})")
        return PairScoring("probability", positive)
    if len(labels) == 2:
        named = [name for name in labels if name.strip().lower() in POSITIVE_NAMES]
        return PairScoring("probability", named[0] if len(named) == 1 else labels[1])
    grades = [_number(name) for name in labels]
    if all(grade is not None for grade in grades):
        return PairScoring("expected_grade", grades=tuple(float(g) for g in grades if g is not None))
    raise AdaptextError(
        f"this model has {len(labels)} labels that are not all numbers ({', '.join(labels[:10])}); name the label "
        "whose probability is the score with --positive"
    )


def pair_scores(
    predictor: Predictor,
    texts: Sequence[str],
    pairs: Sequence[str],
    scoring: PairScoring | None = None,
    *,
    progress: bool = False,
) -> np.ndarray:
    """(n,) relevance scores of the pairs (texts[i], pairs[i]) in input order.

    >>> clicks = Predictor.from_dir("runs/clicks")  # doctest: +SKIP
    >>> pair_scores(clicks, ["cheap flights"], ["Flights to Rome from 19 EUR"])  # doctest: +SKIP
    array([0.93])
    """
    scoring = scoring or pair_scoring(predictor)
    if not texts:
        return np.zeros(0, dtype=np.float64)
    outputs = predictor.predict_proba(texts, pairs, progress=progress)
    return scoring.apply(outputs, predictor.labels)
