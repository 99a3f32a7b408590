"""Likely label errors: out-of-fold probabilities of a linear classifier on the embeddings, ranked by cleanlab.

Each row is scored by classifiers that never saw it (stratified K-fold), so a row whose given label disagrees with
what the rest of the data teaches gets a low probability for its own label. The default (`ensemble`) averages a
logistic regression, which learns what the labels mean overall, and a distance-weighted k-nearest-neighbour vote,
which asks what the most similar rows say; on SST-2 with 5% flipped labels the average finds more of the flipped
rows than either alone (bench/audit.py). cleanlab's confident
learning (`find_label_issues`) decides which rows to flag, and its label-quality score (`RANKING_METHODS`) orders
every row, most suspicious first.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from adaptext.core.console import progress_bar
from adaptext.core.errors import AdaptextError

logger = logging.getLogger(__name__)

RankingMethod = Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
RANKING_METHODS: tuple[RankingMethod, ...] = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
Classifier = Literal["ensemble", "logistic", "knn"]
CLASSIFIERS: tuple[Classifier, ...] = ("ensemble", "logistic", "knn")
NEIGHBOURS = 10  # k of the nearest-neighbour vote


@dataclass
class LabelScores:
    """Per row of the audited rows: out-of-fold probabilities (n, labels), the label-quality score (low = suspect),
    whether confident learning flags it, and the order of the rows from most to least suspicious."""

    probabilities: np.ndarray
    quality: np.ndarray
    flagged: np.ndarray
    ranking: np.ndarray
    folds: int


def fold_count(targets: np.ndarray, folds: int) -> int:
    """The folds to use: `folds`, fewer when a label has fewer rows (never under 2), with a warning."""
    smallest = int(np.bincount(targets).min())
    if smallest >= folds:
        return folds
    used = max(2, smallest)
    logger.warning("audit: the smallest label has %d rows, fewer than %d folds; using %d folds", smallest, folds, used)
    return used


def out_of_fold_probabilities(
    embeddings: np.ndarray,
    targets: np.ndarray,
    num_labels: int,
    *,
    folds: int,
    seed: int,
    classifier: Classifier = "ensemble",
    progress: bool = True,
) -> np.ndarray:
    """(n, num_labels) probabilities, each row's from `classifier` fitted on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = np.zeros((len(targets), num_labels), dtype=np.float64)
    with warnings.catch_warnings():
        # A label rarer than the folds is expected here (see `fold_count`); sklearn would say so on every call.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(embeddings, targets))
    for train_idx, held_idx in progress_bar(splits, show=progress, desc="out-of-fold", unit="fold"):
        models = [_logistic()] if classifier == "logistic" else [_knn(len(train_idx))]
        if classifier == "ensemble":
            models.append(_logistic())
        for model in models:
            model.fit(embeddings[train_idx], targets[train_idx])
            # A fold may miss a rare label: its column stays 0 for the held-out rows.
            found = model.predict_proba(embeddings[held_idx]) / len(models)
            probabilities[np.ix_(held_idx, model.classes_)] += found
    return probabilities


def _logistic() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    # Embeddings are unit vectors, so their coordinates are small: scale them up instead of weakening the
    # penalty, which keeps lbfgs well conditioned.
    return make_pipeline(FunctionTransformer(lambda x: x * SCALE), LogisticRegression(C=1.0, max_iter=1000))


def _knn(rows: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    # On unit vectors the Euclidean order is the cosine order; brute force is exact and chunked by sklearn.
    return KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, rows), weights="distance", algorithm="brute", n_jobs=-1)


SCALE = 10.0  # embeddings x SCALE: coordinates of order 0.5 for a 384-dimensional unit vector


def score_labels(
    embeddings: np.ndarray,
    targets: np.ndarray,
    num_labels: int,
    *,
    folds: int = 5,
    method: RankingMethod = "self_confidence",
    classifier: Classifier = "ensemble",
    seed: int = 0,
    progress: bool = True,
) -> LabelScores:
    """Out-of-fold probabilities, cleanlab's flags and label-quality scores for `targets` (ids 0..num_labels-1)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if method not in RANKING_METHODS:
        raise AdaptextError(f"unknown ranking method {method!r}; use one of {', '.join(RANKING_METHODS)}")
    if classifier not in CLASSIFIERS:
        raise AdaptextError(f"unknown classifier {classifier!r}; use one of {', '.join(CLASSIFIERS)}")
    used = fold_count(targets, folds)
    probabilities = out_of_fold_probabilities(
        embeddings, targets, num_labels, folds=used, seed=seed, classifier=classifier, progress=progress
    )
    quality = get_label_quality_scores(targets, probabilities, method=method)
    flagged = find_label_issues(targets, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    # Most suspicious first; ties (identical scores) in file order, so the ranking is deterministic.
    ranking = np.lexsort((np.arange(len(targets)), quality))
    return LabelScores(
        probabilities=probabilities,
        quality=np.asarray(quality, dtype=np.float64),
        flagged=np.asarray(flagged, dtype=bool),
        ranking=ranking,
        folds=used,
    )
