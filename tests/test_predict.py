"""Contract tests of `Predictor`: batching, Prediction fields, loading, plain transformers, windows, files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError
from adaptext.core.info import find_model_dir
from adaptext.data.batching import DirectEncoder, tokenize
from adaptext.inference.files import predict_file
from adaptext.inference.predictor import Prediction, Predictor
from adaptext.strategies import train
from adaptext.training.state import TrainResult
from conftest import FILLER, KEYWORDS, LABELS, LEARNABLE, make_rows, write_splits

TEXTS = [
    "invoice",
    "where is my parcel today",
    "login error with the screen again and again why is it not working please help me today",
    "please help with the refund",
    "the courier did not arrive",
    "password",
    "my account is not working and the screen shows an error every time i try to login again",
]


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a model that has learned the keyword task (max_length 32)."""
    folder = tmp_path_factory.mktemp("predict-run")
    files = write_splits(folder, test=0)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={files['train']}",
            f"data.validation={files['validation']}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            *LEARNABLE,
            "train.precision=fp32",
            "seed=7",
            # Averaged window probabilities follow the model's confidence: the tests below read the trained one.
            "calibrate=false",
        ],
    )
    result: TrainResult = train(config)
    assert result.metrics["accuracy"] >= 0.9, "the fixture model did not learn the task"
    return result.run_dir


@pytest.fixture(scope="module")
def predictor(run: Path) -> Predictor:
    return Predictor.from_dir(run)


def test_padded_batch_predicts_like_one_by_one(run: Path) -> None:
    batched = Predictor.from_dir(run, batch_size=64).predict_logits(TEXTS)
    single = Predictor.from_dir(run, batch_size=1)
    one_by_one = np.concatenate([single.predict_logits([text]) for text in TEXTS])
    assert batched.shape == (len(TEXTS), len(LABELS))
    assert torch.allclose(torch.from_numpy(batched), torch.from_numpy(one_by_one), atol=1e-5)
    # A small batch size that splits the texts across batches of different padded widths agrees too.
    assert np.allclose(Predictor.from_dir(run, batch_size=3).predict_logits(TEXTS), one_by_one, atol=1e-5)


def test_padded_batch_of_text_pairs_predicts_like_one_by_one(predictor: Predictor) -> None:
    pairs = [f"{text} and some more words about my order" for text in reversed(TEXTS)]
    batched = predictor.predict_logits(TEXTS, pairs)
    one_by_one = np.concatenate([predictor.predict_logits([t], [p]) for t, p in zip(TEXTS, pairs, strict=True)])
    assert np.allclose(batched, one_by_one, atol=1e-5)


def test_prediction_fields(predictor: Predictor) -> None:
    predictions = predictor.predict(TEXTS)
    probs = predictor.predict_proba(TEXTS)
    assert len(predictions) == len(TEXTS)
    for prediction, row in zip(predictions, probs, strict=True):
        assert isinstance(prediction, Prediction)
        assert list(prediction.scores) == LABELS
        assert all(isinstance(v, float) for v in prediction.scores.values())
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label == max(prediction.scores, key=prediction.scores.__getitem__)
        assert prediction.score == pytest.approx(max(prediction.scores.values()))
        assert prediction.labels == [prediction.label]
        assert [prediction.scores[name] for name in LABELS] == pytest.approx(row.tolist())
    assert [p.label for p in predictions] == [
        "billing",
        "shipping",
        "technical",
        "billing",
        "shipping",
        "technical",
        "technical",
    ]


