"""Contract tests of `strategy: fewshot` (SetFit-style contrastive training plus a logistic-regression head) and of
`adaptext sample`: pair batches, the loss, the head fit, the run folder and every consumer of the saved model."""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config, FewshotSection, load_config
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.core.task import MULTI_LABEL, SINGLE_LABEL
from adaptext.data.batching import Encoded, tokenize
from adaptext.data.io import read_table
from adaptext.deploy.serve import ServeOptions, create_app
from adaptext.explain.explainer import default_method, explain_texts
from adaptext.explain.methods import IntegratedGradients
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import embed, final_linear, prepare_encoder
from adaptext.modeling.hub import load_tokenizer
from adaptext.strategies import train
from adaptext.strategies.fewshot import (
    FINETUNE_FROM_LABELS,
    contrastive_batches,
    default_steps,
    fit_head,
    group_keys,
    resolve_encoder,
)
from adaptext.training.callbacks import Callback
from adaptext.training.objectives import contrastive_loss, pair_targets
from adaptext.training.state import TrainResult
from conftest import FILLER, KEYWORDS, LABELS, SimulatedCrashError, make_rows, read_log, stop_at

PROBE_TEXTS = [
    "my invoice is not right again",
    "where is my parcel today",
    "login error with the screen",
    "please help with the refund",
    "the courier did not arrive with my package",
    "why is my password an error again",
]
# Settings under which the few-shot run is short (40 contrastive steps of 16) and still moves the encoder.
FEWSHOT = ("strategy=fewshot", "fewshot.steps=40", "fewshot.batch_size=16", "fewshot.learning_rate=1e-3")


def fewshot_config(tiny_model_dir: Path, folder: Path, *overrides: str) -> Config:
    """A few-shot config on the tiny model: 8 training rows per label, a validation file, 40 steps."""
    train_file = folder / "train.csv"
    validation_file = folder / "validation.csv"
    if not train_file.exists():
        pd.DataFrame(make_rows(24, seed=1)).to_csv(train_file, index=False)
        pd.DataFrame(make_rows(30, seed=2)).to_csv(validation_file, index=False)
    return load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={train_file}",
            f"data.validation={validation_file}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            "train.precision=fp32",
            "seed=7",
            "fewshot.calibrate=false",  # the head is then exactly the regression; calibration is tested on its own
            *FEWSHOT,
            *overrides,
        ],
    )


def make_multi_label_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    combos = [["billing"], ["shipping"], ["technical"], ["billing", "shipping"], ["shipping", "technical"]]
    rows = []
    for i in range(n):
        labels = combos[i % len(combos)]
        words = rng.sample(FILLER, 7 - 2 * len(labels))
        for label in labels:
            words += rng.sample(KEYWORDS[label], 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "|".join(labels)})
    return rows


def encode(tokenizer: Any, texts: list[str]) -> Encoded:
    return Encoded(features=tokenize(tokenizer, texts, None, 32), targets=None)


# contrastive batches ----------------------------------------------------------------------------


def pairs_in(batch: list[int], groups: list[int]) -> tuple[int, int]:
    """(positive pairs, negative pairs) among the examples of `batch`."""
    positive = negative = 0
    for i, a in enumerate(batch):
        for b in batch[i + 1 :]:
            if groups[a] == groups[b]:
                positive += 1
            else:
                negative += 1
    return positive, negative


def test_contrastive_batches_are_deterministic_in_the_seed() -> None:
    groups = [0] * 5 + [1] * 7 + [2] * 4 + [3] * 6
    first = contrastive_batches(groups, batch_size=8, steps=30, per_class=3, seed=1)
    again = contrastive_batches(groups, batch_size=8, steps=30, per_class=3, seed=1)
    other = contrastive_batches(groups, batch_size=8, steps=30, per_class=3, seed=2)
    assert len(first) == 30
    assert first == again
    assert first != other
    assert all(isinstance(i, int) for batch in first for i in batch)


@pytest.mark.parametrize(
    ("sizes", "batch_size", "per_class"),
    [
        ([5, 7, 4, 6], 8, 3),
        ([8, 8, 8], 16, 4),
        ([2, 3, 2, 9, 2], 6, 2),
        ([3, 3], 4, 4),
        ([10] * 6, 32, 4),
    ],
)
def test_every_batch_has_distinct_examples_and_both_kinds_of_pair(
    sizes: list[int], batch_size: int, per_class: int
) -> None:
    groups = [g for g, size in enumerate(sizes) for _ in range(size)]
    for seed in range(5):
        for batch in contrastive_batches(groups, batch_size, steps=40, per_class=per_class, seed=seed):
            assert len(batch) == len(set(batch)) == min(batch_size, len(groups)), batch
            assert all(0 <= i < len(groups) for i in batch)
            positive, negative = pairs_in(batch, groups)
            assert positive >= 1, (sizes, batch_size, per_class, seed, batch)
            assert negative >= 1, (sizes, batch_size, per_class, seed, batch)


def test_every_example_is_used_about_equally_often() -> None:
    groups = [g for g in range(3) for _ in range(8)]
    batches = contrastive_batches(groups, batch_size=8, steps=300, per_class=4, seed=3)
    counts = Counter(i for batch in batches for i in batch)
    assert set(counts) == set(range(len(groups)))
    assert max(counts.values()) / min(counts.values()) <= 1.3, counts
    per_group = Counter(groups[i] for batch in batches for i in batch)
    assert max(per_group.values()) / min(per_group.values()) <= 1.1, per_group


def test_groups_of_one_example_work() -> None:
    groups = [0, 1, 2, 2, 3, 4]
    batches = contrastive_batches(groups, batch_size=4, steps=20, per_class=4, seed=0)
    assert len(batches) == 20
    for batch in batches:
        assert len(batch) == len(set(batch)) == 4
        assert pairs_in(batch, groups)[1] >= 1
    assert set().union(*map(set, batches)) == set(range(len(groups)))
    # Fewer examples than the batch size: every batch is all of them.
    assert all(sorted(b) == [0, 1, 2] for b in contrastive_batches([0, 1, 1], 8, steps=3, per_class=4, seed=0))


