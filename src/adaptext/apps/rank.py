"""Ranking for recommendation: every (query, item) pair scored by a pair model, the top K items kept per query.

The queries file and the items file each hold an id column and a text column (`RankColumns`). Each query is paired
with every item (the query as the first text, the item as the second, as in training with `data.text_pair_column`),
the pairs are scored in batches (`adaptext.inference.scoring`), and the K best items per query are written as rows
`query_id, item_id, score, rank` (rank 1 is the best; equal scores keep the items' file order).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adaptext.core.console import progress_bar
from adaptext.core.errors import DataError
from adaptext.core.outputs import check_output_file, expand
from adaptext.data.io import SUPPORTED_SUFFIXES, read_table, require_columns, text_values, write_table
from adaptext.inference.predictor import Predictor
from adaptext.inference.scoring import pair_scoring

logger = logging.getLogger(__name__)

# Queries scored per call to the model: each brings all items, so memory is (queries per chunk x items) scores.
QUERIES_PER_CHUNK = 16


@dataclass(frozen=True)
class RankColumns:
    """The id and text columns of the queries file and of the items file."""

    query_id: str = "query_id"
    query_text: str = "text"
    item_id: str = "item_id"
    item_text: str = "text"


@dataclass(frozen=True)
class Ranking:
    """What `rank_items` wrote: `rows` rows (`top` per query, fewer when there are fewer items) into `output`."""

    output: Path
    queries: int
    items: int
    rows: int
    top: int
    scored_by: str


def _read_side(path: Path, id_column: str, text_column: str, what: str) -> tuple[list[str], list[str]]:
    frame = read_table(path)
    require_columns(path, frame, [id_column, text_column])
    ids = [str(value) for value in frame[id_column].tolist()]
    seen: dict[str, int] = {}
    for row, key in enumerate(ids, start=1):
        if not key.strip():
            raise DataError(f"{path}: row {row}: column {id_column!r} is empty; every {what} needs an id")
        if key in seen:
            raise DataError(f"{path}: row {row}: {what} id {key!r} already appears in row {seen[key]}")
        seen[key] = row
    return ids, text_values(path, frame, text_column)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores of each row of (queries, items) `scores`, best first (ties: lower index
    first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def rank_items(
    predictor: Predictor,
    queries: str | Path,
    items: str | Path,
    output: str | Path,
    *,
    top: int = 10,
    columns: RankColumns | None = None,
    positive: str | None = None,
    overwrite: bool = False,
) -> Ranking:
    """Score every (query, item) pair with `predictor` and write the `top` items of each query to `output`.

    Args:
        predictor: A pair model (binary, graded or regression; see `adaptext.inference.scoring`).
        queries: A CSV/TSV/JSONL/Parquet file with the query id and text columns.
        items: A file with the item id and text columns.
        output: The file to write (`.csv`, `.tsv`, `.jsonl`, `.parquet`); an existing one only with `overwrite`.
        top: Items kept per query.
        columns: The id and text column names (default `query_id`/`text` and `item_id`/`text`).
        positive: The label whose probability is the score (default: see `pair_scoring`).
        overwrite: Replace an existing `output`.

    >>> rank_items(Predictor.from_dir("runs/clicks"), "queries.csv", "items.csv", "top.csv", top=5)  # doctest: +SKIP
    """
    columns = columns or RankColumns()
    if top < 1:
        raise DataError(f"--top must be at least 1, got {top}")
    queries, items = expand(queries), expand(items)
    target = check_output_file(output, overwrite=overwrite, inputs=[queries, items])
    if target.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{output}: unsupported output format; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    scoring = pair_scoring(predictor, positive)  # a model that cannot score pairs fails before any file is read
    query_ids, query_texts = _read_side(queries, columns.query_id, columns.query_text, "query")
    item_ids, item_texts = _read_side(items, columns.item_id, columns.item_text, "item")
    k = min(top, len(item_ids))
    logger.info(
        "ranking %d items for %d queries (%d pairs) by %s",
        len(item_ids),
        len(query_ids),
        len(item_ids) * len(query_ids),
        scoring.describe(),
    )
    rows: list[dict[str, object]] = []
    chunks = range(0, len(query_ids), QUERIES_PER_CHUNK)
    with progress_bar(total=len(query_ids) * len(item_ids), desc="rank", unit="pair") as bar:
        for start in chunks:
            chunk = range(start, min(start + QUERIES_PER_CHUNK, len(query_ids)))
            texts = [query_texts[q] for q in chunk for _ in item_texts]
            pairs = item_texts * len(chunk)
            outputs = predictor.predict_proba(texts, pairs)
            scores = scoring.apply(outputs, predictor.labels).reshape(len(chunk), len(item_texts))
            for q, best in zip(chunk, top_k(scores, k), strict=True):
                row_scores = scores[q - start]
                rows += [
                    {"query_id": query_ids[q], "item_id": item_ids[i], "score": float(row_scores[i]), "rank": r}
                    for r, i in enumerate(best.tolist(), start=1)
                ]
            bar.update(len(texts))
    write_table(pd.DataFrame(rows, columns=["query_id", "item_id", "score", "rank"]), target)
    return Ranking(target, len(query_ids), len(item_ids), len(rows), k, scoring.describe())
