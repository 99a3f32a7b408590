"""Out-of-scope detection and calibration after training: scores against hand computations, the threshold rule,
the saved folder, prediction, `evaluate --ood-label` and `serve`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import pipeline

from adaptext.core.config import Config, OodSection, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.data.io import load_examples
from adaptext.deploy.serve import ServeOptions, create_app
from adaptext.evaluation.calibration import fold_temperature
from adaptext.evaluation.detectors import fit_detector
from adaptext.evaluation.evaluate import evaluate_file
from adaptext.inference.ood import OOD_FILE, class_statistics, mahalanobis_distance, resolve_method
from adaptext.inference.predictor import Predictor
from adaptext.strategies.finetune import Finetune
from adaptext.training.lifecycle import run_strategy
from conftest import FILLER, make_rows, train_keyword_run


def softmax(logits: np.ndarray) -> np.ndarray:
    """By hand, independent of the code under test."""
    return torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1).numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny keyword-task run with a knn detector and calibration (the defaults of both where they have any)."""
    folder = tmp_path_factory.mktemp("ood")
    train_keyword_run(folder, tiny_model_dir, "ood.method=knn", "ood.knn_k=3", "ood.in_scope_recall=0.9", validation=60)
    return folder


def test_the_run_saves_a_detector_and_a_temperature_that_plain_transformers_ignores(trained: Path) -> None:
    model = trained / "run" / "model"
    info = json.loads((model / "adaptext.json").read_text())
    assert info["ood"]["method"] == "knn" and info["ood"]["label"] == "unknown" and info["ood"]["k"] == 3
    assert (model / OOD_FILE).is_file()
    calibration = info["calibration"]
    assert calibration["n"] == 60 and calibration["temperature"] > 0
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9  # the fitted temperature can only help
    classify = pipeline("text-classification", model=str(model))
    assert classify("alpha beta")[0]["label"] in {"billing", "shipping", "technical"}
    report = (trained / "run" / "report.html").read_text()
    assert "Calibration" in report and "Temperature scaling" in report


def test_the_temperature_is_folded_into_the_output_layer_so_plain_transformers_agrees(trained: Path) -> None:
    predictor = Predictor.from_dir(trained / "run")
    record = predictor.info.calibration
    assert record is not None and record["folded"] is True and predictor.temperature == 1.0
    texts = [row["text"] for row in make_rows(6, seed=9)]
    classify = pipeline("text-classification", model=str(trained / "run" / "model"), top_k=None)
    for answer, probs in zip(classify(texts), predictor.predict_proba(texts), strict=True):
        plain = {item["label"]: item["score"] for item in answer}
        assert [plain[label] for label in predictor.labels] == pytest.approx(probs.tolist(), abs=1e-5)