@pytest.mark.parametrize("batch_size", [0, 1])
def test_a_batch_below_two_examples_is_refused(batch_size: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        contrastive_batches([0, 1, 0, 1], batch_size, steps=3, per_class=2, seed=0)


def test_default_steps_are_about_forty_encodings_per_example_within_bounds() -> None:
    assert default_steps(16, 32) == 40  # a batch holds all 16 examples: 40 steps
    assert default_steps(64, 32) == 80  # 40 x 64 encodings in batches of 32
    assert default_steps(97, 32) == 122  # rounded up
    assert default_steps(10_000, 32) == 500  # the ceiling


# groups, pair targets and the loss --------------------------------------------------------------


def test_group_keys_of_class_ids_and_multi_hot_rows() -> None:
    assert group_keys(np.asarray([2, 0, 2, 1])) == [2, 0, 2, 1]
    multi_hot = np.asarray([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    assert group_keys(multi_hot) == [0, 1, 0, 2, 1]


def test_pair_targets_single_and_multi_label() -> None:
    single = pair_targets(np.asarray([0, 1, 0]))
    assert single.dtype == torch.float32
    assert single.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    multi = pair_targets(np.asarray([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=np.float32))
    assert multi.tolist() == [
        [1, 1, 0, 1],  # shares shipping with row 1 and billing with row 3
        [1, 1, 0, 0],
        [0, 0, 1, 1],  # shares technical with row 3
        [1, 0, 1, 1],
    ]


def test_contrastive_loss_is_zero_for_perfect_embeddings_and_positive_otherwise() -> None:
    basis = torch.eye(4)
    labels = np.asarray([0, 0, 1, 2, 1])
    # Same class: the same direction (at different lengths, as only the cosine counts); classes orthogonal.
    perfect = torch.stack([basis[c] * (1 + i) for i, c in enumerate(labels)])
    same = pair_targets(labels)
    assert contrastive_loss(perfect, same).item() == pytest.approx(0.0, abs=1e-7)
    noisy = perfect + 0.3 * torch.randn(perfect.shape, generator=torch.Generator().manual_seed(0))
    assert contrastive_loss(noisy, same).item() > 1e-3
    # Positive and negative pairs weigh equally: one perfect positive pair, two negatives at cosine 1.
    collapsed = torch.ones(3, 4)
    assert contrastive_loss(collapsed, pair_targets(np.asarray([0, 0, 1]))).item() == pytest.approx(0.5)


def test_a_gradient_step_on_the_contrastive_loss_lowers_it() -> None:
    generator = torch.Generator().manual_seed(1)
    labels = np.asarray([0, 1, 2, 0, 1, 2, 0, 1])
    same = pair_targets(labels)
    embeddings = torch.randn(len(labels), 16, generator=generator, requires_grad=True)
    before = contrastive_loss(embeddings, same)
    before.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = embeddings - 0.5 * embeddings.grad
    after = contrastive_loss(stepped, same)
    assert after.item() < before.item() - 1e-4
    # Several steps keep lowering it towards the same-class / orthogonal layout.
    current = stepped.detach().requires_grad_(True)
    for _ in range(200):
        loss = contrastive_loss(current, same)
        (grad,) = torch.autograd.grad(loss, current)
        current = (current - 0.5 * grad).detach().requires_grad_(True)
    assert contrastive_loss(current, same).item() < 0.25 * before.item()


# the head ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("labels", "c"), [(["billing", "shipping"], 1.0), (LABELS, 0.5)])
def test_fit_head_makes_the_model_answer_with_the_regression_probabilities(
    tiny_model_dir: Path, labels: list[str], c: float
) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = build_model(str(tiny_model_dir), labels, SINGLE_LABEL).eval()
    rows = make_rows(8 * len(labels), seed=4, labels=labels)
    texts = [r["text"] for r in rows]
    targets = np.asarray([labels.index(r["label"]) for r in rows])
    embeddings = embed(model, encode(tokenizer, texts), pad_token_id=tokenizer.pad_token_id)
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(texts), model.config.hidden_size)
    # The embedding is the input of the final layer: applying that layer gives the model's own logits.
    layer = final_linear(model)
    assert layer.out_features == len(labels)
    predictor = Predictor(model, tokenizer, max_length=32)
    with torch.no_grad():
        via_layer = layer(torch.as_tensor(embeddings)).numpy()
    np.testing.assert_allclose(via_layer, predictor.predict_logits(texts), atol=1e-5)

    fit_head(model, embeddings, targets, c=c, seed=0)
    # The regression is fitted on embeddings of about unit norm (divided by their median norm), as SetFit's are.
    scale = np.median(np.linalg.norm(embeddings, axis=1))
    clf = LogisticRegression(C=c, max_iter=1000).fit(embeddings / scale, targets)
    got = predictor.predict_proba(texts)
    np.testing.assert_allclose(got, clf.predict_proba(embeddings / scale), rtol=0, atol=1e-5)
    # The same on texts the head never saw.
    unseen = [r["text"] for r in make_rows(12, seed=5, labels=labels)]
    unseen_embeddings = embed(model, encode(tokenizer, unseen), pad_token_id=tokenizer.pad_token_id)
    np.testing.assert_allclose(predictor.predict_proba(unseen), clf.predict_proba(unseen_embeddings / scale), atol=1e-5)
    assert len(set(np.argmax(got, axis=1))) >= 2  # not a constant model, so a mix-up of rows would show


def test_fit_head_multi_label_is_one_regression_per_label(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    labels = [*LABELS, "always"]
    torch.manual_seed(0)
    model = build_model(str(tiny_model_dir), labels, MULTI_LABEL).eval()
    rows = make_multi_label_rows(20, seed=6)
    texts = [r["text"] for r in rows]
    targets = np.zeros((len(rows), len(labels)), dtype=np.float32)
    for i, row in enumerate(rows):
        for name in [*row["label"].split("|"), "always"]:  # `always` is on every row: a constant score
            targets[i, labels.index(name)] = 1.0
    embeddings = embed(model, encode(tokenizer, texts), pad_token_id=tokenizer.pad_token_id)
    fit_head(model, embeddings, targets, c=2.0, seed=0)
    predictor = Predictor(model, tokenizer, max_length=32)
    assert predictor.multi_label
    got = predictor.predict_proba(texts)
    unit = embeddings / np.median(np.linalg.norm(embeddings, axis=1))
    for j, name in enumerate(LABELS):
        clf = LogisticRegression(C=2.0, max_iter=1000).fit(unit, targets[:, j])
        np.testing.assert_allclose(got[:, j], clf.predict_proba(unit)[:, 1], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got[:, 3], 1.0)


def test_fit_head_gives_an_absent_class_no_probability(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL).eval()
    rows = make_rows(16, seed=4, labels=["billing", "technical"])
    texts = [r["text"] for r in rows]
    targets = np.asarray([LABELS.index(r["label"]) for r in rows])  # classes 0 and 2; shipping (1) absent
    embeddings = embed(model, encode(tokenizer, texts), pad_token_id=tokenizer.pad_token_id)
    fit_head(model, embeddings, targets, c=1.0, seed=0)
    got = Predictor(model, tokenizer, max_length=32).predict_proba(texts)
    unit = embeddings / np.median(np.linalg.norm(embeddings, axis=1))
    expected = LogisticRegression(C=1.0, max_iter=1000).fit(unit, targets).predict_proba(unit)
    np.testing.assert_allclose(got[:, [0, 2]], expected, atol=1e-5)
    assert np.all(got[:, 1] < 1e-6)


# the few-shot run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fewshot_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("fewshot")
    config = fewshot_config(tiny_model_dir, folder)
    result = train(config)
    return {"config": config, "result": result, "folder": folder}


def test_fewshot_run_writes_a_normal_run_folder(fewshot_run: dict[str, Any]) -> None:
    result: TrainResult = fewshot_run["result"]
    run = result.run_dir
    assert result.model_dir == run / "model"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "labels.json", "metrics.json", "run_stats.json", "env.json", "train_log.jsonl"} <= names
    assert {"report.html", "per_class.csv", "confusion_matrix.png", "model"} <= names
    assert not [n for n in names if n.endswith((".tmp", ".old"))]
    assert load_config(run / "config.yaml") == fewshot_run["config"]
    assert json.loads((run / "labels.json").read_text(encoding="utf-8")) == LABELS

    stats = json.loads((run / "run_stats.json").read_text(encoding="utf-8"))
    assert stats == result.stats
    assert stats["strategy"] == "fewshot" and stats["method"] == "none"
    assert stats["train_seconds"] > 0
    # The mean-pooling layer and the dense layer before the head stay fixed; everything else is trained.
    assert 0 < stats["trainable_parameters"] < stats["total_parameters"]

    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_examples"] == 30 and result.eval_split == "validation"
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["loss"])

    log = read_log(run)
    losses = [r for r in log if "loss" in r]
    assert [r["step"] for r in losses] == [20, 40]  # one record every 20 contrastive steps and at the end
    assert all(math.isfinite(r["loss"]) and r["loss"] >= 0 and r["learning_rate"] >= 0 for r in losses)
    assert losses[0]["epoch"] == pytest.approx(20 * 16 / 24)
    evals = [r for r in log if "eval_accuracy" in r]
    assert len(evals) == 1 and evals[0]["step"] == 40
    assert evals[0]["eval_accuracy"] == pytest.approx(metrics["accuracy"])  # the saved model is the evaluated one
    assert result.global_step == result.best_step == 40

    saved = json.loads((result.model_dir / "adaptext.json").read_text(encoding="utf-8"))
    assert saved["strategy"] == "fewshot" and saved["labels"] == LABELS
    assert "fewshot" in (run / "report.html").read_text(encoding="utf-8")


def test_plain_transformers_pipeline_matches_the_predictor(fewshot_run: dict[str, Any]) -> None:
    from transformers import pipeline

    model_dir = fewshot_run["result"].model_dir
    classifier = pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
    answers = classifier(PROBE_TEXTS)
    probs = Predictor.from_dir(fewshot_run["result"].run_dir).predict_proba(PROBE_TEXTS)
    for row, expected in zip(answers, probs, strict=True):
        scores = {item["label"]: item["score"] for item in row}
        assert set(scores) == set(LABELS)
        np.testing.assert_allclose([scores[name] for name in LABELS], expected, rtol=0, atol=1e-5)


def test_the_head_is_the_regression_on_the_trained_encoder(fewshot_run: dict[str, Any], tiny_model_dir: Path) -> None:
    """The saved encoder is not the base model's, and the saved head is logistic regression on its embeddings."""
    from transformers import AutoModelForSequenceClassification

    result: TrainResult = fewshot_run["result"]
    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    base = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    base_params = dict(base.named_parameters())
    assert saved.config.num_hidden_layers == base.config.num_hidden_layers + 1  # the mean-pooling layer
    head_ids = {id(p) for p in final_linear(saved).parameters()}
    original = [(n, p) for n, p in saved.named_parameters() if n in base_params and id(p) not in head_ids]
    changed = [name for name, p in original if not torch.allclose(p, base_params[name])]
    encoder_names = [n for n, _ in original if n.startswith("bert.encoder.")]
    assert set(encoder_names) <= set(changed), sorted(set(encoder_names) - set(changed))[:5]

    tokenizer = load_tokenizer(str(result.model_dir))
    train_rows = make_rows(24, seed=1)
    targets = np.asarray([LABELS.index(r["label"]) for r in train_rows])
    embeddings = embed(saved, encode(tokenizer, [r["text"] for r in train_rows]), pad_token_id=0)
    scale = np.median(np.linalg.norm(embeddings, axis=1))
    head_c = FewshotSection().head_c  # the run's default
    clf = LogisticRegression(C=head_c, max_iter=1000).fit(embeddings / scale, targets)
    probe = embed(saved, encode(tokenizer, PROBE_TEXTS), pad_token_id=0)
    got = Predictor.from_dir(result.run_dir).predict_proba(PROBE_TEXTS)
    np.testing.assert_allclose(got, clf.predict_proba(probe / scale), atol=1e-5)
    # A head fitted on the untrained encoder's embeddings answers differently.
    prepare_encoder(base)  # the same embedding, on the untrained encoder
    base_embeddings = embed(base.eval(), encode(tokenizer, [r["text"] for r in train_rows]), pad_token_id=0)
    assert not np.allclose(base_embeddings, embeddings, atol=1e-3)


def test_evaluate_and_predict_commands_work_on_a_fewshot_run(
    fewshot_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = fewshot_run["result"].run_dir
    validation = fewshot_run["folder"] / "validation.csv"
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(run), "--data", str(validation), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_examples"] == 30
    assert metrics["accuracy"] == pytest.approx(fewshot_run["result"].metrics["accuracy"])
    assert (out / "report.html").is_file()

    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run), "--input", str(validation), "--output", str(predictions)]) == 0
    frame = pd.read_json(predictions, lines=True)
    probs = Predictor.from_dir(run).predict_proba(list(frame["text"]))
    assert list(frame["label"]) == [LABELS[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(frame["score"], probs.max(axis=1), atol=1e-5)
    assert "30 predictions" in capsys.readouterr().out


def test_onnx_export_of_a_fewshot_run_passes_its_check(fewshot_run: dict[str, Any], tmp_path: Path) -> None:
    from adaptext.deploy.export import export_onnx

    run = fewshot_run["result"].run_dir
    out = tmp_path / "onnx"
    check = export_onnx(run, out)
    assert check.passed and check.max_abs_diff <= 1e-4 and check.label_agreement == 1.0
    assert check.n_examples == 30  # the run's validation file
    assert (out / "model.onnx").is_file()
    exported = Predictor.from_dir(out)
    reference = Predictor.from_dir(run)
    assert exported.labels == LABELS
    assert [p.label for p in exported.predict(PROBE_TEXTS)] == [p.label for p in reference.predict(PROBE_TEXTS)]
    np.testing.assert_allclose(exported.predict_proba(PROBE_TEXTS), reference.predict_proba(PROBE_TEXTS), atol=1e-4)


def test_serve_answers_with_the_fewshot_model(fewshot_run: dict[str, Any]) -> None:
    predictor = Predictor.from_dir(fewshot_run["result"].run_dir)
    app = create_app({"fewshot": predictor}, ServeOptions())
    with TestClient(app) as client:
        response = client.post("/predict", json={"inputs": PROBE_TEXTS})
        assert response.status_code == 200, response.text
        expected = predictor.predict_proba(PROBE_TEXTS)
        for row, probs in zip(response.json(), expected, strict=True):
            scores = {item["label"]: item["score"] for item in row}
            np.testing.assert_allclose([scores[name] for name in LABELS], probs, atol=1e-5)
            assert row[0]["label"] == LABELS[int(np.argmax(probs))]
        info = client.get("/info").json()
        assert info["models"][0]["labels"] == LABELS


def test_fewshot_is_deterministic_in_the_seed(
    fewshot_run: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    again = train(fewshot_config(tiny_model_dir, fewshot_run["folder"], f"output_dir={tmp_path / 'again'}"))
    first = Predictor.from_dir(fewshot_run["result"].run_dir).predict_logits(PROBE_TEXTS)
    np.testing.assert_allclose(Predictor.from_dir(again.run_dir).predict_logits(PROBE_TEXTS), first, atol=1e-5)


def test_multi_label_fewshot_run_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_file = tmp_path / "train.csv"
    validation_file = tmp_path / "validation.csv"
    pd.DataFrame(make_multi_label_rows(20, seed=1)).to_csv(train_file, index=False)
    pd.DataFrame(make_multi_label_rows(10, seed=2)).to_csv(validation_file, index=False)
    config = fewshot_config(
        tiny_model_dir,
        tmp_path,
        f"data.train={train_file}",
        f"data.validation={validation_file}",
        "data.multi_label=true",
        "fewshot.steps=20",
    )
    result = train(config)
    predictor = Predictor.from_dir(result.run_dir)
    assert predictor.multi_label and predictor.labels == LABELS
    assert json.loads((result.run_dir / "run_stats.json").read_text(encoding="utf-8"))["strategy"] == "fewshot"
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_examples"] == 10
    assert 0 <= metrics["micro_f1"] <= 1
    # The head is one regression per label on the trained encoder's embeddings: sigmoid per label.
    tokenizer = load_tokenizer(str(result.model_dir))
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    rows = make_multi_label_rows(20, seed=1)
    embeddings = embed(saved, encode(tokenizer, [r["text"] for r in rows]), pad_token_id=0)
    probs = predictor.predict_proba([r["text"] for r in rows])
    unit = embeddings / np.median(np.linalg.norm(embeddings, axis=1))
    for j, name in enumerate(LABELS):
        column = np.asarray([name in r["label"].split("|") for r in rows], dtype=np.float32)
        clf = LogisticRegression(C=FewshotSection().head_c, max_iter=1000).fit(unit, column)
        np.testing.assert_allclose(probs[:, j], clf.predict_proba(unit)[:, 1], atol=1e-5, err_msg=name)
    # Label sets come out of `adaptext predict` as lists.
    out = tmp_path / "predictions.jsonl"
    assert main(["-q", "predict", str(result.run_dir), "--input", str(validation_file), "--output", str(out)]) == 0
    written = pd.read_json(out, lines=True)
    assert all(isinstance(labels, list) and set(labels) <= set(LABELS) for labels in written["label"])


# label descriptions -----------------------------------------------------------------------------


def write_descriptions(folder: Path, rows: list[dict[str, str]], name: str = "descriptions.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


DESCRIPTIONS = [
    {"label": "billing", "description": "an invoice refund or charge"},
    {"label": "shipping", "description": "a parcel delivery or courier"},
    {"label": "technical", "description": "a crash error or login bug"},
]


def test_label_descriptions_are_added_as_training_examples(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = write_descriptions(tmp_path, DESCRIPTIONS)
    result = train(fewshot_config(tiny_model_dir, tmp_path, f"data.label_descriptions={path}", "fewshot.steps=20"))
    assert (result.model_dir / "config.json").is_file()
    first = next(r for r in read_log(result.run_dir) if "loss" in r)
    assert first["epoch"] == pytest.approx(20 * 16 / 27)  # 24 rows plus one per described label
    assert Predictor.from_dir(result.run_dir).labels == LABELS


def test_label_description_of_an_unknown_label_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [DESCRIPTIONS[0], {"label": "refunds", "description": "money back"}, DESCRIPTIONS[2]]
    path = write_descriptions(tmp_path, rows)
    with pytest.raises(AdaptextError) as info:
        train(fewshot_config(tiny_model_dir, tmp_path, f"data.label_descriptions={path}"))
    message = str(info.value)
    assert isinstance(info.value, DataError)
    assert str(path) in message and "'refunds'" in message and "row" in message
    assert not (tmp_path / "run" / "model").exists()


def test_label_description_errors_number_rows_as_the_data_errors_do(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [DESCRIPTIONS[0], {"label": "refunds", "description": "money back"}, DESCRIPTIONS[2]]
    path = write_descriptions(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 2: label 'refunds'"):
        train(fewshot_config(tiny_model_dir, tmp_path, f"data.label_descriptions={path}"))


def test_a_label_described_twice_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [*DESCRIPTIONS, {"label": "shipping", "description": "again"}]
    path = write_descriptions(tmp_path, rows)
    with pytest.raises(DataError) as info:
        train(fewshot_config(tiny_model_dir, tmp_path, f"data.label_descriptions={path}"))
    assert str(path) in str(info.value) and "'shipping'" in str(info.value) and "twice" in str(info.value)


def test_a_description_file_without_the_description_column_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = write_descriptions(tmp_path, [{"label": r["label"], "text": r["description"]} for r in DESCRIPTIONS])
    with pytest.raises(DataError) as info:
        train(fewshot_config(tiny_model_dir, tmp_path, f"data.label_descriptions={path}"))
    assert str(path) in str(info.value) and "description" in str(info.value)


def test_an_empty_description_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [DESCRIPTIONS[0], {"label": "shipping", "description": " "}]
    path = write_descriptions(tmp_path, rows)
    with pytest.raises(DataError, match="empty"):
        train(fewshot_config(tiny_model_dir, tmp_path, f"data.label_descriptions={path}"))


# config errors ----------------------------------------------------------------------------------


def test_fewshot_with_lora_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"strategy fewshot.*peft\.method=none"):
        fewshot_config(tiny_model_dir, tmp_path, "peft.method=lora")


def test_an_unknown_strategy_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="strategy"):
        fewshot_config(tiny_model_dir, tmp_path, "strategy=setfit")


@pytest.mark.parametrize("setting", ["fewshot.batch_size=1", "fewshot.per_class=0", "fewshot.steps=many"])
def test_bad_fewshot_settings_are_config_errors(tiny_model_dir: Path, tmp_path: Path, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting.split("=")[0].replace(".", r"\.")):
        fewshot_config(tiny_model_dir, tmp_path, setting)


def test_an_interrupted_fewshot_run_resumes_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = ("train.checkpoint_steps=6",)
    straight = train(fewshot_config(tiny_model_dir, tmp_path, *overrides, f"output_dir={tmp_path / 'straight'}"))
    config = fewshot_config(tiny_model_dir, tmp_path, *overrides, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(25))  # the checkpoint is at step 24, after the loss record of step 20
    resumed = train(config, resume=True)

    assert resumed.global_step == straight.global_step == 40
    expected = Predictor.from_dir(straight.run_dir).predict_logits(PROBE_TEXTS)
    np.testing.assert_allclose(Predictor.from_dir(resumed.run_dir).predict_logits(PROBE_TEXTS), expected, atol=1e-5)
    mine, reference = read_log(resumed.run_dir), read_log(straight.run_dir)
    assert [r["step"] for r in mine] == [r["step"] for r in reference] == [20, 40, 40]
    for ours, theirs in zip(mine, reference, strict=True):
        for key in ("loss", "eval_loss", "eval_accuracy"):
            assert ours.get(key) == pytest.approx(theirs.get(key), abs=1e-6), (key, ours["step"])


def test_a_run_interrupted_after_its_last_step_fits_the_head_once_on_resume(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    class CrashOnEvaluation(Callback):
        def on_evaluate(self, record: dict[str, Any]) -> None:
            raise SimulatedCrashError("after the validation record of the fitted head")

    config = fewshot_config(tiny_model_dir, tmp_path, "fewshot.steps=4")
    with pytest.raises(SimulatedCrashError):
        train(config, callbacks=[CrashOnEvaluation()])
    result = train(config, resume=True)
    assert [(r["step"], "eval_accuracy" in r) for r in read_log(result.run_dir)] == [(4, False), (4, True)]
    assert result.global_step == result.best_step == 4


def test_resuming_a_fewshot_run_without_a_checkpoint_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AdaptextError, match="nothing to resume"):
        train(fewshot_config(tiny_model_dir, tmp_path), resume=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "setting",
    [
        "train.epochs=3",
        "train.max_steps=10",
        "train.learning_rate=0.001",
        "train.warmup_ratio=0.2",
        "train.class_weights=auto",
        "train.eval_steps=5",
        "train.early_stopping_patience=2",
    ],
)
def test_train_settings_the_contrastive_phase_does_not_use_are_refused(
    tiny_model_dir: Path, tmp_path: Path, setting: str
) -> None:
    with pytest.raises(ConfigError, match=rf"strategy fewshot does not use {re.escape(setting)}"):
        train(fewshot_config(tiny_model_dir, tmp_path, setting))
    assert not (tmp_path / "run").exists()


def test_gradient_accumulation_and_checkpoints_apply_to_the_contrastive_phase(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    steps: list[int] = []
    config = fewshot_config(
        tiny_model_dir, tmp_path, "fewshot.steps=6", "train.grad_accum_steps=2", "train.checkpoint_steps=4"
    )
    result = train(config, on_step=steps.append)
    assert steps == list(range(1, 7)) and result.global_step == 6  # fewshot.steps counts optimizer steps
    state = json.loads((result.run_dir / "checkpoint" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 6 and state["done"] is True
    losses = [r for r in read_log(result.run_dir) if "loss" in r]
    assert losses[-1]["epoch"] == pytest.approx(12 * 16 / 24)  # 12 batches of 16 of the 24 examples


# adaptext sample --------------------------------------------------------------------------------


def run_sample(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sample", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """30 keyword rows (10 per label) with an `id` column and one text holding a comma, plus two rows of a rare
    label."""
    rows: list[dict[str, Any]] = [{"id": f"r{i:02d}", **row} for i, row in enumerate(make_rows(30, seed=9))]
    rows[4]["text"] = "my invoice, again"
    rows.insert(7, {"id": "rare1", "text": "why is it not here", "label": "other"})
    rows.append({"id": "rare2", "text": "help me today", "label": "other"})
    path = tmp_path / "labelled.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_sample_takes_n_rows_per_label_in_file_order_with_all_columns(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "sample.csv"
    code, stdout, _ = run_sample(capsys, str(labelled), "--per-class", "3", "--seed", "1", "--output", str(out))
    assert code == 0
    source = read_table(labelled)
    sample = read_table(out)
    assert list(sample.columns) == ["id", "text", "label"]
    counts = Counter(sample["label"])
    assert counts == {"billing": 3, "shipping": 3, "technical": 3, "other": 2}  # the rare label: all it has
    # Rows are the source's rows unchanged, in file order.
    positions = [source.index[source["id"] == i][0] for i in sample["id"]]
    assert positions == sorted(positions)
    assert sample.to_dict("records") == source.iloc[positions].to_dict("records")
    assert "11 of 32 rows" in stdout
    assert any("'other'" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_sample_is_reproducible_and_changes_with_the_seed(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        outputs[name] = tmp_path / f"{name}.csv"
        args = (str(labelled), "--per-class", "3", "--seed", seed, "--output", str(outputs[name]))
        assert run_sample(capsys, *args)[0] == 0
    assert outputs["a"].read_bytes() == outputs["b"].read_bytes()
    assert set(read_table(outputs["a"])["id"]) != set(read_table(outputs["c"])["id"])
    # The default seed is a fixed one too.
    for name in ("d", "e"):
        outputs[name] = tmp_path / f"{name}.csv"
        assert run_sample(capsys, str(labelled), "--per-class", "2", "--output", str(outputs[name]))[0] == 0
    assert outputs["d"].read_bytes() == outputs["e"].read_bytes()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".tsv"])
def test_sample_writes_every_format_and_it_round_trips(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    reference = tmp_path / "sample.csv"
    out = tmp_path / f"sample{suffix}"
    for path in (reference, out):
        assert run_sample(capsys, str(labelled), "--per-class", "4", "--seed", "3", "--output", str(path))[0] == 0
    got = read_table(out)
    assert list(got.columns) == ["id", "text", "label"]
    assert len(got) == 14  # 4 of each label, and both rows of the rare one
    assert got.astype(str).to_dict("records") == read_table(reference).to_dict("records")
    # The file is a sample of the input itself, so it can be sampled again (and keeps every row).
    again = tmp_path / f"again{suffix}.csv"
    assert run_sample(capsys, str(out), "--per-class", "4", "--output", str(again))[0] == 0
    assert len(read_table(again)) == len(got)


def test_sample_rest_holds_exactly_the_rows_not_drawn(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample, rest = tmp_path / "sample.csv", tmp_path / "rest.jsonl"
    args = ["--per-class", "4", "--seed", "3", "--output", str(sample), "--rest", str(rest)]
    assert run_sample(capsys, str(labelled), *args)[0] == 0
    source, drawn, held = read_table(labelled), read_table(sample), read_table(rest)
    assert len(drawn) + len(held) == len(source)
    assert not set(drawn["id"].astype(str)) & set(held["id"].astype(str))
    # The rest keeps the file order and every column.
    assert list(held.columns) == list(source.columns)
    assert list(held["id"]) == [i for i in source["id"] if i in set(held["id"])]
    # The same file for both outputs is refused before anything is written.
    same = tmp_path / "same.csv"
    code, _, err = run_sample(capsys, str(labelled), "--per-class", "4", "--output", str(same), "--rest", str(same))
    assert code == 2 and "same file" in err and not same.exists()


def test_sample_to_tsv_keeps_texts_with_quotes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "quoted.csv"
    rows = [*make_rows(6), {"text": 'he said "my invoice, again"', "label": "billing"}]
    pd.DataFrame(rows).to_csv(source, index=False)
    out = tmp_path / "sample.tsv"
    # A large N takes every row, the quoted text included.
    assert run_sample(capsys, str(source), "--per-class", "50", "--output", str(out))[0] == 0
    assert read_table(out).to_dict("records") == read_table(source).to_dict("records")


def test_sample_to_an_unsupported_format_is_refused_and_writes_nothing(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sample.xlsx"
    code, _, err = run_sample(capsys, str(labelled), "--per-class", "3", "--output", str(out))
    assert code == EXIT_USER_ERROR
    assert "adaptext sample: error:" in err and "sample.xlsx" in err and ".csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled.csv"]


def test_sample_over_its_own_input_is_refused(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = labelled.read_bytes()
    monkeypatch.chdir(tmp_path)
    for output in (str(labelled), "labelled.csv", "./sub/../labelled.csv"):
        code, _, err = run_sample(capsys, str(labelled), "--per-class", "1", "--output", output)
        assert code == EXIT_USER_ERROR, output
        assert "overwrite the input" in err
        assert labelled.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled.csv"]


def test_sample_names_a_missing_label_column(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sample.csv"
    code, _, err = run_sample(
        capsys, str(labelled), "--per-class", "3", "--label-column", "topic", "--output", str(out)
    )
    assert code == EXIT_USER_ERROR
    assert "'topic'" in err and str(labelled) in err
    assert not out.exists()
    # The option is honoured when the column exists.
    renamed = tmp_path / "renamed.csv"
    read_table(labelled).rename(columns={"label": "topic", "text": "body"}).to_csv(renamed, index=False)
    args = ("--per-class", "1", "--label-column", "topic", "--text-column", "body", "--output", str(out))
    assert run_sample(capsys, str(renamed), *args)[0] == 0
    assert Counter(read_table(out)["topic"]) == {"billing": 1, "shipping": 1, "technical": 1, "other": 1}


def test_sample_of_zero_per_label_is_a_user_error(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sample.csv"
    code, _, err = run_sample(capsys, str(labelled), "--per-class", "0", "--output", str(out))
    assert code == EXIT_USER_ERROR and "at least 1" in err
    assert not out.exists()


def test_multi_label_sample_reaches_n_of_every_label_where_possible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*make_multi_label_rows(40, seed=3), {"text": "why is it not here", "label": "rare"}]
    source = tmp_path / "multi.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    for seed in ("0", "1", "2"):
        out = tmp_path / f"multi-{seed}.csv"
        args = (str(source), "--multi-label", "--per-class", "5", "--seed", seed, "--output", str(out))
        assert run_sample(capsys, *args)[0] == 0
        sample = read_table(out)
        counts: Counter[str] = Counter()
        for cell in sample["label"]:
            counts.update(cell.split("|"))
        assert all(counts[name] >= 5 for name in LABELS), counts
        assert counts["rare"] == 1
        assert len(sample) < len(rows)  # not simply everything
        # Every row taken was needed when it was taken: no row has only labels that are far over N.
        assert len(sample) <= 5 * (len(LABELS) + 1)


def test_calibration_fits_a_temperature_that_changes_confidence_not_labels(
    tiny_model_dir: Path, tmp_path: Path, fewshot_run: dict[str, Any]
) -> None:
    calibrated = train(
        fewshot_config(
            tiny_model_dir, fewshot_run["folder"], "fewshot.calibrate=true", f"output_dir={tmp_path / 'calibrated'}"
        )
    )
    saved = json.loads((calibrated.model_dir / "adaptext.json").read_text(encoding="utf-8"))
    temperature = saved["temperature"]
    assert 1e-2 <= temperature <= 1e2 and temperature != 1.0
    plain = Predictor.from_dir(fewshot_run["result"].run_dir)
    scaled = Predictor.from_dir(calibrated.run_dir)
    # Same seed and data: the same encoder and regression, the calibrated head divided by the temperature.
    np.testing.assert_allclose(
        scaled.predict_logits(PROBE_TEXTS), plain.predict_logits(PROBE_TEXTS) / temperature, rtol=1e-4, atol=1e-4
    )
    validation = pd.read_csv(fewshot_run["folder"] / "validation.csv")
    index = {name: i for i, name in enumerate(LABELS)}
    targets = np.asarray([index[v] for v in validation["label"]])

    def nll(predictor: Predictor) -> float:
        probs = predictor.predict_proba(list(validation["text"]))
        return float(-np.log(probs[np.arange(len(targets)), targets] + 1e-12).mean())

    assert nll(scaled) <= nll(plain) + 1e-6


def test_a_fewshot_model_is_explained_by_integrated_gradients(fewshot_run: dict[str, Any]) -> None:
    predictor = Predictor.from_dir(fewshot_run["result"].run_dir)
    assert default_method(predictor) == "ig"
    texts = ["my invoice is wrong", "the parcel is late"]
    explained = explain_texts(predictor, texts, methods=["ig"]).explanations["ig"]
    assert [len(e.tokens) for e in explained] == [4, 4]
    _, delta = IntegratedGradients().attribute_tokens(predictor, texts, [0, 1])
    assert np.all(np.abs(delta) < 0.05)  # completeness holds with the few-shot head too


def test_without_a_validation_file_fewshot_trains_on_every_example(tiny_model_dir: Path, tmp_path: Path) -> None:
    """True few-shot by default: no validation split is carved off, the head is the regression on all N examples with
    its own probabilities (no temperature fitted on the texts it was trained on), and the scores are named `train`."""
    config = fewshot_config(tiny_model_dir, tmp_path, "data.validation=null", "fewshot.calibrate=true")
    assert config.data.validation is None
    result = train(config)
    assert result.eval_split == "train" and scored_examples(result) == 24
    assert not [key for key in result.stats if key.startswith("validation_")]
    saved = Predictor.from_dir(result.run_dir)
    assert saved.info.temperature == 1.0
    train_rows = make_rows(24, seed=1)
    tokenizer = load_tokenizer(str(result.model_dir))
    embeddings = embed(saved.model, encode(tokenizer, [r["text"] for r in train_rows]), pad_token_id=0)  # type: ignore[arg-type]
    scale = np.median(np.linalg.norm(embeddings, axis=1))
    targets = np.asarray([LABELS.index(r["label"]) for r in train_rows])
    clf = LogisticRegression(C=FewshotSection().head_c, max_iter=1000).fit(embeddings / scale, targets)
    probe = embed(saved.model, encode(tokenizer, PROBE_TEXTS), pad_token_id=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(saved.predict_proba(PROBE_TEXTS), clf.predict_proba(probe / scale), atol=1e-5)

    # Asked for explicitly, the split is carved off as for every other strategy.
    carved = fewshot_config(tiny_model_dir, tmp_path, "data.validation=null", "data.validation_fraction=0.25")
    carved = carved.model_copy(update={"output_dir": tmp_path / "carved"})
    result = train(carved)
    assert result.eval_split == "validation" and scored_examples(result) == 6


def scored_examples(result: TrainResult) -> int:
    return int(json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))["n_examples"])


def test_fewshot_ood_without_held_out_texts_is_refused_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = fewshot_config(tiny_model_dir, tmp_path, "data.validation=null", "ood.method=knn")
    with pytest.raises(ConfigError, match=r"held-out in-scope texts.*data.validation=FILE"):
        train(config)
    assert not (tmp_path / "run").exists()


# the encoder's training: contrastive, fine-tuned from the frozen head (LP-FT), or frozen ---------------------------


def untouched_head_probs(tiny_model_dir: Path, texts: list[str]) -> np.ndarray:
    """The probabilities of logistic regression (C = the default) on the untouched, mean-pooled encoder's embeddings
    of the 24 training rows: the floor a few-shot run starts from."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    base = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    prepare_encoder(base)
    base.eval()
    train_rows = make_rows(24, seed=1)
    targets = np.asarray([LABELS.index(r["label"]) for r in train_rows])
    embeddings = embed(base, encode(tokenizer, [r["text"] for r in train_rows]), pad_token_id=0)
    scale = np.median(np.linalg.norm(embeddings, axis=1))
    clf = LogisticRegression(C=FewshotSection().head_c, max_iter=1000).fit(embeddings / scale, targets)
    return clf.predict_proba(embed(base, encode(tokenizer, texts), pad_token_id=0) / scale)


class ProbeAtStart(Callback):
    """The model's probabilities on PROBE_TEXTS when training begins."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.probs: np.ndarray | None = None

    def on_train_begin(self, state: Any, model: Any) -> None:
        self.probs = Predictor(model, self.tokenizer, max_length=32).predict_proba(PROBE_TEXTS)


def test_frozen_encoder_is_the_regression_on_the_untouched_encoder(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = fewshot_config(tiny_model_dir, tmp_path, "fewshot.encoder=frozen", "fewshot.steps=auto")
    config = config.model_copy(update={"fewshot": config.fewshot.model_copy(update={"learning_rate": "auto"})})
    result = train(config)
    assert result.global_step == 0
    np.testing.assert_allclose(
        Predictor.from_dir(result.run_dir).predict_proba(PROBE_TEXTS),
        untouched_head_probs(tiny_model_dir, PROBE_TEXTS),
        atol=1e-5,
    )


@pytest.mark.parametrize("setting", ["fewshot.steps=5", "fewshot.learning_rate=1e-3"])
def test_frozen_encoder_refuses_training_settings(tiny_model_dir: Path, tmp_path: Path, setting: str) -> None:
    config = load_config(None, [f"model.name={tiny_model_dir}", "strategy=fewshot", "fewshot.encoder=frozen", setting])
    with pytest.raises(ConfigError, match=r"fewshot.encoder=frozen trains nothing"):
        train(config)


def test_finetune_encoder_starts_from_the_frozen_head_and_trains_end_to_end(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """LP-FT: the head fitted on the untouched encoder, then every weight trained with cross-entropy for 5 epochs;
    with held-out validation where it scores no worse, the trained model is the one kept."""
    from transformers import AutoModelForSequenceClassification

    config = fewshot_config(
        tiny_model_dir, tmp_path, "fewshot.encoder=finetune", "fewshot.steps=auto", "fewshot.learning_rate=1e-3"
    )
    probe = ProbeAtStart(load_tokenizer(str(tiny_model_dir)))
    result = train(config, callbacks=[probe])
    assert probe.probs is not None
    np.testing.assert_allclose(probe.probs, untouched_head_probs(tiny_model_dir, PROBE_TEXTS), atol=1e-5)
    assert result.global_step == 5 * 2  # 5 epochs of 24 examples in batches of 16
    losses = [r["loss"] for r in read_log(result.run_dir) if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)

    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    base = dict(build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL).named_parameters())
    encoder = [(n, p) for n, p in saved.named_parameters() if n.startswith("bert.encoder.") and n in base]
    assert encoder and all(not torch.allclose(p, base[n]) for n, p in encoder)
    validation = make_rows(30, seed=2)
    untouched = untouched_head_probs(tiny_model_dir, [r["text"] for r in validation]).argmax(axis=1)
    floor = np.mean(untouched == [LABELS.index(r["label"]) for r in validation])
    assert result.metrics["accuracy"] >= floor  # kept because it scores no worse on validation


@pytest.mark.parametrize("encoder", ["contrastive", "finetune"])
def test_a_calibrated_run_scores_each_model_once_on_validation_and_logs_the_saved_models_metrics(
    tiny_model_dir: Path, tmp_path: Path, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trained and the untouched model are each scored once on validation; the better one's logits then serve
    the temperature and the run's last validation record, which matches the saved model's own evaluation."""
    config = fewshot_config(tiny_model_dir, tmp_path, f"fewshot.encoder={encoder}", "fewshot.calibrate=true")
    validation = pd.read_csv(tmp_path / "validation.csv")
    passes = []
    original = Predictor.predict_logits

    def counted(self: Predictor, texts: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        if list(texts) == list(validation["text"]):
            passes.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_logits", counted)
    result = train(config)
    assert len(passes) == 3  # the trained model, the untouched one, and the saved model's final evaluation
    monkeypatch.undo()
    saved = Predictor.from_dir(result.run_dir)
    assert json.loads((result.model_dir / "adaptext.json").read_text(encoding="utf-8"))["temperature"] != 1.0
    probs = saved.predict_proba(list(validation["text"]))
    targets = np.asarray([LABELS.index(v) for v in validation["label"]])
    last = [r for r in read_log(result.run_dir) if "eval_accuracy" in r][-1]
    assert last["eval_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == targets)))
    loss = float(-np.log(probs[np.arange(len(targets)), targets]).mean())
    assert last["eval_loss"] == pytest.approx(loss, rel=1e-4)
    assert result.metrics["loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("encoder", ["contrastive", "finetune"])
def test_a_run_that_ends_below_the_untouched_encoder_falls_back_to_it(
    tiny_model_dir: Path, tmp_path: Path, encoder: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With held-out validation texts, a training that ruins the encoder (a learning rate of 1) leaves the model of
    the untouched encoder and its head, never one below that floor."""
    config = fewshot_config(
        tiny_model_dir, tmp_path, f"fewshot.encoder={encoder}", "fewshot.steps=6", "fewshot.learning_rate=1.0"
    )
    with caplog.at_level("WARNING", logger="adaptext.strategies.fewshot"):
        result = train(config)
    assert "keeps the untouched encoder and its head" in caplog.text
    np.testing.assert_allclose(
        Predictor.from_dir(result.run_dir).predict_proba(PROBE_TEXTS),
        untouched_head_probs(tiny_model_dir, PROBE_TEXTS),
        atol=1e-5,
    )


def test_an_interrupted_finetune_encoder_run_resumes_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = ("fewshot.encoder=finetune", "fewshot.steps=8", "train.checkpoint_steps=3")
    straight = train(fewshot_config(tiny_model_dir, tmp_path, *overrides, f"output_dir={tmp_path / 'straight'}"))
    config = fewshot_config(tiny_model_dir, tmp_path, *overrides, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(5))
    resumed = train(config, resume=True)
    assert resumed.global_step == straight.global_step == 8
    expected = Predictor.from_dir(straight.run_dir).predict_logits(PROBE_TEXTS)
    np.testing.assert_allclose(Predictor.from_dir(resumed.run_dir).predict_logits(PROBE_TEXTS), expected, atol=1e-5)


def test_auto_encoder_fine_tunes_many_labels_and_trains_pairs_for_few(tiny_model_dir: Path) -> None:
    config = load_config(None, [f"model.name={tiny_model_dir}", "strategy=fewshot"])
    assert config.fewshot.encoder == "auto"
    assert resolve_encoder(config, FINETUNE_FROM_LABELS - 1) == "contrastive"
    assert resolve_encoder(config, FINETUNE_FROM_LABELS) == "finetune"
    assert resolve_encoder(config, 150) == "finetune"
    chosen = load_config(None, [f"model.name={tiny_model_dir}", "strategy=fewshot", "fewshot.encoder=contrastive"])
    assert resolve_encoder(chosen, 150) == "contrastive"


def test_the_pair_sampler_cost_is_linear_in_the_number_of_classes() -> None:
    """SetFit enumerates the sample's pairs (quadratic in examples, so in classes at fixed N per class); here a step
    draws one batch, so a run's sampling is one pass over the examples plus steps x batch draws, and every step
    trains on the same number of pairs however many classes there are."""

    def sample(classes: int) -> tuple[float, list[list[int]]]:
        groups = [g for g in range(classes) for _ in range(8)]
        best, batches = math.inf, []
        for _ in range(3):
            start = time.perf_counter()
            batches = contrastive_batches(groups, batch_size=32, steps=200, per_class=4, seed=0)
            best = min(best, time.perf_counter() - start)
        return best, batches

    small_time, small = sample(100)
    large_time, large = sample(3000)  # 30 times the classes, 24,000 examples
    assert [len(b) for b in small] == [len(b) for b in large] == [32] * 200
    assert large_time < 30 * small_time, (small_time, large_time)  # linear bound; quadratic would be 900 times
    # Every class is reached: 200 steps of 8 classes visit 1,600 of the 3,000 without repeating any.
    classes_seen = [b // 8 for batch in large for b in batch]
    assert len(set(classes_seen)) == 1600 and max(Counter(classes_seen).values()) == 4


def test_multi_label_finetune_encoder_trains_with_per_label_sigmoids(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_file = tmp_path / "train.csv"
    pd.DataFrame(make_multi_label_rows(20, seed=1)).to_csv(train_file, index=False)
    config = fewshot_config(
        tiny_model_dir,
        tmp_path,
        f"data.train={train_file}",
        "data.validation=null",
        "data.multi_label=true",
        "fewshot.encoder=finetune",
        "fewshot.steps=auto",
    )
    probe = ProbeAtStart(load_tokenizer(str(tiny_model_dir)))
    result = train(config, callbacks=[probe])
    assert result.global_step == 5 * 2 and result.eval_split == "train"
    losses = [r["loss"] for r in read_log(result.run_dir) if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    predictor = Predictor.from_dir(result.run_dir)
    assert predictor.multi_label
    probs = predictor.predict_proba(PROBE_TEXTS)
    assert probs.shape == (len(PROBE_TEXTS), len(LABELS))
    assert probe.probs is not None and not np.allclose(probs, probe.probs, atol=1e-3)  # trained from the start head
    assert not np.allclose(probs.sum(axis=1), 1.0, atol=1e-2)  # independent sigmoids, not a softmax
