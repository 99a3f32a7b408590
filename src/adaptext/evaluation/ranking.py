"""Ranking metrics: NDCG@k, MRR and recall@k of scored (query, item) pairs, per query and averaged.

Each group (one query's candidate items) is ranked by score, highest first; equal scores keep the order of the
rows in the file. An item is relevant when its relevance (the target: 0/1 or a graded value) is above 0.

- NDCG@k: DCG@k / ideal DCG@k, with gain `2**relevance - 1` and discount `1 / log2(rank + 1)` (Burges et al.; for
  0/1 targets the gain is the target itself).
- MRR: 1 / the rank of the first relevant item.
- recall@k: the share of the group's relevant items that are in the top k.

Groups without any relevant item have no defined value and are left out of the averages (`groups_without_relevant`
counts them).

>>> metrics = ranking_metrics(np.array([0.9, 0.8, 0.1]), np.array([0.0, 1.0, 1.0]), ["q", "q", "q"], k=2)
>>> round(metrics["mrr"], 3), round(metrics["recall@2"], 3)
(0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adaptext.core.errors import DataError

NDCG_K = 10


def ranked_relevance(scores: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """`relevance` reordered by `scores`, highest score first (stable: ties keep their order)."""
    return np.asarray(relevance, dtype=np.float64)[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]


def dcg(gains_in_order: np.ndarray, k: int) -> float:
    """Discounted cumulative gain of the first `k` relevance values in ranked order (gain 2**rel - 1)."""
    top = gains_in_order[:k]
    return float(((2.0**top - 1.0) / np.log2(np.arange(2, len(top) + 2))).sum())


def ndcg_at(scores: np.ndarray, relevance: np.ndarray, k: int = NDCG_K) -> float:
    """NDCG@k of one group; NaN when no item is relevant."""
    ideal = dcg(np.sort(np.asarray(relevance, dtype=np.float64))[::-1], k)
    if ideal <= 0:
        return float("nan")
    return dcg(ranked_relevance(scores, relevance), k) / ideal


def reciprocal_rank(scores: np.ndarray, relevance: np.ndarray) -> float:
    """1 / the rank of the first relevant item of one group; NaN when none is relevant."""
    hits = np.flatnonzero(ranked_relevance(scores, relevance) > 0)
    return float(1.0 / (hits[0] + 1)) if len(hits) else float("nan")


def recall_at(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """Share of one group's relevant items ranked in the top k; NaN when none is relevant."""
    relevant = ranked_relevance(scores, relevance) > 0
    total = int(relevant.sum())
    return float(relevant[:k].sum() / total) if total else float("nan")


def group_indices(groups: Sequence[Any]) -> dict[str, list[int]]:
    """Row indices of each group, groups in order of first appearance (group values compared as text)."""
    found: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        found.setdefault(str(group), []).append(i)
    return found


def per_group_metrics(
    scores: np.ndarray, relevance: np.ndarray, groups: Sequence[Any], *, k: int = 10
) -> list[dict[str, Any]]:
    """One record per group: `group`, `items`, `relevant`, `ndcg@10`, `mrr`, `recall@k` (NaN where undefined)."""
    scores, relevance = np.asarray(scores, dtype=np.float64), np.asarray(relevance, dtype=np.float64)
    if not (len(scores) == len(relevance) == len(groups)):
        raise DataError(f"got {len(scores)} scores, {len(relevance)} targets and {len(groups)} group values")
    if k < 1:
        raise DataError(f"recall@k needs k >= 1, got {k}")
    records = []
    for name, rows in group_indices(groups).items():
        s, r = scores[rows], relevance[rows]
        records.append(
            {
                "group": name,
                "items": len(rows),
                "relevant": int((r > 0).sum()),
                f"ndcg@{NDCG_K}": ndcg_at(s, r, NDCG_K),
                "mrr": reciprocal_rank(s, r),
                f"recall@{k}": recall_at(s, r, k),
            }
        )
    return records


def ranking_metrics(
    scores: np.ndarray, relevance: np.ndarray, groups: Sequence[Any], *, k: int = 10
) -> dict[str, float]:
    """NDCG@10, MRR and recall@k averaged over the groups that have a relevant item, and the group counts.

    Args:
        scores: (n,) the model's score of each (query, item) row.
        relevance: (n,) each row's target: 0/1, or a graded relevance (> 0 is relevant).
        groups: (n,) each row's group (query id).
        k: the cut-off of recall@k (NDCG is always at 10).
    """
    records = per_group_metrics(scores, relevance, groups, k=k)
    scored = [r for r in records if r["relevant"] > 0]
    metrics: dict[str, float] = {}
    for name in (f"ndcg@{NDCG_K}", "mrr", f"recall@{k}"):
        metrics[name] = float(np.mean([r[name] for r in scored])) if scored else float("nan")
    metrics["groups"] = float(len(scored))
    metrics["groups_without_relevant"] = float(len(records) - len(scored))
    return metrics