def test_decide_ranks_ties_by_label_order_for_single_and_multi_label(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptext.core.task import MULTI_LABEL

    probs = np.array([[0.2, 0.4, 0.4], [0.5, 0.2, 0.3], [0.1, 0.1, 0.1]], dtype=np.float32)
    single = predictor.decide(probs)
    assert [p.label for p in single] == [LABELS[1], LABELS[0], LABELS[0]]  # a tie goes to the first label
    assert [p.labels for p in single] == [[LABELS[1]], [LABELS[0]], [LABELS[0]]]
    assert [p.score for p in single] == [float(np.float32(0.4)), 0.5, float(np.float32(0.1))]
    assert single[1].scores == dict(zip(LABELS, probs[1].tolist(), strict=True))
    monkeypatch.setattr(predictor, "task", MULTI_LABEL)
    monkeypatch.setattr(predictor, "threshold", 0.25)
    multi = predictor.decide(probs)
    assert [p.labels for p in multi] == [[LABELS[1], LABELS[2]], [LABELS[0], LABELS[2]], []]  # best first
    assert [p.label for p in multi] == [LABELS[1], LABELS[0], LABELS[0]]


def test_probabilities_are_the_softmax_of_the_logits(predictor: Predictor) -> None:
    logits = torch.from_numpy(predictor.predict_logits(TEXTS))
    probs = torch.from_numpy(predictor.predict_proba(TEXTS))
    assert torch.allclose(probs, torch.softmax(logits, dim=1), atol=1e-6)


def test_empty_input_gives_empty_output(predictor: Predictor) -> None:
    assert predictor.predict([]) == []
    assert predictor.predict_logits([]).shape == (0, len(LABELS))


def test_from_dir_accepts_the_run_folder_and_the_model_folder(run: Path) -> None:
    assert find_model_dir(run) == run / "model"
    assert find_model_dir(run / "model") == run / "model"
    from_run = Predictor.from_dir(run)
    from_model = Predictor.from_dir(run / "model")
    assert from_run.labels == from_model.labels == LABELS
    assert from_run.max_length == from_model.max_length == 32
    np.testing.assert_array_equal(from_run.predict_logits(TEXTS), from_model.predict_logits(TEXTS))


def test_from_dir_rejects_folders_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(AdaptextError, match="no such"):
        Predictor.from_dir(tmp_path / "missing")
    with pytest.raises(AdaptextError, match="not a run folder"):
        Predictor.from_dir(tmp_path)


def test_plain_transformers_pipeline_reads_the_saved_model(run: Path, predictor: Predictor) -> None:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(run / "model"), device="cpu")
    outputs = classifier(TEXTS)
    assert {out["label"] for out in outputs} <= set(LABELS)
    ours = predictor.predict(TEXTS)
    assert [out["label"] for out in outputs] == [p.label for p in ours]
    assert [out["score"] for out in outputs] == pytest.approx([p.score for p in ours], abs=1e-5)

    every = classifier(TEXTS[:1], top_k=None)[0]
    assert {item["label"]: item["score"] for item in every} == pytest.approx(ours[0].scores, abs=1e-5)


def long_text(label: str) -> str:
    """40 filler tokens, then 18 keywords of `label`: past `max_length` (32), only at the end."""
    return " ".join([FILLER[i % len(FILLER)] for i in range(40)] + KEYWORDS[label] * 3)


def test_sliding_window_sees_the_end_of_a_long_text(predictor: Predictor) -> None:
    texts = [long_text(label) for label in LABELS]
    assert all(len(predictor.tokenizer(t)["input_ids"]) > predictor.max_length + 16 for t in texts)
    truncated = predictor.predict_proba(texts)
    # Truncation keeps the same 30 filler tokens of every text: it cannot tell them apart.
    assert np.allclose(truncated, truncated[0], atol=1e-6)
    for aggregate in ("mean", "max"):
        windowed = predictor.predict_proba(texts, sliding_window=True, stride=8, aggregate=aggregate)
        assert windowed.shape == (len(texts), len(LABELS))
        assert not np.allclose(windowed, truncated, atol=1e-3)
        assert windowed.argmax(axis=1).tolist() == [0, 1, 2], aggregate  # the label of the end keywords
    mean = predictor.predict_proba(texts, sliding_window=True, stride=8)
    assert mean.sum(axis=1) == pytest.approx([1.0] * len(texts), abs=1e-5)  # a mean of distributions
    labels = [p.label for p in predictor.predict(texts, sliding_window=True, stride=8)]
    assert labels == LABELS


def test_sliding_window_equals_plain_prediction_for_short_texts(predictor: Predictor) -> None:
    short = [t for t in TEXTS if len(predictor.tokenizer(t)["input_ids"]) <= predictor.max_length]
    assert len(short) >= 5
    for aggregate in ("mean", "max"):
        windowed = predictor.predict_proba(short, sliding_window=True, stride=8, aggregate=aggregate)
        assert np.allclose(windowed, predictor.predict_proba(short), atol=1e-6)


def test_sliding_window_works_with_the_default_stride(predictor: Predictor) -> None:
    assert predictor.max_length == 32
    windowed = predictor.predict_proba([long_text("billing")], sliding_window=True)
    assert windowed.shape == (1, len(LABELS))


def test_sliding_window_keeps_input_order_with_mixed_lengths(predictor: Predictor) -> None:
    texts = ["invoice", long_text("shipping"), "login error"]
    together = predictor.predict_proba(texts, sliding_window=True, stride=8)
    apart = np.concatenate([predictor.predict_proba([t], sliding_window=True, stride=8) for t in texts])
    assert np.allclose(together, apart, atol=1e-5)


