"""Active learning (`adaptext select`): the scores against hand computations, the strategies' picks, the pool rules
(blank, labelled and repeated texts), determinism, the output file and the refusals."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_rows, train_keyword_run

from adaptext.apps.select import (
    ADDED_COLUMNS,
    DEFAULT_STRATEGY,
    SELECT_STRATEGIES,
    choose,
    entropy_scores,
    margin_scores,
    select_pool,
)
from adaptext.cli import main
from adaptext.core.errors import AdaptextError, DataError
from adaptext.inference.predictor import Predictor


@pytest.fixture(scope="module")
def keyword_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained for 1 epoch on the keyword task: still unsure of many texts, as a model to improve is."""
    return train_keyword_run(tmp_path_factory.mktemp("select-run"), tiny_model_dir, "train.epochs=1")


@pytest.fixture(scope="module")
def predictor(keyword_run: Path) -> Predictor:
    return Predictor.from_dir(keyword_run)


def write_pool(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def pool_rows(n: int, seed: int = 11) -> list[dict[str, object]]:
    """`n` unlabelled keyword-task texts with an id column and an empty label column."""
    return [{"id": f"p{i}", "text": row["text"], "label": ""} for i, row in enumerate(make_rows(n, seed=seed))]


# ------------------------------------------------------------------------------------------------- the scores


def test_entropy_matches_a_hand_computation() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    expected = [math.log(2), -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)), 0.0]
    np.testing.assert_allclose(entropy_scores(probs), expected, atol=1e-9)
    # Multi-label: the mean over labels of each label's binary entropy.
    multi = np.array([[0.5, 0.9], [0.1, 0.1]])
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    np.testing.assert_allclose(entropy_scores(multi, multi_label=True), [(h(0.5) + h(0.9)) / 2, h(0.1)], atol=1e-9)


def test_margin_matches_a_hand_computation() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(margin_scores(probs), [1 - 0.2, 1 - 0.0, 1 - 0.85], atol=1e-9)
    # Multi-label: 1 - the distance of the label nearest its threshold.
    multi = np.array([[0.9, 0.35], [0.05, 0.99]])
    np.testing.assert_allclose(margin_scores(multi, multi_label=True, threshold=0.4), [0.95, 0.65], atol=1e-9)


def test_entropy_and_margin_pick_the_most_uncertain_first_ties_in_pool_order() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.99, 0.01], [0.4, 0.6]])
    assert choose(probs, 3, "entropy").indices.tolist() == [2, 1, 4]
    assert choose(probs, 3, "margin").indices.tolist() == [2, 1, 4]
    # Margin and entropy disagree on three labels: a two-way tie against a flat spread.
    three = np.array([[0.45, 0.45, 0.10], [0.40, 0.30, 0.30]])
    assert choose(three, 1, "entropy").indices.tolist() == [1]
    assert choose(three, 1, "margin").indices.tolist() == [0]


def test_random_is_deterministic_for_a_seed_and_never_repeats() -> None:
    probs = np.full((40, 3), 1 / 3)
    first = choose(probs, 15, "random", seed=3).indices
    assert first.tolist() == choose(probs, 15, "random", seed=3).indices.tolist()
    assert first.tolist() != choose(probs, 15, "random", seed=4).indices.tolist()
    assert len(set(first.tolist())) == 15
    assert sorted(choose(probs, 100, "random", seed=3).indices.tolist()) == list(range(40))  # n > m: all, once


def test_diverse_avoids_the_near_duplicate_that_entropy_takes() -> None:
    # Rows 0 and 1: the two most uncertain, nearly the same embedding. Rows 2-5: a little less uncertain, elsewhere.
    probs = np.array([[0.5, 0.5], [0.51, 0.49], [0.6, 0.4], [0.65, 0.35], [0.7, 0.3], [0.75, 0.25]])
    embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0], [0.0, 0.9], [0.1, 0.8]])
    assert choose(probs, 2, "entropy").indices.tolist() == [0, 1]
    diverse = choose(probs, 2, "diverse", embeddings=embeddings, seed=0)
    picked = diverse.indices.tolist()
    assert picked[0] in (0, 1) and picked[1] in (2, 3, 4, 5)
    assert picked == choose(probs, 2, "diverse", embeddings=embeddings, seed=0).indices.tolist()
    # Identical embeddings give fewer clusters than asked: the best remaining candidates fill up, none twice.
    same = choose(probs, 4, "diverse", embeddings=np.ones((6, 2)), seed=0).indices.tolist()
    assert len(same) == len(set(same)) == 4
    with pytest.raises(AdaptextError, match="embeddings"):
        choose(probs, 2, "diverse")
    with pytest.raises(AdaptextError, match="unknown selection strategy"):
        choose(probs, 2, "least-confident")  # type: ignore[arg-type]


def test_the_cli_lists_the_library_strategies() -> None:
    from adaptext.cli import select as cli_select

    assert cli_select.STRATEGIES == SELECT_STRATEGIES
    assert cli_select.DEFAULT_STRATEGY == DEFAULT_STRATEGY