def test_folding_divides_the_logits_and_an_unfolded_temperature_is_applied_by_the_predictor(
    trained: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(trained / "run" / "model", copy)
    predictor = Predictor.from_dir(copy)
    texts = [row["text"] for row in make_rows(6, seed=9)]
    before = predictor.predict_logits(texts)
    layer = predictor.feature_layer()
    assert layer is not None and fold_temperature(copy, layer, 2.5)
    np.testing.assert_allclose(Predictor.from_dir(copy).predict_logits(texts), before / 2.5, rtol=1e-4, atol=1e-6)
    # a temperature recorded but not folded (a model without an output layer) is applied by the predictor
    predictor.info.updated(calibration={"temperature": 2.0, "folded": False}).write(copy)
    unfolded = Predictor.from_dir(copy)
    assert unfolded.temperature == 2.0
    np.testing.assert_allclose(unfolded.predict_proba(texts), softmax(before / 2.5 / 2.0), rtol=1e-4)


def test_features_are_what_the_output_layer_reads(trained: Path) -> None:
    predictor = Predictor.from_dir(trained / "run")
    texts = [row["text"] for row in make_rows(5, seed=4)]
    logits, _, features = predictor.predict_with_features(texts)
    layer = predictor.feature_layer()
    assert layer is not None and features is not None
    by_hand = features @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
    np.testing.assert_allclose(by_hand, logits, atol=1e-5)


def test_each_score_matches_a_hand_computation(trained: Path) -> None:
    predictor = Predictor.from_dir(trained / "run")
    train = load_examples(trained / "train.csv", load_config(None, []).data)
    validation = load_examples(trained / "validation.csv", load_config(None, []).data)
    texts = [row["text"] for row in make_rows(4, seed=5)] + ["zzz qqq", "hello there general"]
    logits, probs, features = predictor.predict_with_features(texts)
    assert features is not None
    _train_logits, _, train_features = predictor.predict_with_features(train.texts)
    assert train_features is not None
    for method in ("msp", "energy", "mahalanobis", "knn"):
        detector = fit_detector(predictor, train, validation, OodSection(method=method, knn_k=3))
        got = detector.scores(logits, probs, features)
        if method == "msp":
            expected = 1 - softmax(logits / predictor.temperature).max(axis=1)
        elif method == "energy":
            expected = -torch.logsumexp(torch.tensor(logits, dtype=torch.float64), dim=1).numpy()
        elif method == "mahalanobis":
            targets = np.array([predictor.labels.index(label) for label in train.labels or []])
            means = np.stack([train_features[targets == c].mean(axis=0) for c in range(3)]).astype(np.float64)
            centred = train_features - means[targets]
            precision = np.linalg.pinv(centred.T.astype(np.float64) @ centred / len(centred))
            expected = np.array(
                [min((x - m) @ precision @ (x - m) for m in means) for x in features.astype(np.float64)]
            )
            np.testing.assert_allclose(got, expected, rtol=2e-3)
            continue
        else:
            unit = train_features / np.linalg.norm(train_features, axis=1, keepdims=True)
            sims = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ unit.T
            expected = 1 - np.sort(sims, axis=1)[:, -3]
            np.testing.assert_allclose(got, expected, atol=2e-3)  # the bank is kept in float16
            continue
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_vectorised_mahalanobis_equals_the_loop() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 5))
    targets = np.arange(40) % 3
    means, precision = class_statistics(features, targets, 3)
    queries = rng.normal(size=(7, 5))
    loop = [min((q - m) @ precision @ (q - m) for m in means) for q in queries]
    np.testing.assert_allclose(mahalanobis_distance(queries, means, precision), loop, rtol=1e-9)


def test_the_threshold_keeps_the_asked_share_of_validation_texts_in_scope(trained: Path) -> None:
    predictor = Predictor.from_dir(trained / "run")
    assert predictor.detector is not None and predictor.detector.in_scope_recall == 0.9
    validation = load_examples(trained / "validation.csv", load_config(None, []).data)
    _, scores = predictor.ood_scores(validation.texts)
    kept = ~predictor.detector.out_of_scope(scores)
    assert kept.mean() >= 0.9
    assert predictor.detector.threshold == np.quantile(scores, 0.9, method="inverted_cdf")  # the rule, exactly
    # and it is the lowest such threshold: one text fewer in scope would miss the asked share
    assert (scores < predictor.detector.threshold).mean() < 0.9


def test_predict_answers_the_ood_label_beyond_the_threshold(trained: Path) -> None:
    predictor = Predictor.from_dir(trained / "run")
    assert predictor.detector is not None
    texts = [row["text"] for row in make_rows(6, seed=11)] + [" ".join(FILLER[:6]), "tok tok tok", "a"]
    probs, scores = predictor.ood_scores(texts)
    predictions = predictor.predict(texts)
    outside = predictor.detector.out_of_scope(scores)
    for prediction, row, out, share in zip(
        predictions, probs, outside, predictor.detector.share_below(scores), strict=True
    ):
        assert prediction.ood_score == pytest.approx(share)
        if out:
            assert prediction.label == "unknown" and prediction.labels == ["unknown"] and prediction.score == share
        else:
            assert prediction.label == predictor.labels[int(row.argmax())]
    with pytest.raises(AdaptextError, match="sliding_window"):
        predictor.predict(texts, sliding_window=True)


def test_evaluate_with_an_ood_label_adds_the_detector_metrics(
    trained: Path, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    rows = make_rows(30, seed=3) + [{"text": " ".join(FILLER[i : i + 5]), "label": "oos"} for i in range(10)]
    data = write_csv("with_oos.csv", rows)
    report = evaluate_file(trained / "run", data, tmp_path / "eval", ood_label="oos", errors=0)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "ood_auroc", "ood_fpr95", "accuracy", "macro_f1"):
        assert key in metrics, key
    # by hand from the predictor's own decisions
    predictor = Predictor.from_dir(trained / "run")
    predicted = [p.label for p in predictor.predict([r["text"] for r in rows])]
    truth = [r["label"] if r["label"] != "oos" else "unknown" for r in rows]
    assert metrics["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    assert metrics["in_scope_accuracy"] == pytest.approx(
        np.mean([p == t for p, t in zip(predicted[:30], truth[:30], strict=True)])
    )
    assert metrics["oos_recall"] == pytest.approx(np.mean([p == "unknown" for p in predicted[30:]]))
    assert report.labels[-1] == "unknown"
    assert (tmp_path / "eval" / "ood_scores.png").is_file()
    assert "Out-of-scope scores" in (tmp_path / "eval" / "report.html").read_text()


