"""Text-pair scoring for ranking: regression training, refusals, `adaptext rank`, evaluate with a group column."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import FILLER, KEYWORDS, LABELS

from adaptext.apps.rank import rank_items
from adaptext.cli import main
from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train

# The graded relevance of an item to a query: 2 when the item's keywords are the query's topic, 1 for billing
# against shipping (related), 0 otherwise.
GRADE = {("billing", "billing"): 2.0, ("shipping", "shipping"): 2.0, ("technical", "technical"): 2.0,
         ("billing", "shipping"): 1.0}  # fmt: skip


def pair_rows(n: int, seed: int, graded: bool) -> list[dict[str, object]]:
    """(query, item, target, query_id) rows: the query names its topic by a keyword, the item by two."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        topic, other = rng.choice(LABELS), rng.choice(LABELS)
        query = " ".join([*rng.sample(FILLER, 2), rng.choice(KEYWORDS[topic])])
        item = " ".join([*rng.sample(FILLER, 3), *rng.sample(KEYWORDS[other], 2)])
        grade = GRADE.get((topic, other), 0.0)
        target: object = grade if graded else int(grade == 2.0)
        rows.append({"query": query, "item": item, "target": target, "qid": f"q{i // 6}"})
    return rows


@pytest.fixture
def pair_config(tiny_config: Callable[..., object], write_csv: Callable[..., Path]) -> Callable[..., object]:
    def make(graded: bool, *overrides: str) -> object:
        files = {name: write_csv(f"{name}.csv", pair_rows(n, seed, graded))
                 for name, n, seed in (("train", 240, 1), ("validation", 60, 2), ("test", 60, 3))}  # fmt: skip
        return tiny_config(
            f"data.train={files['train']}", f"data.validation={files['validation']}", f"data.test={files['test']}",
            "data.text_column=query", "data.text_pair_column=item", "data.label_column=target",
            "train.epochs=3", *(["data.problem=regression"] if graded else []), *overrides,
        )  # fmt: skip

    return make


