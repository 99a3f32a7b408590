"""`adaptext distill`: a static-embedding student of a tiny trained run, loaded and served like any model folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo
from adaptext.data.examples import Splits, TextData
from adaptext.data.io import read_texts
from adaptext.distill import StudentSettings, distill_model
from adaptext.distill.distiller import training_labels
from adaptext.distill.student import (
    _token_positions,
    build_student,
    label_loss,
    logit_loss,
    soft_loss,
    train_student,
)
from adaptext.distill.texts import augment
from adaptext.inference.loaders import StaticLoader, loader_for
from adaptext.inference.predictor import Predictor
from adaptext.modeling.static import NUMPY_MAX_TEXTS, StaticClassifier, StaticConfig
from adaptext.strategies import train
from conftest import LEARNABLE, make_rows, served_in_thread

FAST = StudentSettings(dim=16, hidden=0, epochs=30, batch_size=16, learning_rate=2e-2, augment=2, init="teacher")
PROBES = ["refund my invoice please", "where is my parcel", "login error again", "the", ""]


@pytest.fixture(scope="module")
def teacher_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("distill-teacher")
    files = {}
    for split, n, seed in (("train", 120, 1), ("validation", 30, 2), ("test", 30, 3)):
        files[split] = folder / f"{split}.csv"
        pd.DataFrame(make_rows(n, seed=seed)).to_csv(files[split], index=False)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={files['train']}",
            f"data.validation={files['validation']}",
            f"data.test={files['test']}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            "train.precision=fp32",
            "seed=7",
            *LEARNABLE,
        ],
    )
    return train(config).run_dir


@pytest.fixture(scope="module")
def unlabelled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("distill-unlabelled") / "more.txt"
    path.write_text("\n".join(row["text"] for row in make_rows(90, seed=11)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def student(teacher_run: Path, unlabelled_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("distill-out") / "student"
    distill_model(teacher_run, output, unlabelled=unlabelled_file, settings=FAST)
    return output


def distill_cli(*argv: str) -> int:
    from adaptext.cli import distill

    parser = argparse.ArgumentParser()
    distill.add_parser(parser.add_subparsers())
    args = parser.parse_args(["distill", *argv])
    return int(args.func(args))


def test_the_command_lines_defaults_are_the_students_settings() -> None:
    from adaptext.cli import distill

    parser = argparse.ArgumentParser()
    distill.add_parser(parser.add_subparsers())
    assert distill.settings_from(parser.parse_args(["distill", "RUN", "--output", "OUT"])) == StudentSettings()


# the folder --------------------------------------------------------------------------------------------------------


def test_student_folder_holds_the_promised_files(student: Path, teacher_run: Path) -> None:
    names = {p.name for p in student.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "adaptext.json",
        "distill.json",
        "distill.html",
    } <= names
    info = ModelInfo.read(student)
    assert info.strategy == "distill" and info.labels == ["billing", "shipping", "technical"]
    summary = json.loads((student / "distill.json").read_text(encoding="utf-8"))
    assert summary["init"] == "model2vec"
    assert set(summary["agreement"]) == {"validation", "test"}
    assert summary["texts"]["unlabelled"] == 90
    assert "agreement" in (student / "distill.html").read_text(encoding="utf-8")
    assert loader_for(student, info).__class__ is StaticLoader


def test_student_learns_the_teacher(student: Path) -> None:
    summary = json.loads((student / "distill.json").read_text(encoding="utf-8"))
    losses = summary["epoch_losses"]
    assert losses[-1] < 0.5 * losses[0]
    # 3 labels: chance agreement is about 1/3; the keyword task is learnt by a bag of words
    assert summary["agreement"]["validation"] >= 0.9
    assert summary["accuracy"]["test"]["student"] >= 0.8


def test_student_reloads_with_the_same_logits(student: Path) -> None:
    first = Predictor.from_dir(student)
    assert isinstance(first.model, StaticClassifier)
    again = Predictor.from_dir(student)
    assert np.array_equal(first.predict_logits(PROBES), again.predict_logits(PROBES))
    # a padded batch predicts as one text at a time does
    one_by_one = np.concatenate([first.predict_logits([text]) for text in PROBES])
    np.testing.assert_allclose(first.predict_logits(PROBES), one_by_one, atol=1e-5)


def test_model2vec_reads_the_table(student: Path) -> None:
    from model2vec import StaticModel

    static = StaticModel.from_pretrained(student)
    mine = StaticClassifier.load(student)
    assert np.allclose(static.embedding, mine.embeddings.weight.detach().numpy())


# the commands that take any model folder ---------------------------------------------------------------------------


def test_evaluate_and_predict_take_the_student(student: Path, teacher_run: Path, tmp_path: Path) -> None:
    from adaptext.cli import main

    test_file = Path(load_config(teacher_run / "config.yaml").data.test or "")
    assert main(["-q", "evaluate", str(student), "--data", str(test_file), "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] >= 0.8
    out = tmp_path / "predictions.csv"
    assert main(["-q", "predict", str(student), "--input", str(test_file), "--output", str(out)]) == 0
    predicted = pd.read_csv(out)
    assert len(predicted) == 30
    expected = [p.label for p in Predictor.from_dir(student).predict(pd.read_csv(test_file).text.tolist())]
    assert predicted["label"].tolist() == expected


def test_serve_answers_with_the_student(student: Path) -> None:
    import httpx

    from adaptext.deploy.serve import ServeOptions, create_app, load_models

    models = load_models([str(student)])
    reference = Predictor.from_dir(student).predict(PROBES[:3])
    with served_in_thread(create_app(models, ServeOptions()), ServeOptions()) as (url, _):
        response = httpx.post(f"{url}/predict", json={"inputs": PROBES[:3]}, timeout=30)
    assert response.status_code == 200, response.text
    answers: list[list[dict[str, Any]]] = response.json()  # per text, every label with its score
    assert [max(a, key=lambda item: item["score"])["label"] for a in answers] == [p.label for p in reference]
    for answer, expected in zip(answers, reference, strict=True):
        assert {item["label"]: item["score"] for item in answer} == pytest.approx(expected.scores, abs=1e-5)


def test_export_refuses_a_student_by_name_and_writes_nothing(student: Path, teacher_run: Path, tmp_path: Path) -> None:
    from adaptext.deploy.export import export_onnx

    data = load_config(teacher_run / "config.yaml").data.validation
    with pytest.raises(AdaptextError, match="static-embedding student is not exported"):
        export_onnx(student, tmp_path / "onnx", data=data)
    assert not (tmp_path / "onnx").exists()


def test_cli_distills_and_refuses_a_folder_it_did_not_write(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-student"
    cli_args = ("--output", str(out), "--dim", "8", "--epochs", "2", "--augment", "0", "--loss", "mse")
    assert distill_cli(str(teacher_run), *cli_args) == 0
    assert Predictor.from_dir(out).predict(["refund"])[0].label in {"billing", "shipping", "technical"}
    report = json.loads((out / "distill.json").read_text(encoding="utf-8"))
    assert report["settings"]["loss"] == "mse"
    assert "squared difference of the logits" in (out / "distill.html").read_text(encoding="utf-8")
    with pytest.raises(AdaptextError, match="--overwrite"):
        distill_cli(str(teacher_run), "--output", str(out), "--epochs", "1")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(AdaptextError, match="not a folder adaptext wrote"):
        distill_cli(str(teacher_run), "--output", str(mine), "--epochs", "1")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# bad input ---------------------------------------------------------------------------------------------------------


def test_bad_unlabelled_files_name_the_file(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    missing = tmp_path / "missing.csv"
    with pytest.raises(AdaptextError, match=str(missing)):
        distill_model(teacher_run, out, unlabelled=missing, settings=FAST)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(AdaptextError, match=f"{empty}.*no text"):
        distill_model(teacher_run, out, unlabelled=empty, settings=FAST)
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"sentence": ["a b c"]}).to_csv(wrong, index=False)
    with pytest.raises(AdaptextError, match=f"{wrong}.*'text' not found"):
        distill_model(teacher_run, out, unlabelled=wrong, settings=FAST)
    assert not out.exists()  # a failed distillation writes nothing


def test_a_model_folder_needs_texts(teacher_run: Path, tmp_path: Path) -> None:
    import shutil

    alone = tmp_path / "alone"
    shutil.copytree(teacher_run / "model", alone)
    with pytest.raises(AdaptextError, match="--unlabelled"):
        distill_model(alone, tmp_path / "out", settings=FAST)


def test_a_label_weight_without_a_run_says_it_has_no_labels(
    teacher_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    alone = tmp_path / "alone"
    shutil.copytree(teacher_run / "model", alone)
    texts = tmp_path / "texts.txt"
    texts.write_text("refund my invoice\nwhere is my parcel\nlogin error\n", encoding="utf-8")
    settings = replace(FAST, epochs=1, augment=0, label_weight=0.5)
    distill_model(alone, tmp_path / "out", unlabelled=texts, settings=settings)
    assert "no training labels to use" in caplog.text


def test_a_negative_label_weight_or_temperature_is_refused_before_anything_is_written(
    teacher_run: Path, tmp_path: Path
) -> None:
    for weight in (-1.0, float("inf")):
        with pytest.raises(AdaptextError, match="label weight must be a number of at least 0"):
            distill_model(teacher_run, tmp_path / "out", settings=replace(FAST, label_weight=weight))
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(AdaptextError, match="temperature must be a number above 0"):
            distill_model(teacher_run, tmp_path / "out", settings=replace(FAST, temperature=temperature))
    assert not (tmp_path / "out").exists()


def test_read_texts_reads_tables_and_lines(write_csv: Any, tmp_path: Path) -> None:
    path = write_csv("more.jsonl", [{"review": "good film"}, {"review": "bad film"}])
    assert read_texts(path, "review") == ["good film", "bad film"]
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_texts(lines, "text") == ["one", "two"]


# the parts ---------------------------------------------------------------------------------------------------------


def test_augment_is_seeded_and_changes_texts() -> None:
    texts = ["please refund the invoice for my order today"] * 3
    first, second = augment(texts, 2, seed=1), augment(texts, 2, seed=1)
    assert first == second and len(first) == 6
    assert any(text != texts[0] for text in first)
    assert augment(["one"], 3, seed=1) == []  # a one-word text has nothing to change


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_each_loss_decreases_on_a_learnable_toy_task(loss: str) -> None:
    # two labels, each given away by one token; the teacher's logits are confident and right
    rng = np.random.default_rng(0)
    ids = [[int(rng.integers(2, 10)), 10 + (i % 2), int(rng.integers(2, 10))] for i in range(64)]
    teacher = np.array([[3.0, -3.0] if i % 2 == 0 else [-3.0, 3.0] for i in range(64)], dtype=np.float32)
    table = rng.normal(0, 1, size=(12, 8)).astype(np.float32)
    settings = StudentSettings(dim=8, epochs=40, batch_size=16, learning_rate=5e-2, loss=loss)
    model = build_student(table, ["a", "b"], "single_label_classification", settings, extra={})
    losses = train_student(model, ids, teacher, settings, multi_label=False)
    assert losses[-1] < 0.3 * losses[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids)).logits.numpy()
    assert (logits.argmax(1) == teacher.argmax(1)).mean() == 1.0


def test_training_labels_steer_the_student_where_the_teacher_is_wrong() -> None:
    # token 11 gives label b away, but the teacher leans to a for every text; the labels of half the texts say b
    rng = np.random.default_rng(0)
    ids = [[int(rng.integers(2, 10)), 10 + (i % 2), int(rng.integers(2, 10))] for i in range(64)]
    teacher = np.tile(np.array([[0.3, -0.3]], dtype=np.float32), (64, 1))
    labels = np.full((64, 2), np.nan, dtype=np.float32)
    labels[:32] = [[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(32)]
    table = rng.normal(0, 1, size=(12, 8)).astype(np.float32)
    decided = {}
    for weight in (0.0, 20.0):
        settings = StudentSettings(dim=8, epochs=40, batch_size=16, learning_rate=5e-2, label_weight=weight)
        model = build_student(table, ["a", "b"], "single_label_classification", settings, extra={})
        train_student(model, ids, teacher, settings, multi_label=False, labels=labels)
        with torch.no_grad():
            decided[weight] = model(input_ids=torch.tensor(ids[:32])).logits.argmax(1).numpy()  # the labelled texts
    assert (decided[0.0] == 0).all()  # the teacher alone: always a
    assert (decided[20.0] == np.arange(32) % 2).all()  # with their labels: b wherever token 11 is
    with pytest.raises(ValueError, match="needs the texts' labels"):
        train_student(model, ids, teacher, StudentSettings(label_weight=1.0), multi_label=False)


def test_label_loss_counts_only_texts_with_a_label() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]], requires_grad=True)
    nan = float("nan")
    labels = torch.tensor([[1.0, 0.0], [nan, nan], [0.0, 1.0]])
    expected = (np.log(2.0) + np.log1p(np.exp(10.0))) / 2  # the mean over the two labelled texts
    loss = label_loss(logits, labels, multi_label=False)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad is not None and not logits.grad[1].any()
    # multi-label: each label's binary cross-entropy, summed over labels
    multi = label_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), multi_label=True)
    assert multi.item() == pytest.approx(2 * np.log(2.0))
    assert label_loss(logits, torch.full((3, 2), nan), multi_label=False).item() == 0.0


def test_training_labels_mark_the_training_texts_only() -> None:
    train = TextData(texts=["a b", "c", "a b", "d"], source="t.csv", labels=[["x"], ["x", "y"], ["y"], []])
    splits = Splits(train=train, validation=train, test=None, labels=["x", "y"])
    labels = training_labels(splits, ["c", "a b", "new", "d"], ["x", "y"])
    np.testing.assert_array_equal(labels[[0, 1, 3]], [[1, 1], [1, 0], [0, 0]])  # first label of a repeated text
    assert np.isnan(labels[2]).all()
    assert np.isnan(training_labels(None, ["c"], ["x", "y"])).all()
    odd = TextData(texts=["c"], source="t.csv", labels=["z"])
    with pytest.raises(AdaptextError, match="'z'"):
        training_labels(Splits(train=odd, validation=odd, test=None, labels=["z"]), ["c"], ["x", "y"])


def test_soft_loss_is_zero_gradient_at_the_teacher() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    soft_loss(logits, logits.detach(), 2.0, multi_label=False).backward()
    assert logits.grad is not None and torch.allclose(logits.grad, torch.zeros(1, 3), atol=1e-6)


def test_logit_loss_ignores_a_common_shift_of_single_label_logits_only() -> None:
    teacher = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    assert logit_loss(teacher + 7.0, teacher, multi_label=False).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_loss(teacher + 7.0, teacher, multi_label=True).item() == pytest.approx(3 * 49.0)  # sigmoids move
    student = torch.tensor([[2.0, -2.0, 0.5], [0.0, 3.0, -1.0]], requires_grad=True)
    # first text: centred difference (2/3, -1/3, -1/3), squared and summed 2/3; the mean over two texts 1/3
    loss = logit_loss(student, teacher, multi_label=False)
    assert loss.item() == pytest.approx(1 / 3)
    loss.backward()
    assert student.grad is not None and not student.grad[1].any()


def test_static_classifier_round_trips(tmp_path: Path) -> None:
    config = StaticConfig(vocab_size=20, dim=4, id2label={0: "x", 1: "y"}, hidden=5, extra={"init": "random"})
    model = StaticClassifier(config).eval()
    model.save(tmp_path)
    again = StaticClassifier.load(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert torch.equal(
        model(input_ids=ids, attention_mask=mask).logits, again(input_ids=ids, attention_mask=mask).logits
    )
    assert again.config == config
    raw = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    raw["dim"] = 6
    (tmp_path / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="do not fit"):
        StaticClassifier.load(tmp_path)


def test_initial_table_falls_back_where_model2vec_cannot_read_the_teacher(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer, BertModel

    from adaptext.distill.student import initial_table

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    settings = StudentSettings(dim=8)
    table, init = initial_table(BertModel.from_pretrained(tiny_model_dir), tokenizer, settings)  # no head: no encoder
    assert init == "embeddings" and table.shape == (len(tokenizer), 8)
    table, init = initial_table(object(), tokenizer, settings)  # an ONNX session has no torch embeddings
    assert init == "random" and table.shape == (len(tokenizer), 8)
    assert "starts random" in caplog.text


def static_model(context_window: int = 0, **config: Any) -> StaticClassifier:
    """A random static classifier in eval mode; its context table (when it has one) random too, not zeros."""
    torch.manual_seed(0)
    defaults: dict[str, Any] = {"vocab_size": 50, "dim": 8, "id2label": {0: "x", 1: "y", 2: "z"}}
    model = StaticClassifier(StaticConfig(**(defaults | config), context_window=context_window)).eval()
    if model.context is not None:
        with torch.no_grad():
            model.context.weight.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize(("context", "pooling"), [(0, "mean"), (2, "mean"), (0, "mean+max"), (2, "mean+max")])
@pytest.mark.parametrize("hidden", [6, 0])
@pytest.mark.parametrize("path", ["torch", "numpy"])
def test_bag_logits_match_the_padded_forward(hidden: int, path: str, context: int, pooling: str) -> None:
    model = static_model(context, hidden=hidden, pooling=pooling)
    if path == "numpy":  # what Predictor gets: inference mode on the CPU, no hooks
        with torch.inference_mode():
            assert model._plain_cpu_inference()
        check_bag_logits(model, inference=True)
    else:
        assert not model._plain_cpu_inference()  # gradients on: the torch path
        check_bag_logits(model, inference=False)
    if path == "numpy":  # a large batch is faster in torch: numpy's share ends at NUMPY_MAX_TEXTS texts
        sizes: list[int] = []

        def counted(ids: list[list[int]]) -> np.ndarray:
            sizes.append(len(ids))
            return np.zeros((len(ids), 3), dtype=np.float32)

        model._numpy_logits = counted  # type: ignore[method-assign]
        with torch.inference_mode():
            model.bag_logits([[1]] * NUMPY_MAX_TEXTS)
            model.bag_logits([[1]] * (NUMPY_MAX_TEXTS + 1))
        del model._numpy_logits
        # past it only for a plain bag: with the context table or the maximum, numpy is faster at every batch size
        assert sizes == ([NUMPY_MAX_TEXTS] if model.plain_bag else [NUMPY_MAX_TEXTS, NUMPY_MAX_TEXTS + 1])
    hook = model.head[-1].register_forward_hook(lambda *_: None)  # an out-of-scope detector's tap needs torch
    with torch.inference_mode():
        assert not model._plain_cpu_inference()
    hook.remove()


def test_numpy_bag_logits_follow_changed_weights() -> None:
    torch.manual_seed(0)
    model = StaticClassifier(StaticConfig(vocab_size=30, dim=4, id2label={0: "x", 1: "y"}, hidden=5)).eval()
    rows = [[1, 2, 3], [4, 5]]
    with torch.inference_mode():
        model.bag_logits(rows)  # the numpy views are made
    with torch.no_grad():
        model.head[0].weight.data.mul_(2.0)  # in place, even through .data
        model.embeddings.weight.add_(0.5)
        model.head[-1].bias = torch.nn.Parameter(model.head[-1].bias + 1.0)  # replaced
        expected = model(
            input_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]), attention_mask=torch.tensor([[1] * 3, [1, 1, 0]])
        )
    with torch.inference_mode():
        torch.testing.assert_close(model.bag_logits(rows), expected.logits, rtol=1e-5, atol=1e-6)


def check_bag_logits(model: StaticClassifier, *, inference: bool) -> None:
    rows = [[2, 7, 9, 3], [2, 3], [2, 11, 12, 13, 14, 15, 3], [5]]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    padded = model(input_ids=ids, attention_mask=mask).logits.detach()
    with torch.inference_mode(inference):
        torch.testing.assert_close(model.bag_logits(rows), padded, rtol=1e-5, atol=1e-6)
        # in another order: each row is its own bag; a row without tokens pools to zeros, as padding would
        torch.testing.assert_close(model.bag_logits(rows[::-1]), padded.flip(0), rtol=1e-5, atol=1e-6)
        empty = model(input_ids=torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.zeros(1, 2)).logits
        torch.testing.assert_close(model.bag_logits([[], [5]])[:1], empty.detach(), rtol=1e-5, atol=1e-6)
        # the same tokens in another order are the same bag, unless each token's neighbours change it
        swapped = model.bag_logits([[2, 9, 7, 3]])
        assert torch.allclose(model.bag_logits([rows[0]]), swapped) is (model.context is None)
        # padding on the left gives what padding on the right gives: it scales no token
        left = torch.tensor([[0] * (width - len(row)) + row for row in rows])
        left_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        torch.testing.assert_close(model(input_ids=left, attention_mask=left_mask).logits.detach(), padded)


@pytest.mark.parametrize(("context", "pooling"), [(0, "mean"), (2, "mean"), (0, "mean+max"), (2, "mean+max")])
def test_texts_laid_end_to_end_pool_as_each_text_alone(context: int, pooling: str) -> None:
    # training's batches: no token of one text scales the next text's tokens or joins its mean or maximum
    model = static_model(context, hidden=6, pooling=pooling)
    rows = [[2, 7, 9, 3], [5], [], [2, 11, 12, 13, 14, 15, 3], [4, 4]]
    with torch.inference_mode():
        assert model._plain_cpu_inference()
        alone = torch.cat([model.bag_logits([row]) for row in rows])  # numpy, one text at a time
    flat = torch.tensor([token for row in rows for token in row])
    packed = model.packed_logits(flat, torch.tensor([len(row) for row in rows]))
    torch.testing.assert_close(packed.detach(), alone, rtol=1e-5, atol=1e-6)
    packed.sum().backward()  # only the rows of the texts' tokens get a gradient
    grad = model.embeddings.weight.grad
    assert grad is not None
    assert grad.abs().sum(dim=1).nonzero().flatten().tolist() == sorted(set(flat.tolist()))


def test_packed_and_padded_pooling_give_the_same_gradients_even_at_a_maximum_of_zero() -> None:
    model = static_model(2, hidden=0, pooling="mean+max")
    with torch.no_grad():
        model.embeddings.weight[4] = 0.0  # a row at 0 (as model2vec leaves some) is the maximum where the rest is < 0
        model.embeddings.weight[5] = -1.0
    # the texts [4, 5] and [5, 4, 5], laid end to end, then padded
    model.packed_logits(torch.tensor([4, 5, 5, 4, 5]), torch.tensor([2, 3])).sum().backward()
    packed = model.embeddings.weight.grad.clone()  # type: ignore[union-attr]
    model.zero_grad()
    ids, mask = torch.tensor([[4, 5, 0], [5, 4, 5]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    torch.testing.assert_close(packed, model.embeddings.weight.grad)


def test_token_positions_pick_each_texts_tokens_in_the_batch_order() -> None:
    starts, lengths = torch.tensor([5, 0, 9, 7]), torch.tensor([2, 3, 0, 1])
    assert _token_positions(starts, lengths).tolist() == [5, 6, 0, 1, 2, 7]


@pytest.mark.parametrize("pooling", ["mean", "mean+max"])
@pytest.mark.parametrize("path", ["torch", "numpy"])
def test_the_context_table_scales_each_token_by_the_tokens_before_it(path: str, pooling: str) -> None:
    model = static_model(2, hidden=0, pooling=pooling)
    table, context = model.embeddings.weight.detach(), model.context.weight.detach()  # type: ignore[union-attr]
    row = [4, 9, 7, 1]
    scale = [1 + 0 * context[4], 1 + context[4], 1 + context[4] + context[9], 1 + context[9] + context[7]]
    vectors = torch.stack([table[token] * s for token, s in zip(row, scale, strict=True)])
    pooled = vectors.mean(dim=0)
    if pooling == "mean+max":
        pooled = torch.cat([pooled, vectors.max(dim=0).values])
    expected = model.head(pooled[None]).detach()
    with torch.inference_mode(path == "numpy"):
        assert model._plain_cpu_inference() is (path == "numpy")
        torch.testing.assert_close(model.bag_logits([row]), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.bag_logits([row] * (NUMPY_MAX_TEXTS + 1))[:1], expected, rtol=1e-5, atol=1e-6)


def test_a_static_classifier_with_context_round_trips_and_an_older_folder_loads_as_a_bag(tmp_path: Path) -> None:
    model = static_model(3, hidden=5, pooling="mean+max")
    model.save(tmp_path / "context")
    again = StaticClassifier.load(tmp_path / "context").eval()
    assert again.config == model.config and again.context is not None
    assert torch.equal(again.context.weight, model.context.weight)  # type: ignore[union-attr]
    with torch.inference_mode():
        torch.testing.assert_close(again.bag_logits([[1, 2, 3]]), model.bag_logits([[1, 2, 3]]))
    plain = static_model(0, hidden=5)
    plain.save(tmp_path / "plain")
    raw = json.loads((tmp_path / "plain" / "config.json").read_text(encoding="utf-8"))
    del raw["context_window"], raw["pooling"]  # a folder written before the context table and the maximum
    (tmp_path / "plain" / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    older = StaticClassifier.load(tmp_path / "plain")
    assert older.context is None and older.plain_bag
    with pytest.raises(ValueError, match="pooling 'max'"):
        static_model(0, pooling="max")