# ------------------------------------------------------------------------------------------------ the pool file


def test_output_columns_order_and_scores(predictor: Predictor, tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.csv", pool_rows(30))
    out = tmp_path / "to_label.csv"
    selection = select_pool(predictor, pool, out, n=8, strategy="entropy")
    assert (selection.picked, selection.candidates, selection.pool_rows) == (8, 30, 30)
    picked = pd.read_csv(out, keep_default_na=False)
    assert list(picked.columns) == ["id", "text", "label", *ADDED_COLUMNS]
    assert (picked["label"] == "").all()
    assert picked["selection_rank"].tolist() == list(range(1, 9))
    # The selection score is the entropy of the model's probabilities, best first, and the 8 most uncertain rows.
    texts = pd.read_csv(pool)["text"].tolist()
    probs = predictor.predict_proba(texts)
    entropy = entropy_scores(probs)
    expected = np.argsort(-entropy, kind="stable")[:8]
    assert picked["id"].tolist() == [f"p{i}" for i in expected]
    np.testing.assert_allclose(picked["selection_score"], entropy[expected], atol=1e-5)
    assert picked["predicted_label"].tolist() == [predictor.labels[int(probs[i].argmax())] for i in expected]
    np.testing.assert_allclose(picked["score"], probs[expected].max(axis=1), atol=1e-5)


def test_a_pool_without_label_column_gets_the_runs_label_column(predictor: Predictor, tmp_path: Path) -> None:
    rows = [{"body": r["text"], "source": "mail"} for r in pool_rows(10)]
    pool = write_pool(tmp_path / "pool.csv", rows)
    out = tmp_path / "to_label.jsonl"
    select_pool(predictor, pool, out, n=3, strategy="margin", text_column="body")
    picked = pd.read_json(out, lines=True)
    assert list(picked.columns) == ["body", "source", *ADDED_COLUMNS, "label"]
    assert len(picked) == 3


def test_deterministic_for_a_seed(predictor: Predictor, tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.csv", pool_rows(40))
    for strategy in SELECT_STRATEGIES:
        a, b = tmp_path / f"{strategy}-a.csv", tmp_path / f"{strategy}-b.csv"
        select_pool(predictor, pool, a, n=6, strategy=strategy, seed=5)  # type: ignore[arg-type]
        select_pool(predictor, pool, b, n=6, strategy=strategy, seed=5)  # type: ignore[arg-type]
        assert a.read_bytes() == b.read_bytes(), strategy
    other = tmp_path / "random-seed6.csv"
    select_pool(predictor, pool, other, n=6, strategy="random", seed=6)
    assert pd.read_csv(other)["id"].tolist() != pd.read_csv(tmp_path / "random-a.csv")["id"].tolist()


def test_never_a_row_or_a_text_twice_blank_and_labelled_rows_skipped(
    predictor: Predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = pool_rows(12)
    texts = [r["text"] for r in rows]
    rows += [{"id": f"dup{i}", "text": f"  {texts[i % 4]} ", "label": ""} for i in range(12)]  # repeats of 0-3
    rows += [{"id": "blank", "text": "  ", "label": ""}, {"id": "labelled", "text": "refund why", "label": "billing"}]
    rows += [{"id": "seen", "text": "refund why", "label": ""}]  # the text of a labelled row
    pool = write_pool(tmp_path / "pool.csv", rows)
    for strategy in SELECT_STRATEGIES:
        out = tmp_path / f"{strategy}.csv"
        with caplog.at_level(logging.WARNING, logger="adaptext.apps.select"):
            selection = select_pool(predictor, pool, out, n=20, strategy=strategy)  # type: ignore[arg-type]
        picked = pd.read_csv(out)
        assert (selection.candidates, selection.blank, selection.labelled, selection.duplicates) == (12, 1, 1, 13)
        assert sorted(picked["id"]) == sorted(f"p{i}" for i in range(12)), strategy  # all 12 distinct texts, once
        assert "1 rows with blank text skipped (rows 25)" in caplog.text
        assert "only 12 usable rows, fewer than the 20 asked for" in caplog.text
        caplog.clear()


def test_partial_labels_shrink_the_pool_and_a_previous_selection_can_be_fed_back(
    predictor: Predictor, tmp_path: Path
) -> None:
    pool = write_pool(tmp_path / "pool.csv", pool_rows(20))
    first = tmp_path / "round1.csv"
    select_pool(predictor, pool, first, n=5, strategy="margin")
    # The user labels two of the five and feeds the file back: only the three unlabelled rows remain.
    labelled = pd.read_csv(first, keep_default_na=False)
    labelled.loc[:1, "label"] = "billing"
    labelled.to_csv(first, index=False)
    second = tmp_path / "round2.csv"
    selection = select_pool(predictor, first, second, n=5, strategy="margin")
    again = pd.read_csv(second, keep_default_na=False)
    assert (selection.labelled, selection.picked) == (2, 3)
    assert sorted(again["id"]) == sorted(labelled["id"][2:])
    assert list(again.columns) == list(labelled.columns)  # the added columns replaced, not repeated


def test_refusals_name_the_file_and_the_column(predictor: Predictor, tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.csv", pool_rows(10))
    out = tmp_path / "out.csv"
    out.write_text("kept\n", encoding="utf-8")
    with pytest.raises(AdaptextError, match="already exists; use --overwrite"):
        select_pool(predictor, pool, out, n=3)
    assert out.read_text(encoding="utf-8") == "kept\n"
    with pytest.raises(AdaptextError, match="would overwrite the input file"):
        select_pool(predictor, pool, pool, n=3, overwrite=True)
    with pytest.raises(DataError, match=rf"{pool}: column 'body' not found; the columns are: 'id', 'text', 'label'"):
        select_pool(predictor, pool, tmp_path / "new.csv", n=3, text_column="body")
    with pytest.raises(DataError, match="unsupported output format"):
        select_pool(predictor, pool, tmp_path / "new.xlsx", n=3)
    with pytest.raises(DataError, match="--n must be at least 1"):
        select_pool(predictor, pool, tmp_path / "new.csv", n=0)
    empty = write_pool(tmp_path / "done.csv", [{"text": "refund why", "label": "billing"}, {"text": " ", "label": ""}])
    with pytest.raises(DataError, match=rf"{empty}: no row to select from \(2 rows: 1 blank, 1 already labelled"):
        select_pool(predictor, empty, tmp_path / "new.csv", n=3)
    assert not (tmp_path / "new.csv").exists()


def test_cli_writes_then_refuses_to_overwrite(keyword_run: Path, tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool.csv", pool_rows(15))
    out = tmp_path / "to_label.parquet"
    args = ["-q", "select", str(keyword_run), "--pool", str(pool), "--n", "4", "--output", str(out)]
    assert main([*args, "--strategy", "diverse", "--seed", "2"]) == 0
    picked = pd.read_parquet(out)
    assert len(picked) == 4 and picked["id"].is_unique
    before = out.read_bytes()
    assert main(args) == 2  # exists: refused, file kept
    assert out.read_bytes() == before
    assert main([*args, "--overwrite", "--strategy", "random"]) == 0
    assert main(["-q", "select", str(keyword_run), "--pool", str(tmp_path / "missing.csv"), "--n", "4",
                 "--output", str(tmp_path / "x.csv")]) == 2  # fmt: skip


def test_a_multi_label_run_is_scored_per_label(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = train_keyword_run(tmp_path, tiny_model_dir, "train.epochs=1", "data.multi_label=true")
    predictor = Predictor.from_dir(run)
    assert predictor.multi_label
    pool = write_pool(tmp_path / "pool.csv", pool_rows(12))
    out = tmp_path / "to_label.csv"
    select_pool(predictor, pool, out, n=4, strategy="entropy")
    picked = pd.read_csv(out, keep_default_na=False)
    probs = predictor.predict_proba(pd.read_csv(pool)["text"].tolist())
    mean_binary = entropy_scores(probs, multi_label=True)
    expected = np.argsort(-mean_binary, kind="stable")[:4]
    assert picked["id"].tolist() == [f"p{i}" for i in expected]
    np.testing.assert_allclose(picked["selection_score"], mean_binary[expected], atol=1e-5)
    decided = [
        [predictor.labels[k] for k in np.argsort(-probs[i]) if probs[i, k] >= predictor.threshold] for i in expected
    ]
    assert picked["predicted_label"].tolist() == ["|".join(labels) for labels in decided]


def test_missing_labels_in_jsonl_and_parquet_pools_are_unlabelled(predictor: Predictor, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"text": r["text"], "label": None} for r in pool_rows(6)]
    rows[0]["label"], rows[1]["label"] = "billing", "shipping"
    for suffix in (".jsonl", ".parquet"):
        pool = tmp_path / f"pool{suffix}"
        frame = pd.DataFrame(rows)
        if suffix == ".jsonl":
            frame.to_json(pool, orient="records", lines=True)
        else:
            frame.to_parquet(pool)
        selection = select_pool(predictor, pool, tmp_path / f"out{suffix}.csv", n=10, strategy="margin")
        assert (selection.labelled, selection.candidates, selection.picked) == (2, 4, 4), suffix


def test_diverse_is_refused_for_a_model_without_embeddings(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = write_pool(tmp_path / "pool.csv", pool_rows(10))
    monkeypatch.setattr(predictor, "feature_layer", lambda: None)
    with pytest.raises(AdaptextError, match="use --strategy margin or entropy"):
        select_pool(predictor, pool, tmp_path / "out.csv", n=3, strategy="diverse")
    assert select_pool(predictor, pool, tmp_path / "out.csv", n=3, strategy="margin").picked == 3