def test_evaluate_refuses_an_ood_label_without_a_detector_or_without_such_rows(
    trained: Path, tiny_config: Callable[..., Config], write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    plain = tiny_config("train.epochs=1", "train.report_errors=0", "calibrate=false")
    run_strategy(Finetune(), plain)
    data = write_csv("oos.csv", [*make_rows(6, seed=3), {"text": "zz", "label": "oos"}])
    with pytest.raises(AdaptextError, match="no out-of-scope detector"):
        evaluate_file(plain.output_dir, data, tmp_path / "e1", ood_label="oos")
    assert "calibration" not in json.loads((plain.output_dir / "model" / "adaptext.json").read_text())
    with pytest.raises(AdaptextError, match="no row"):
        evaluate_file(trained / "run", write_csv("in.csv", make_rows(6, seed=3)), tmp_path / "e2", ood_label="oos")


def test_serve_answers_the_ood_label_first_for_a_text_out_of_scope(trained: Path) -> None:
    predictor = Predictor.from_dir(trained / "run")
    assert predictor.detector is not None
    texts = [row["text"] for row in make_rows(6, seed=11)] + [" ".join(FILLER[:6]), "tok tok tok", "a"]
    expected = predictor.predict(texts)
    assert any(p.label == "unknown" for p in expected) or pytest.skip("no text out of scope for this model")
    with TestClient(create_app({"m": predictor}, ServeOptions())) as client:
        answer = client.post("/predict", json={"inputs": texts}).json()
    for labels, prediction in zip(answer, expected, strict=True):
        assert labels[0]["label"] == prediction.label
        assert labels[0]["score"] == pytest.approx(prediction.score, rel=1e-5)
        assert len(labels) == len(predictor.labels)


def test_config_refuses_a_detector_for_multi_label_and_a_label_name_taken(
    trained: Path, tiny_config: Callable[..., Config]
) -> None:
    with pytest.raises(ConfigError, match="single-label"):
        tiny_config("data.multi_label=true", "ood.method=msp")
    predictor = Predictor.from_dir(trained / "run")
    data = load_examples(trained / "validation.csv", load_config(None, []).data)
    with pytest.raises(ConfigError, match="one of the model's labels"):
        fit_detector(predictor, data, data, OodSection(method="msp", label="billing"))


def test_an_export_keeps_an_energy_detector_and_drops_a_feature_detector(trained: Path, tmp_path: Path) -> None:
    from adaptext.deploy.export import export_onnx

    source = tmp_path / "energy"
    shutil.copytree(trained / "run" / "model", source)
    train = load_examples(trained / "train.csv", load_config(None, []).data)
    validation = load_examples(trained / "validation.csv", load_config(None, []).data)
    predictor = Predictor.from_dir(source)
    detector = fit_detector(predictor, train, validation, OodSection(method="energy"))
    detector.save(source)
    predictor.info.updated(ood=detector.record()).write(source)
    export_onnx(source, tmp_path / "onnx", data=trained / "validation.csv", sample=16)
    exported = Predictor.from_dir(tmp_path / "onnx")
    assert exported.detector is not None and exported.detector.method == "energy"
    assert exported.temperature == predictor.temperature
    texts = [row["text"] for row in make_rows(6, seed=11)] + [" ".join(FILLER[:6]), "tok tok tok", "a"]
    reference = Predictor.from_dir(source).predict(texts)
    assert [p.label for p in exported.predict(texts)] == [p.label for p in reference]
    export_onnx(trained / "run", tmp_path / "onnx-knn", sample=16)  # knn reads features the graph does not give
    assert Predictor.from_dir(tmp_path / "onnx-knn").detector is None


def test_auto_is_the_score_the_benchmark_found_best_where_the_model_allows() -> None:
    assert resolve_method("auto", has_features=True) == "mahalanobis"
    assert resolve_method("auto", has_features=False) == "energy"  # ONNX, prompt and NLI models give logits only
    assert resolve_method("knn", has_features=True) == "knn"