def input_rows() -> list[dict[str, Any]]:
    rows = make_rows(9, seed=21)
    return [{"id": 100 - i, "text": row["text"], "note": f"n{i}"} for i, row in enumerate(rows)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_file_keeps_columns_and_order(
    predictor: Predictor, write_csv: Any, tmp_path: Path, suffix: str
) -> None:
    rows = input_rows()
    rows[2]["text"] = long_text("technical")  # a long row, so the length-sorted batches differ from file order
    source = write_csv("input.csv", rows)
    target = tmp_path / "out" / f"predictions{suffix}"
    assert predict_file(predictor, source, target) == len(rows)

    out = pd.read_csv(target) if suffix == ".csv" else pd.read_json(target, lines=True)
    assert list(out.columns) == ["id", "text", "note", "label", "score"]
    assert out["id"].tolist() == [row["id"] for row in rows]
    assert out["note"].tolist() == [row["note"] for row in rows]
    expected = predictor.predict([row["text"] for row in rows])
    assert out["label"].tolist() == [p.label for p in expected]
    assert out["score"].tolist() == pytest.approx([p.score for p in expected], abs=1e-6)


def test_predict_file_replaces_an_existing_label_column(predictor: Predictor, write_csv: Any, tmp_path: Path) -> None:
    rows = [{"text": r["text"], "label": "gold"} for r in make_rows(4, seed=5)]
    target = tmp_path / "out.jsonl"
    predict_file(predictor, write_csv("labelled.csv", rows), target)
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["label"] for r in records] == [p.label for p in predictor.predict([r["text"] for r in rows])]


def test_predict_file_rejects_an_unknown_output_format(predictor: Predictor, write_csv: Any, tmp_path: Path) -> None:
    source = write_csv("input.csv", input_rows())
    with pytest.raises(AdaptextError, match=r"\.csv, \.tsv, \.jsonl or \.parquet"):
        predict_file(predictor, source, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize(
    ("texts", "pairs", "options", "message"),
    [
        ("my invoice is wrong", None, {}, "not one string"),
        (["invoice", "parcel"], ["only one pair"], {}, "2 texts but 1 text pairs"),
        (["invoice", None], None, {}, "text 1 is a NoneType"),
        (["invoice", 3], None, {}, "text 1 is a int"),
        (["invoice"], ["pair"], {"sliding_window": True}, "not text pairs"),
        (["invoice"], None, {"sliding_window": True, "stride": 16}, "stride"),
        (["invoice"], None, {"sliding_window": True, "stride": -1}, "stride"),
    ],
)
def test_bad_inputs_raise_adaptext_error(
    predictor: Predictor, texts: Any, pairs: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(AdaptextError, match=message):
        predictor.predict(texts, pairs, **options)


def test_bad_inputs_to_logits_raise_adaptext_error(predictor: Predictor) -> None:
    with pytest.raises(AdaptextError):
        predictor.predict_logits("one string")  # type: ignore[arg-type]
    with pytest.raises(AdaptextError):
        predictor.predict_logits(["a", "b"], ["x", "y", "z"])


def test_direct_encoder_gives_the_tokenizers_ids(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [*TEXTS, "", "数据 这个酒店", "[CLS] refund [SEP] [MASK]", " ".join(FILLER * 5)]
    pairs = texts[1:] + texts[:1]
    for max_length in (8, 128):
        encoder = DirectEncoder.for_tokenizer(tokenizer, max_length)
        assert encoder is not None
        assert encoder(texts, None) == tokenize(tokenizer, texts, None, max_length)
        assert encoder(texts, pairs) == tokenize(tokenizer, texts, pairs, max_length)


def test_direct_encoder_is_refused_where_it_would_differ(tiny_model_dir: Path) -> None:
    from transformers import BertTokenizerFast, CanineTokenizer

    class Rewording(BertTokenizerFast):  # a tokenizer whose call changes the text before its encoder sees it
        def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
            return super().__call__([t.upper()[::-1] for t in text], *args, **kwargs)

    assert DirectEncoder.for_tokenizer(Rewording.from_pretrained(tiny_model_dir), 32) is None
    python_only = CanineTokenizer()  # a tokenizer written in Python: no Rust encoder to call
    assert DirectEncoder.for_tokenizer(python_only, 32) is None


def test_predictor_tokenizes_directly_and_follows_max_length(predictor: Predictor) -> None:
    first = predictor.direct_encoder()
    assert first is not None
    expected = predictor.predict_logits(TEXTS)
    saved = predictor.max_length
    try:
        predictor.max_length = 4
        short = predictor.direct_encoder()
        assert short is not first
        assert all(len(ids) <= 4 for ids in predictor._features(TEXTS, None)["input_ids"])
    finally:
        predictor.max_length = saved
    np.testing.assert_allclose(predictor.predict_logits(TEXTS), expected, rtol=1e-5, atol=1e-6)


def test_predictor_checks_a_replaced_tokenizer_again(predictor: Predictor) -> None:
    first = predictor.direct_encoder()
    saved = predictor.tokenizer
    try:
        predictor.tokenizer = copy.deepcopy(saved)
        again = predictor.direct_encoder()
        assert again is not None and again is not first
        assert predictor.direct_encoder() is again  # kept while the tokenizer and max_length stay
    finally:
        predictor.tokenizer = saved