def test_regression_trains_saves_and_reloads(pair_config: Callable[..., object], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = pair_config(True)
    assert config.train.metric_for_best == "mse"  # type: ignore[attr-defined]
    result = train(config)  # type: ignore[arg-type]
    assert {"mse", "rmse", "mae", "pearson", "spearman"} <= set(result.metrics)
    saved = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert saved["mse"] == pytest.approx(result.metrics["mse"])
    assert not (result.run_dir / "per_class.csv").exists() and not (result.run_dir / "confusion_matrix.png").exists()

    test = pd.read_csv(tmp_path / "test.csv")
    first, second = Predictor.from_dir(result.run_dir), Predictor.from_dir(result.run_dir)
    values = first.predict_proba(list(test["query"]), list(test["item"]))
    assert values.shape == (len(test), 1)
    # The run's metrics are those of the saved model's values on the test file.
    from scipy.stats import pearsonr, spearmanr

    target = test["target"].to_numpy(dtype=float)
    assert result.metrics["mse"] == pytest.approx(float(((values[:, 0] - target) ** 2).mean()), rel=1e-4)
    assert result.metrics["pearson"] == pytest.approx(pearsonr(values[:, 0], target).statistic, abs=1e-4)
    assert result.metrics["spearman"] == pytest.approx(spearmanr(values[:, 0], target).statistic, abs=1e-4)
    np.testing.assert_array_equal(values, second.predict_proba(list(test["query"]), list(test["item"])))
    prediction = first.predict(list(test["query"][:1]), list(test["item"][:1]))[0]
    assert prediction.score == pytest.approx(float(values[0, 0])) and prediction.labels == []

    # A plain transformers model: one output, problem_type regression, the same values.
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    import torch

    with torch.no_grad():
        batch = tokenizer(list(test["query"][:4]), list(test["item"][:4]), padding=True, return_tensors="pt")
        logits = model(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(logits, values[:4, 0], atol=1e-5)

    # `adaptext predict` writes the value as `score`, and nothing as a label.
    out = tmp_path / "pred.csv"
    args = ["--input", str(tmp_path / "test.csv"), "--output", str(out)]
    assert main(["-q", "predict", str(result.run_dir), *args]) == 0
    written = pd.read_csv(out)
    assert "label" not in written.columns
    np.testing.assert_allclose(written["score"], values[:, 0], atol=1e-5)

    # evaluate with a group column: ranking metrics from the graded targets, and the regression metrics.
    report = tmp_path / "eval"
    args = ["--data", str(tmp_path / "test.csv"), "--output", str(report), "--group-column", "qid", "--recall-k", "3"]
    assert main(["-q", "evaluate", str(result.run_dir), *args]) == 0
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert {"ndcg@10", "mrr", "recall@3", "mse", "spearman"} <= set(metrics)
    per_group = pd.read_csv(report / "ranking.csv")
    assert len(per_group) == test["qid"].nunique()

    # What works on labels refuses the model with a one-line error (exit code 2), writing nothing.
    from adaptext.deploy.serve import create_app

    with pytest.raises(AdaptextError, match=r"serve .* predicts a value"):
        create_app({"m": first})
    data = ["--data", str(tmp_path / "test.csv")]
    for argv in (["robustness", str(result.run_dir), *data], ["ensemble", str(result.run_dir), str(result.run_dir)]):
        assert main(["-q", *argv, "--output", str(tmp_path / "refused")]) == 2
        assert not (tmp_path / "refused").exists()


def test_non_numeric_target_names_file_row_and_column(
    pair_config: Callable[..., object], write_csv: Callable[..., Path]
) -> None:
    rows = pair_rows(20, 4, graded=True)
    rows[6]["target"] = "high"
    bad = write_csv("bad.csv", rows)
    with pytest.raises(DataError, match=r"bad\.csv: row 7: column 'target': expected a number"):
        train(pair_config(True, f"data.train={bad}"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=fewshot"], "strategy fewshot trains classifiers"),
        (["strategy=zeroshot"], "strategy zeroshot trains classifiers"),
        (["strategy=prompt"], "strategy prompt trains classifiers"),
        (["train.class_weights=auto"], "class_weights"),
        (["robust.label_smoothing=0.1"], "robust.label_smoothing"),
    ],
)
def test_what_cannot_do_regression_refuses_it(
    pair_config: Callable[..., object], overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(pair_config(True, *overrides))  # type: ignore[arg-type]


def test_regression_config_refuses_multi_label_and_ood() -> None:
    with pytest.raises(ConfigError, match="multi_label"):
        load_config(None, ["data.problem=regression", "data.multi_label=true"])
    with pytest.raises(ConfigError, match=r"ood\.method"):
        load_config(None, ["data.problem=regression", "ood.method=msp"])


def test_rank_writes_top_k_per_query_in_score_order(
    pair_config: Callable[..., object], tmp_path: Path, write_csv: Callable[..., Path]
) -> None:
    result = train(pair_config(False))  # type: ignore[arg-type]
    predictor = Predictor.from_dir(result.run_dir)
    assert predictor.labels == ["0", "1"]
    queries = write_csv("queries.csv", [{"qid": f"u{i}", "q": f"my {KEYWORDS[name][i]} again"}
                                        for i, name in enumerate(LABELS)])  # fmt: skip
    items = write_csv("items.csv", [{"item_id": f"it{i}", "text": " ".join(["the", *KEYWORDS[name][i : i + 2]])}
                                    for i, name in enumerate(LABELS * 3)])  # fmt: skip
    out = tmp_path / "top.csv"
    args = ["--queries", str(queries), "--items", str(items), "--top", "4", "--output", str(out)]
    columns = ["--query-id-column", "qid", "--query-text-column", "q"]
    assert main(["-q", "rank", str(result.run_dir), *args, *columns]) == 0
    top = pd.read_csv(out)
    assert list(top.columns) == ["query_id", "item_id", "score", "rank"]
    assert top.groupby("query_id").size().to_dict() == {"u0": 4, "u1": 4, "u2": 4}
    for qid, group in top.groupby("query_id"):
        assert list(group["rank"]) == [1, 2, 3, 4]
        assert list(group["score"]) == sorted(group["score"], reverse=True)
        # The written scores are the model's probability of label 1 for that pair.
        query = {"u0": "my invoice again", "u1": "my delivery again", "u2": "my login again"}[str(qid)]
        texts = pd.read_csv(items).set_index("item_id")["text"]
        every = pd.Series(predictor.predict_proba([query] * len(texts), list(texts))[:, 1], index=texts.index)
        np.testing.assert_allclose(group["score"], every[group["item_id"]], atol=1e-5)
        assert group["score"].iloc[-1] >= every.drop(group["item_id"]).max() - 1e-6  # no better item left out

    before = out.read_bytes()
    assert main(["-q", "rank", str(result.run_dir), *args, *columns]) == 2  # exists: refused, file kept
    assert out.read_bytes() == before
    with pytest.raises(AdaptextError, match="already exists"):
        rank_items(predictor, queries, items, out, top=4)
    assert main(["-q", "rank", str(result.run_dir), *args, *columns, "--overwrite", "--top", "20"]) == 0
    assert len(pd.read_csv(out)) == 3 * 9  # fewer items than --top: every item, once

    # evaluate with a group column on the binary model: MRR etc. from the 0/1 targets.
    report = tmp_path / "eval"
    args = ["--data", str(tmp_path / "test.csv"), "--output", str(report), "--group-column", "qid"]
    assert main(["-q", "evaluate", str(result.run_dir), *args]) == 0
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert 0 <= metrics["ndcg@10"] <= 1 and "accuracy" in metrics and "recall@10" in metrics
