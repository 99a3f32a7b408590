"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adaptext.core.errors import DataError
from adaptext.evaluation.ranking import ndcg_at, per_group_metrics, ranking_metrics, recall_at, reciprocal_rank


def test_ndcg_with_graded_gains_matches_hand_computation() -> None:
    # Ranked order by score: relevance 1, 3, 0, 2. Gains 2**r - 1: 1, 7, 0, 3.
    scores, relevance = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1.0, 3.0, 0.0, 2.0])
    dcg = 1 / math.log2(2) + 7 / math.log2(3) + 0 + 3 / math.log2(5)
    ideal = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)  # 3, 2, 1, 0
    assert ndcg_at(scores, relevance, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at(scores, relevance, 2) == pytest.approx((1 + 7 / math.log2(3)) / (7 + 3 / math.log2(3)))


def test_mrr_and_recall_at_k() -> None:
    scores, relevance = np.array([0.1, 0.9, 0.5, 0.3]), np.array([1.0, 0.0, 0.0, 1.0])
    # Order: rows 1 (0), 2 (0), 3 (1), 0 (1): first relevant at rank 3.
    assert reciprocal_rank(scores, relevance) == pytest.approx(1 / 3)
    assert recall_at(scores, relevance, 2) == 0.0
    assert recall_at(scores, relevance, 3) == pytest.approx(0.5)
    assert recall_at(scores, relevance, 4) == 1.0


def test_ties_keep_file_order_and_groups_without_relevant_are_left_out() -> None:
    scores = np.array([0.5, 0.5, 0.2, 0.9, 0.1])
    relevance = np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    groups = ["a", "a", "a", "b", "b"]
    records = per_group_metrics(scores, relevance, groups, k=1)
    assert [r["group"] for r in records] == ["a", "b"]
    assert records[0]["mrr"] == pytest.approx(0.5)  # the tie puts row 0 first
    assert math.isnan(records[1]["mrr"])
    metrics = ranking_metrics(scores, relevance, groups, k=1)
    assert metrics["mrr"] == pytest.approx(0.5)
    assert metrics["recall@1"] == 0.0
    assert metrics["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert (metrics["groups"], metrics["groups_without_relevant"]) == (1.0, 1.0)


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(DataError, match="2 scores, 1 targets"):
        ranking_metrics(np.array([0.1, 0.2]), np.array([1.0]), ["a", "a"])
