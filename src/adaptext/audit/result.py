"""What an audit is asked to do (`AuditSettings`) and what it found (`AuditResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptext.audit.duplicates import Duplicate
from adaptext.audit.features import DEFAULT_ENCODER
from adaptext.audit.labels import Classifier, RankingMethod


@dataclass
class AuditSettings:
    """How an audit reads the data and scores it.

    `model`: a run or model folder saved by adaptext whose encoder gives the embeddings; else `encoder`, a
    pretrained model name or folder (mean-pooled). `columns`: `text_column`, `text_pair_column`, `label_column`
    (default: as the model was trained, else `text` and `label`). `near_threshold`: the cosine similarity from
    which two texts are near duplicates. `method`: cleanlab's label-quality score that orders the
    suspects. `classifier`: what gives the out-of-fold probabilities (`ensemble` of `logistic` and `knn`, or one).
    """

    model: str | None = None
    encoder: str = DEFAULT_ENCODER
    columns: dict[str, str | None] = field(default_factory=dict)
    folds: int = 5
    near_threshold: float = 0.95
    method: RankingMethod = "self_confidence"
    classifier: Classifier = "ensemble"
    seed: int = 0
    max_length: int = 128
    batch_size: int = 64


@dataclass
class Suspect:
    """A row whose label is likely wrong: `row` as numbered in the file (1 = first data row), the label it has,
    the label the out-of-fold classifier prefers and that label's probability (`confidence`); `label_quality` is
    cleanlab's score of the given label (0 worst, 1 best)."""

    rank: int
    row: int
    text: str
    given_label: str
    suggested_label: str
    confidence: float
    label_quality: float


@dataclass
class AuditResult:
    """What an audit found. `suspects`: the rows confident learning flags, most suspicious first.
    `ranking` / `quality` / `probabilities` / `targets`: every audited row (0-based positions) ordered from most to
    least suspicious, each row's label-quality score, its out-of-fold probabilities (n, labels) and its given label
    (an index into `labels`), for reading further down than the flagged rows. `embeddings`: the audited rows' unit
    vectors (n, dim)."""

    source: str
    n_rows: int
    labels: list[str]
    suspects: list[Suspect]
    duplicates: list[Duplicate]
    ranking: np.ndarray
    quality: np.ndarray
    probabilities: np.ndarray
    targets: np.ndarray
    embeddings: np.ndarray
    settings: dict[str, Any]
    seconds: dict[str, float]
    output: Path | None = None

    def summary(self) -> dict[str, Any]:
        """The counts of `audit.json`."""
        exact = [d for d in self.duplicates if d.kind == "exact"]
        near = [d for d in self.duplicates if d.kind == "near"]
        return {
            "rows": self.n_rows,
            "labels": len(self.labels),
            "suspects": len(self.suspects),
            "exact_duplicates": len(exact),
            "near_duplicates": len(near),
            "conflicting_duplicates": sum(d.conflict for d in self.duplicates),
            "leakage": {
                f"{a}-{b}": sum(d.leakage and {d.split_a, d.split_b} == {a, b} for d in self.duplicates)
                for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"))
            },
        }
