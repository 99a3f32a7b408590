"""`adaptext audit`: planted label errors ranked first, duplicates and leakage found, bad input refused."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from adaptext.audit import AuditSettings, audit_files
from adaptext.cli import main
from adaptext.core.config import DataConfig
from adaptext.core.errors import AdaptextError, DataError
from adaptext.data.io import load_examples
from conftest import LABELS, make_rows, train_keyword_run

FLIPPED = [5, 25, 45, 65, 85, 105]  # 0-based positions of the planted errors among 120 rows
AUDIT_FILES = {".adaptext", "suspects.csv", "duplicates.csv", "audit.json", "audit.html", "debug.log"}


def noisy_rows(n: int = 120, seed: int = 1) -> list[dict[str, str]]:
    """Keyword rows with the label of each row in `FLIPPED` moved on to the next label."""
    rows = make_rows(n, seed=seed)
    for i in FLIPPED:
        if i < n:
            rows[i]["label"] = LABELS[(LABELS.index(rows[i]["label"]) + 1) % len(LABELS)]
    return rows


def tiny(encoder: Path, **changes: object) -> AuditSettings:
    return AuditSettings(encoder=str(encoder), max_length=32, **changes)  # type: ignore[arg-type]


def test_planted_label_errors_rank_at_the_top(tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path):
    train = write_csv("train.csv", noisy_rows())
    result = audit_files(train, tmp_path / "audit", settings=tiny(tiny_model_dir))
    top = set(result.ranking[:12].tolist())  # the most suspicious 10%
    assert len(top & set(FLIPPED)) >= 4, sorted(top)
    # Rows are the file's data rows (1 = first after the header), as in every adaptext message.
    suspects = pd.read_csv(tmp_path / "audit" / "suspects.csv")
    assert list(suspects.columns) == [
        "rank",
        "row",
        "text",
        "given_label",
        "suggested_label",
        "confidence",
        "label_quality",
    ]
    assert suspects["rank"].tolist() == list(range(1, len(suspects) + 1))
    assert suspects["label_quality"].is_monotonic_increasing
    original = make_rows(120, seed=1)
    for record in suspects.itertuples():
        assert record.text == original[record.row - 1]["text"]


@pytest.mark.bundled
def test_bundled_model_finds_every_planted_error_first(write_csv: Callable[..., Path], tmp_path: Path) -> None:
    train = write_csv("train.csv", noisy_rows())
    result = audit_files(train, tmp_path / "audit")
    assert sorted(result.ranking[: len(FLIPPED)].tolist()) == FLIPPED
    original = make_rows(120, seed=1)
    suspects = {s.row: s for s in result.suspects}
    assert suspects, "confident learning flagged nothing"
    for row, suspect in suspects.items():
        assert row - 1 in FLIPPED
        assert suspect.suggested_label == original[row - 1]["label"] != suspect.given_label
        assert suspect.confidence > 0.5


def test_exact_near_duplicates_and_leakage_are_found_with_their_rows(
    tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    rows = make_rows(30, seed=4)
    rows[10] = {"text": "my invoice refund is not here today", "label": "billing"}
    rows[20] = {"text": "  My INVOICE refund is not  here today", "label": "shipping"}  # exact, labels disagree
    rows[12] = {"text": "crash error login again why", "label": "technical"}
    rows[25] = {"text": "why again login error crash", "label": "technical"}  # the same words: near
    test_rows = make_rows(9, seed=5)
    test_rows[3] = {"text": "Crash error login again why", "label": "technical"}  # leaked from train row 13
    train = write_csv("train.csv", rows)
    test = write_csv("test.csv", test_rows)
    result = audit_files(train, tmp_path / "audit", test=test, settings=tiny(tiny_model_dir, near_threshold=0.98))
    exact = {(d.split_a, d.row_a, d.split_b, d.row_b, d.conflict) for d in result.duplicates if d.kind == "exact"}
    assert exact == {("train", 11, "train", 21, True), ("train", 13, "test", 4, False)}
    near = {(d.split_a, d.row_a, d.split_b, d.row_b) for d in result.duplicates if d.kind == "near"}
    assert ("train", 13, "train", 26) in near
    assert ("train", 26, "test", 4) in near  # the leaked row is also close to the reordered one
    assert result.summary()["leakage"]["train-test"] >= 1
    table = pd.read_csv(tmp_path / "audit" / "duplicates.csv", keep_default_na=False)
    first = table.iloc[0]  # leakage is listed first
    assert (first["split_a"], first["split_b"]) == ("train", "test")
    conflict = table[(table["kind"] == "exact") & (table["split_b"] == "train")].iloc[0]
    assert (conflict["row_a"], conflict["label_a"], conflict["row_b"], conflict["label_b"], conflict["conflict"]) == (
        11,
        "billing",
        21,
        "shipping",
        "yes",
    )


def test_same_seed_gives_the_same_audit(tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path):
    train = write_csv("train.csv", noisy_rows())
    first = audit_files(train, tmp_path / "a", settings=tiny(tiny_model_dir, seed=3))
    second = audit_files(train, tmp_path / "b", settings=tiny(tiny_model_dir, seed=3))
    assert first.ranking.tolist() == second.ranking.tolist()
    for name in ("suspects.csv", "duplicates.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_label_with_fewer_rows_than_folds_uses_fewer_folds(
    tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = make_rows(60, seed=2, labels=["billing", "shipping"]) + make_rows(3, seed=3, labels=["technical"])
    train = write_csv("train.csv", rows)
    with caplog.at_level(logging.WARNING, logger="adaptext"):
        result = audit_files(train, tmp_path / "audit", settings=tiny(tiny_model_dir, folds=5))
    assert result.settings["folds_used"] == 3
    assert "fewer than 5 folds" in caplog.text
    assert result.n_rows == 63


def test_bad_input_fails_in_one_line_and_writes_nothing(
    tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "audit"
    missing = write_csv("nolabel.csv", [{"text": r["text"], "category": r["label"]} for r in make_rows(20)])
    with pytest.raises(DataError, match=r"nolabel.csv: column 'label' not found") as error:
        audit_files(missing, out, settings=tiny(tiny_model_dir))
    assert "\n" not in str(error.value)
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"text,label\n\xff\xfe bad,billing\n")
    with pytest.raises(DataError, match=r"broken.csv: line 2: .* not valid UTF-8"):
        audit_files(broken, out, settings=tiny(tiny_model_dir))
    assert not out.exists()

    train = write_csv("train.csv", make_rows(30))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(AdaptextError, match="not a folder adaptext wrote"):
        audit_files(train, mine, settings=tiny(tiny_model_dir))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    onnx = tmp_path / "export"
    onnx.mkdir()
    (onnx / "config.json").write_text("{}", encoding="utf-8")
    (onnx / "model.onnx").write_bytes(b"")
    with pytest.raises(AdaptextError, match=r"export: is a ONNX model, which has no encoder"):
        audit_files(train, out, settings=AuditSettings(model=str(onnx)))
    assert not out.exists()


def test_cli_writes_the_promised_files_and_replaces_only_with_overwrite(
    tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = noisy_rows(60)
    rows[7]["text"] = rows[8]["text"] = "<script>alert('x')</script> refund"  # a duplicate: shown on the page
    train = write_csv("train.csv", rows)
    validation = write_csv("validation.csv", [{"text": rows[0]["text"].upper(), "label": rows[0]["label"]}])
    out = tmp_path / "audit"
    argv = ["audit", str(train), "--output", str(out), "--validation", str(validation)]
    argv += ["--encoder", str(tiny_model_dir), "--max-length", "32", "--folds", "3", "--near-threshold", "0.995"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "60 rows:" in printed and "2 exact" in printed and "leakage: train-validation 1" in printed
    assert str(out / "audit.html") in printed
    assert {p.name for p in out.iterdir()} == AUDIT_FILES
    record = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert record["counts"]["leakage"]["train-validation"] == 1
    assert record["settings"]["folds_used"] == 3
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert main(argv) == 2
    assert "use --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == AUDIT_FILES


def test_an_encoder_folder_given_as_the_model_is_read_as_that_encoder(
    tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    # The tiny model is a bare encoder (BertModel, no classifier head), as an `adaptext pretrain` run leaves one.
    train = write_csv("train.csv", noisy_rows(60))
    result = audit_files(train, tmp_path / "audit", settings=AuditSettings(model=str(tiny_model_dir), folds=3))
    assert result.settings["encoder_source"] == str(tiny_model_dir)
    assert result.probabilities.shape == (60, 3)
    assert result.targets.tolist()[:3] == [LABELS.index(r["label"]) for r in noisy_rows(60)[:3]]


def test_a_saved_classifier_gives_the_embeddings_of_its_final_layer(
    tiny_model_dir: Path, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    import numpy as np

    from adaptext.audit.features import embed_data, load_encoder
    from adaptext.inference.predictor import Predictor
    from adaptext.modeling.embedding import embed, encode_texts

    run = train_keyword_run(tmp_path, tiny_model_dir)
    train = write_csv("train.csv", noisy_rows(30))
    encoder = load_encoder(run, "unused", max_length=32)
    assert encoder.source == str(run) and encoder.model.config.id2label == Predictor.from_dir(run).model.config.id2label
    data = load_examples(train, DataConfig())
    got = embed_data(encoder, data, progress=False)
    raw = embed(encoder.model, encode_texts(encoder.tokenizer, data, 32), pad_token_id=encoder.tokenizer.pad_token_id)
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_a_text_in_three_files_leaks_between_all_and_repeats_stay_one_group() -> None:
    import numpy as np

    from adaptext.audit.duplicates import Split, find_duplicates
    from adaptext.data.examples import TextData

    def data(texts: list[str], name: str) -> TextData:
        return TextData(texts=texts, source=name, labels=["a"] * len(texts), rows=list(range(1, len(texts) + 1)))

    train = ["thanks"] * 30 + ["thanks!"] * 30 + ["the same everywhere"]
    splits = [Split("train", data(train, "train")), Split("validation", data(["the same everywhere"], "v")),
              Split("test", data(["The same  everywhere"], "t"))]  # fmt: skip
    # "thanks" and "thanks!" embed alike; every other text points its own way.
    vectors = {"thanks": [1.0, 0.0, 0.0], "thanks!": [0.999, 0.0447, 0.0], "the same everywhere": [0.0, 0.0, 1.0]}
    embeddings = [np.asarray([vectors[t.lower().replace("  ", " ")] for t in s.data.texts]) for s in splits]
    embeddings = [e / np.linalg.norm(e, axis=1, keepdims=True) for e in embeddings]
    found = find_duplicates(splits, embeddings, threshold=0.99, progress=False)
    exact = [(d.split_a, d.row_a, d.split_b, d.row_b) for d in found if d.kind == "exact"]
    assert len([p for p in exact if p[2] == "train"]) == 29 + 29  # each repeat against the first of its text
    assert {p for p in exact if p[2] != "train"} == {
        ("train", 61, "validation", 1),
        ("train", 61, "test", 1),
        ("validation", 1, "test", 1),
    }
    near = [(d.split_a, d.row_a, d.split_b, d.row_b) for d in found if d.kind == "near"]
    assert near == [("train", 1, "train", 31)]  # one pair between the two groups, not 30 x 30
