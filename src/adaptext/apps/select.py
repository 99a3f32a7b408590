"""Active learning: the pool texts whose labels would help a model most, picked for a person to label.

A trained classifier scores every usable text of an unlabelled pool, and one of four strategies picks N of them:

- `entropy`: the highest predictive entropy, `-sum_k p_k log p_k` (multi-label: the mean binary entropy of the
  labels), in nats;
- `margin`: the smallest gap between the two most probable labels; the selection score is `1 - (p_1 - p_2)`
  (multi-label: `1 - min_k |p_k - threshold|`, the label closest to its decision threshold);
- `diverse`: Zhdanov (2019), "Diverse mini-batch Active Learning" (arXiv:1901.05954): the `DIVERSE_PREFILTER` x N
  texts of highest margin score are clustered into N clusters by k-means weighted by that score, on the
  L2-normalised inputs of the model's output layer (its sentence embedding), and the text nearest each cluster's
  centre is picked, so near-duplicates fall into one cluster and only one of them is picked;
- `random`: a seeded uniform draw, the baseline.

A pool row is not a candidate when its text is blank (skipped with a warning), when its label column is already
filled (partial labels are allowed), or when its text (ignoring surrounding white space) is that of a labelled row
or of an earlier row: no text is ever picked twice. The picked rows are written best first (`selection_rank` 1 is
the most useful) with all their columns, the model's guess, its probability, the selection score and rank, and an
empty label column to fill in.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

from adaptext.core.errors import AdaptextError, DataError
from adaptext.core.outputs import check_output_file, expand
from adaptext.data.io import SUPPORTED_SUFFIXES, read_table, require_columns, write_table
from adaptext.inference.predictor import Predictor

logger = logging.getLogger(__name__)

SelectStrategy = Literal["entropy", "margin", "diverse", "random"]
SELECT_STRATEGIES: tuple[str, ...] = get_args(SelectStrategy)
DEFAULT_STRATEGY: SelectStrategy = "diverse"  # best or level with the best in bench/label_efficiency_active.py
# `diverse` clusters this many candidates per text to pick (Zhdanov 2019 uses 10 to 50).
DIVERSE_PREFILTER = 10
# The columns `select` adds; a pool column of the same name is replaced (a previous selection fed back as pool).
ADDED_COLUMNS = ("predicted_label", "score", "selection_score", "selection_rank")
_EPS = 1e-12


@dataclass(frozen=True)
class Choice:
    """The picked candidates (`indices` into the scored rows, best first) and every candidate's selection score
    (higher: more useful to label; `random`: the seeded draw's key)."""

    indices: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Selection:
    """What `select_pool` wrote: `picked` rows into `output`, chosen among `candidates` of the pool's `pool_rows`."""

    output: Path
    strategy: str
    picked: int
    requested: int
    pool_rows: int
    candidates: int
    blank: int
    labelled: int
    duplicates: int


def entropy_scores(probs: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    """Predictive entropy in nats of each row of (n, num_labels) `probs`: of the softmax distribution, or for a
    multi-label model the mean over labels of each label's binary entropy."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    if not multi_label:
        return -(p * np.log(p)).sum(axis=1)
    q = np.clip(1.0 - np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return -(p * np.log(p) + q * np.log(q)).mean(axis=1)


def margin_scores(probs: np.ndarray, *, multi_label: bool = False, threshold: float = 0.5) -> np.ndarray:
    """`1 - (p_1 - p_2)` for each row of (n, num_labels) `probs` (the two most probable labels), so a small margin
    scores high; multi-label: `1 - min_k |p_k - threshold|`, the label nearest its decision."""
    p = np.asarray(probs, dtype=np.float64)
    if multi_label:
        return 1.0 - np.abs(p - threshold).min(axis=1)
    if p.shape[1] < 2:
        raise AdaptextError("margin needs at least two labels")
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def _best_first(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep their pool order."""
    return np.argsort(-scores, kind="stable")


def diverse_picks(scores: np.ndarray, embeddings: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Zhdanov's weighted k-means: cluster the `DIVERSE_PREFILTER * n` highest-scoring rows of (m, dim) `embeddings`
    into `n` clusters weighted by `scores`, and take the row nearest each centre; best score first. When k-means
    finds fewer distinct clusters (identical embeddings), the best remaining candidates fill up to `n`."""
    from sklearn.cluster import KMeans

    order = _best_first(scores)
    candidates = order[: min(len(order), DIVERSE_PREFILTER * n)]
    if len(candidates) <= n:
        return candidates
    vectors = np.asarray(embeddings, dtype=np.float64)[candidates]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _EPS)
    weights = np.maximum(scores[candidates], _EPS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer distinct clusters than n_clusters": filled up below
        kmeans = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(vectors, sample_weight=weights)
    distances = np.linalg.norm(vectors - kmeans.cluster_centers_[kmeans.labels_], axis=1)
    picked: list[int] = []
    for cluster in range(n):
        members = np.flatnonzero(kmeans.labels_ == cluster)
        if len(members):
            picked.append(int(members[np.argmin(distances[members])]))  # the first of equals: the better scored
    chosen = set(picked)
    picked += [i for i in range(len(candidates)) if i not in chosen][: n - len(picked)]
    rows = candidates[np.asarray(picked, dtype=np.int64)]
    return rows[_best_first(scores[rows])]


def choose(
    probs: np.ndarray,
    n: int,
    strategy: SelectStrategy,
    *,
    embeddings: np.ndarray | None = None,
    seed: int = 0,
    multi_label: bool = False,
    threshold: float = 0.5,
) -> Choice:
    """Pick `n` of the rows of (m, num_labels) `probs` by `strategy` (all m when m <= n), best first.

    Args:
        probs: The model's probabilities for each candidate.
        n: How many to pick.
        strategy: `entropy`, `margin`, `diverse` (needs `embeddings`, (m, dim)) or `random`.
        embeddings: The candidates' sentence embeddings, for `diverse`.
        seed: Seed of `random`'s draw and of `diverse`'s k-means.
        multi_label: Whether `probs` are independent per-label probabilities.
        threshold: A multi-label model's decision threshold (for `margin` and `diverse`).

    >>> choose(np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]]), 2, "entropy").indices.tolist()
    [1, 2]
    """
    if strategy not in SELECT_STRATEGIES:
        raise AdaptextError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(SELECT_STRATEGIES)}")
    m = len(probs)
    if strategy == "random":
        scores = np.random.default_rng(seed).random(m)
        return Choice(_best_first(scores)[:n], scores)
    if strategy == "entropy":
        scores = entropy_scores(probs, multi_label=multi_label)
        return Choice(_best_first(scores)[:n], scores)
    scores = margin_scores(probs, multi_label=multi_label, threshold=threshold)
    if strategy == "margin":
        return Choice(_best_first(scores)[:n], scores)
    if embeddings is None:
        raise AdaptextError("the diverse strategy needs the texts' embeddings")
    return Choice(diverse_picks(scores, embeddings, n, seed), scores)


@dataclass(frozen=True)
class _Candidates:
    rows: list[int]  # positions in the pool frame
    blank: int
    labelled: int
    duplicates: int


def _is_blank(value: object) -> bool:
    """An empty cell: missing (None, NaN, NA), white space only, or an empty list of labels (JSONL, Parquet)."""
    if isinstance(value, list | tuple | np.ndarray):
        return len(value) == 0
    return value is None or bool(pd.isna(cast(Any, value))) or not str(value).strip()


def find_candidates(path: Path, frame: pd.DataFrame, text_columns: list[str], label_column: str) -> _Candidates:
    """The pool rows that may be picked: text present, label column empty (or absent), text not seen before."""
    blank_rows: list[int] = []
    labelled = 0
    seen: set[tuple[str, ...]] = set()
    texts = [[str(v).strip() if not _is_blank(v) else "" for v in frame[c].tolist()] for c in text_columns]
    labels = frame[label_column].tolist() if label_column in frame.columns else [None] * len(frame)
    for i, label in enumerate(labels):
        if not _is_blank(label) and all(column[i] for column in texts):
            seen.add(tuple(column[i] for column in texts))
    rows: list[int] = []
    duplicates = 0
    for i, label in enumerate(labels):
        key = tuple(column[i] for column in texts)
        if not all(key):
            blank_rows.append(i + 1)
        elif not _is_blank(label):
            labelled += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            rows.append(i)
    if blank_rows:
        shown = ", ".join(str(r) for r in blank_rows[:5]) + (" ..." if len(blank_rows) > 5 else "")
        logger.warning("%s: %d rows with blank text skipped (rows %s)", path, len(blank_rows), shown)
    return _Candidates(rows, len(blank_rows), labelled, duplicates)


def select_pool(
    predictor: Predictor,
    pool: str | Path,
    output: str | Path,
    *,
    n: int,
    strategy: SelectStrategy = DEFAULT_STRATEGY,
    seed: int = 0,
    text_column: str | None = None,
    overwrite: bool = False,
) -> Selection:
    """Score the usable rows of `pool` with `predictor`, pick `n` by `strategy` and write them to `output`.

    Args:
        predictor: A classifier (single- or multi-label; a pair model reads its pair column too).
        pool: A CSV/TSV/JSONL/Parquet file of texts; a label column (the model's) may hold some labels already.
        output: The file to write (`.csv`, `.tsv`, `.jsonl`, `.parquet`); an existing one only with `overwrite`.
        n: Rows to pick; when fewer rows are usable, all of them are written and a warning logged.
        strategy: `entropy`, `margin`, `diverse` or `random` (see the module's description).
        seed: Seed of `random` and `diverse`; the same pool, model and seed always give the same rows.
        text_column: The pool's text column (default: the model's, as saved in training).
        overwrite: Replace an existing `output`.

    >>> select_pool(Predictor.from_dir("runs/tickets"), "pool.csv", "to_label.csv", n=50)  # doctest: +SKIP
    """
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    if strategy not in SELECT_STRATEGIES:
        raise AdaptextError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(SELECT_STRATEGIES)}")
    predictor.require_classifier("select")
    pool = expand(pool)
    target = check_output_file(output, overwrite=overwrite, inputs=[pool])
    if target.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{output}: unsupported output format; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    if strategy == "diverse" and predictor.feature_layer() is None:
        raise AdaptextError(
            "the diverse strategy reads the model's embeddings, which this kind of model does not give; "
            "use --strategy margin or entropy"
        )
    info = predictor.info
    columns = [text_column or info.text_column, *([info.text_pair_column] if info.text_pair_column else [])]
    frame = read_table(pool)
    require_columns(pool, frame, columns)
    label_column = info.label_column
    if label_column in columns:
        raise DataError(f"{pool}: column {label_column!r} is both the text and the label column")
    found = find_candidates(pool, frame, columns, label_column)
    if not found.rows:
        raise DataError(
            f"{pool}: no row to select from ({len(frame)} rows: {found.blank} blank, {found.labelled} already "
            f"labelled in column {label_column!r}, {found.duplicates} repeated texts)"
        )
    if n > len(found.rows):
        logger.warning("%s: only %d usable rows, fewer than the %d asked for: all of them are written", pool,
                       len(found.rows), n)  # fmt: skip
    texts = [str(frame[columns[0]].iat[i]) for i in found.rows]
    pairs = [str(frame[columns[1]].iat[i]) for i in found.rows] if len(columns) > 1 else None
    logger.info("scoring %d of %d pool rows to pick %d by %s", len(texts), len(frame), min(n, len(texts)), strategy)
    if strategy == "diverse":
        _, probs, embeddings = predictor.predict_with_features(texts, pairs, progress=True)
    else:
        probs, embeddings = predictor.predict_proba(texts, pairs, progress=True), None
    choice = choose(
        probs, n, strategy, embeddings=embeddings, seed=seed, multi_label=predictor.multi_label,
        threshold=predictor.threshold,
    )  # fmt: skip
    write_table(_picked_frame(predictor, frame, found.rows, probs, choice, label_column), target)
    return Selection(target, strategy, len(choice.indices), n, len(frame), len(found.rows), found.blank,
                     found.labelled, found.duplicates)  # fmt: skip


def _picked_frame(
    predictor: Predictor, frame: pd.DataFrame, rows: list[int], probs: np.ndarray, choice: Choice, label_column: str
) -> pd.DataFrame:
    """The picked pool rows, best first: their columns, the model's guess and score, the selection score and rank,
    and the empty label column."""
    picked_probs = probs[choice.indices]
    decided = predictor.decide(picked_probs)
    delimiter = predictor.info.label_delimiter
    out = frame.iloc[[rows[i] for i in choice.indices]].reset_index(drop=True)
    replaced = [c for c in ADDED_COLUMNS if c in out.columns]
    if replaced:
        logger.info("pool columns %s replaced by this selection's", ", ".join(replaced))
        out = out.drop(columns=replaced)
    out["predicted_label"] = [delimiter.join(p.labels) if predictor.multi_label else p.label for p in decided]
    out["score"] = [round(float(p.score), 6) for p in decided]
    out["selection_score"] = [round(float(s), 6) for s in choice.scores[choice.indices]]
    out["selection_rank"] = np.arange(1, len(out) + 1)
    out[label_column] = ""
    return out
