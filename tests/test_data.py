"""Reading labelled files and checking them: every format, every kind of label, every bad input."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adaptext.core.config import Config, DataConfig, load_config
from adaptext.core.errors import DataError
from adaptext.data.batching import Encoded, map_batches
from adaptext.data.examples import TextData
from adaptext.data.io import load_examples, read_table
from adaptext.data.splits import load_splits, stratified_split
from conftest import LABELS, make_chinese_rows, make_rows

FORMATS = ["csv", "tsv", "jsonl", "parquet"]
WriteFile = Callable[[str, list[dict[str, object]]], Path]


def splits_config(*overrides: str) -> Config:
    return load_config(None, list(overrides))


def labelled(labels: list[str]) -> TextData:
    return TextData(
        texts=[f"text {i}" for i in range(len(labels))],
        source="memory",
        labels=labels,
        rows=list(range(1, len(labels) + 1)),
    )


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_rows(write_csv: WriteFile, fmt: str) -> None:
    rows = make_rows(12, seed=5)
    data = load_examples(write_csv(f"train.{fmt}", rows), DataConfig())
    assert data.texts == [r["text"] for r in rows]
    assert data.labels == [r["label"] for r in rows]
    assert data.rows == list(range(1, 13))
    assert data.pairs is None
    assert len(data) == 12


@pytest.mark.parametrize("fmt", FORMATS)
def test_numeric_labels_become_strings(write_csv: WriteFile, fmt: str) -> None:
    rows = [{"text": f"example {i}", "label": i % 2} for i in range(6)]
    data = load_examples(write_csv(f"train.{fmt}", rows), DataConfig())
    assert data.labels == ["0", "1", "0", "1", "0", "1"]
    assert all(isinstance(label, str) for label in data.labels)


def test_numeric_labels_stay_strings_through_load_splits(write_csv: WriteFile) -> None:
    train = write_csv("train.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(20)])
    validation = write_csv("validation.csv", [{"text": "v 0", "label": 0}, {"text": "v 1", "label": 1}])
    splits = load_splits(splits_config(f"data.train={train}", f"data.validation={validation}"))
    assert splits.labels == ["0", "1"]
    assert set(splits.train.labels or []) == {"0", "1"}
    assert splits.validation.labels == ["0", "1"]


def test_label_strings_are_not_reinterpreted(write_csv: WriteFile) -> None:
    rows = [{"text": "a", "label": "01"}, {"text": "b", "label": "1"}, {"text": "c", "label": "true"}]
    for fmt in ("csv", "jsonl"):
        data = load_examples(write_csv(f"train.{fmt}", rows), DataConfig())
        assert data.labels == ["01", "1", "true"], fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_pairs(write_csv: WriteFile, fmt: str) -> None:
    rows = [
        {"premise": "the parcel is late", "hypothesis": "delivery issue", "label": "entail"},
        {"premise": "my login fails", "hypothesis": "a billing issue", "label": "contradict"},
    ]
    cfg = DataConfig(text_column="premise", text_pair_column="hypothesis")
    data = load_examples(write_csv(f"pairs.{fmt}", rows), cfg)
    assert data.texts == ["the parcel is late", "my login fails"]
    assert data.pairs == ["delivery issue", "a billing issue"]
    assert data.labels == ["entail", "contradict"]


def test_text_pair_column_missing_is_named(write_csv: WriteFile) -> None:
    path = write_csv("pairs.csv", [{"premise": "a", "label": "x"}])
    cfg = DataConfig(text_column="premise", text_pair_column="hypothesis")
    with pytest.raises(DataError, match="'hypothesis' not found"):
        load_examples(path, cfg)


def test_empty_text_pair_names_row(write_csv: WriteFile) -> None:
    rows = [{"a": "x", "b": "y", "label": "p"}, {"a": "x", "b": "", "label": "q"}]
    with pytest.raises(DataError, match=r"row 2: column 'b' is empty"):
        load_examples(write_csv("pairs.csv", rows), DataConfig(text_column="a", text_pair_column="b"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_chinese_text_and_labels_survive(write_csv: WriteFile, fmt: str) -> None:
    rows = make_chinese_rows(10)
    data = load_examples(write_csv(f"zh.{fmt}", rows), DataConfig())
    assert data.texts == [r["text"] for r in rows]
    assert data.labels == [r["label"] for r in rows]
    assert set(data.labels) == {"正面", "负面"}


def test_chinese_column_names(tmp_path: Path) -> None:
    path = tmp_path / "zh.csv"
    path.write_text("文本,标签\n服务很好,正面\n房间很差,负面\n", encoding="utf-8")
    data = load_examples(path, DataConfig(text_column="文本", label_column="标签"))
    assert data.texts == ["服务很好", "房间很差"]
    assert data.labels == ["正面", "负面"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_utf8_with_bom_reads(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bom{suffix}"
    if suffix == ".jsonl":
        text = '{"text": "服务很好", "label": "正面"}\n{"text": "太差了", "label": "负面"}\n'
    else:
        sep = "\t" if suffix == ".tsv" else ","
        text = f"text{sep}label\n服务很好{sep}正面\n太差了{sep}负面\n"
    path.write_bytes(text.encode("utf-8-sig"))
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert list(read_table(path).columns) == ["text", "label"]  # no BOM glued to the first column
    data = load_examples(path, DataConfig())
    assert data.texts == ["服务很好", "太差了"]
    assert data.labels == ["正面", "负面"]


def test_csv_quoted_fields_keep_commas_and_newlines(write_csv: WriteFile) -> None:
    rows = [{"text": 'he said "hi", then left', "label": "a"}, {"text": "two\nlines", "label": "b"}]
    data = load_examples(write_csv("q.csv", rows), DataConfig())
    assert data.texts == ['he said "hi", then left', "two\nlines"]


def test_csv_row_with_too_many_fields_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("text,label\nhello, world,greeting\nbye, now,farewell\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2|row 1"):
        load_examples(path, DataConfig())


# --- multi-label -----------------------------------------------------------------------------


def test_multi_label_from_json_lists(tmp_path: Path) -> None:
    path = tmp_path / "ml.jsonl"
    records = [
        {"text": "refund and crash", "label": ["billing", "technical"]},
        {"text": "nothing applies", "label": []},
        {"text": "late parcel", "label": ["shipping"]},
        {"text": "numbers", "label": [1, 2]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    data = load_examples(path, DataConfig(multi_label=True))
    assert data.labels == [["billing", "technical"], [], ["shipping"], ["1", "2"]]


def test_multi_label_from_parquet_lists(write_csv: WriteFile) -> None:
    rows = [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": ["y"]}]
    data = load_examples(write_csv("ml.parquet", rows), DataConfig(multi_label=True))
    assert data.labels == [["x", "y"], ["y"]]


def test_multi_label_from_delimited_csv(write_csv: WriteFile) -> None:
    rows = [
        {"text": "refund and crash", "label": "billing;technical"},
        {"text": "late parcel", "label": "shipping"},
        {"text": "nothing", "label": ""},
        {"text": "spaces", "label": " billing ; shipping "},
    ]
    data = load_examples(write_csv("ml.csv", rows), DataConfig(multi_label=True, label_delimiter=";"))
    assert data.labels == [["billing", "technical"], ["shipping"], [], ["billing", "shipping"]]


def test_multi_label_default_delimiter_and_json_list_in_csv(write_csv: WriteFile) -> None:
    rows = [{"text": "a", "label": "x|y"}, {"text": "b", "label": '["y", "z"]'}]
    data = load_examples(write_csv("ml.csv", rows), DataConfig(multi_label=True))
    assert data.labels == [["x", "y"], ["y", "z"]]


def test_list_label_without_multi_label_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ml.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x", "y"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2.*multi_label"):
        load_examples(path, DataConfig())


def test_multi_label_load_splits_keeps_label_lists(write_csv: WriteFile) -> None:
    rows = [{"text": f"t {i}", "label": ["a", "b"][i % 2] + ("|c" if i % 3 == 0 else "")} for i in range(30)]
    train = write_csv("ml.csv", rows)
    splits = load_splits(splits_config(f"data.train={train}", "data.multi_label=true"))
    assert splits.labels == ["a", "b", "c"]
    for split in (splits.train, splits.validation):
        assert all(isinstance(value, list) for value in split.labels or [])


# --- bad inputs: each names the file and the row or column -----------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="not found") as info:
        load_examples(path, DataConfig())
    assert str(path) in str(info.value)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="folder"):
        load_examples(folder, DataConfig())


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_empty_text_file_says_empty(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_examples(path, DataConfig())


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_header_only(write_csv: WriteFile, tmp_path: Path, fmt: str) -> None:
    if fmt == "parquet":
        path = tmp_path / "header.parquet"
        pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(path)
    else:
        path = tmp_path / f"header.{fmt}"
        path.write_text("text\tlabel\n" if fmt == "tsv" else "text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows") as info:
        load_examples(path, DataConfig())
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_column_lists_the_columns_found(write_csv: WriteFile, fmt: str) -> None:
    path = write_csv(f"train.{fmt}", [{"sentence": "a", "category": "x"}])
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    message = str(info.value)
    assert str(path) in message
    assert "'text' not found" in message
    assert "'sentence'" in message
    assert "'category'" in message


def test_missing_label_column_is_named(write_csv: WriteFile) -> None:
    path = write_csv("train.csv", [{"text": "a", "category": "x"}])
    with pytest.raises(DataError, match="'label' not found"):
        load_examples(path, DataConfig())
    assert load_examples(path, DataConfig(), with_labels=False).labels is None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_text_names_the_row(write_csv: WriteFile, fmt: str, blank: str) -> None:
    rows = make_rows(5)
    rows[2]["text"] = blank  # the third data row
    path = write_csv(f"train.{fmt}", rows)
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    message = str(info.value)
    assert str(path) in message
    assert "row 3:" in message
    assert "'text'" in message


def test_null_text_in_jsonl_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    lines = ['{"text": "a", "label": "x"}', '{"text": null, "label": "y"}', '{"label": "x"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2: column 'text' is empty"):
        load_examples(path, DataConfig())


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_label_names_the_row(write_csv: WriteFile, fmt: str) -> None:
    rows: list[dict[str, object]] = list(make_rows(5))
    rows[3]["label"] = None
    path = write_csv(f"train.{fmt}", rows)
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    message = str(info.value)
    assert str(path) in message
    assert "row 4:" in message
    assert "'label'" in message


def test_unseen_validation_label_names_file_row_and_label(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(30))
    rows = make_rows(6, seed=2)
    rows[4]["label"] = "refunds"
    validation = write_csv("validation.csv", rows)
    with pytest.raises(DataError) as info:
        load_splits(splits_config(f"data.train={train}", f"data.validation={validation}"))
    message = str(info.value)
    assert str(validation) in message
    assert "row 5:" in message
    assert "'refunds'" in message
    for known in LABELS:
        assert repr(known) in message


def test_unseen_test_label_names_file_row_and_label(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(30))
    rows = make_rows(6, seed=3)
    rows[0]["label"] = "other"
    test = write_csv("test.csv", rows)
    with pytest.raises(DataError) as info:
        load_splits(splits_config(f"data.train={train}", f"data.test={test}"))
    message = str(info.value)
    assert str(test) in message
    assert "row 1:" in message
    assert "'other'" in message


def test_unseen_multi_label_in_validation(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", [{"text": f"t{i}", "label": "a|b" if i % 2 else "b"} for i in range(10)])
    validation = write_csv("validation.csv", [{"text": "v", "label": "a"}, {"text": "w", "label": "b|zz"}])
    config = splits_config(f"data.train={train}", f"data.validation={validation}", "data.multi_label=true")
    with pytest.raises(DataError, match=r"validation\.csv: row 2: label 'zz'"):
        load_splits(config)


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\ngood text,a\nbad \xff\xfe text,b\nmore,a\n")
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "UTF-8" in message


def test_utf16_file_is_rejected_at_line_1(tmp_path: Path) -> None:
    path = tmp_path / "utf16.csv"
    path.write_bytes("text,label\na,x\n".encode("utf-16"))
    with pytest.raises(DataError, match="line 1"):
        load_examples(path, DataConfig())


def test_single_class_in_training(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(10, labels=["billing"]))
    with pytest.raises(DataError) as info:
        load_splits(splits_config(f"data.train={train}"))
    message = str(info.value)
    assert str(train) in message
    assert "'billing'" in message
    assert "at least two" in message


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    message = str(info.value)
    assert str(path) in message
    assert "'.txt'" in message
    assert ".csv" in message
    assert ".parquet" in message


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": \n',
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        load_examples(path, DataConfig())
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "JSON" in message


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: expected a JSON object"):
        load_examples(path, DataConfig())


def test_damaged_parquet(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="Parquet") as info:
        load_examples(path, DataConfig())
    assert str(path) in str(info.value)


def test_train_not_set() -> None:
    with pytest.raises(DataError, match=r"data\.train"):
        load_splits(splits_config())


# --- stratified_split and load_splits ---------------------------------------------------------


def test_stratified_split_is_deterministic_disjoint_and_complete() -> None:
    data = labelled([label for label in LABELS for _ in range(40)])
    kept, held = stratified_split(data, 0.25, seed=3)
    assert (kept, held) == stratified_split(data, 0.25, seed=3)
    assert (kept, held) != stratified_split(data, 0.25, seed=4)
    assert not set(kept) & set(held)
    assert sorted(kept + held) == list(range(len(data)))
    held_counts = Counter(data.labels[i] for i in held)  # type: ignore[index]
    assert held_counts == dict.fromkeys(LABELS, 10)  # exactly a quarter of each class


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.45])
def test_stratified_split_share_per_class(fraction: float) -> None:
    counts = {"big": 200, "mid": 37, "small": 9, "tiny": 2, "one": 1}
    data = labelled([label for label, n in counts.items() for _ in range(n)])
    kept, held = stratified_split(data, fraction, seed=0)
    kept_counts = Counter(data.labels[i] for i in kept)  # type: ignore[index]
    held_counts = Counter(data.labels[i] for i in held)  # type: ignore[index]
    for label, n in counts.items():
        assert kept_counts[label] >= 1, label  # every class keeps a training example
        assert abs(held_counts[label] - n * fraction) <= 1, label
    assert abs(len(held) - len(data) * fraction) <= len(counts)


def test_stratified_split_multi_label_keeps_every_label() -> None:
    combos = [["a"], ["a", "b"], ["b", "c"], ["c"]]
    labels = [combos[i % 4] for i in range(41)] + [["d", "a"]]
    data = TextData(texts=["t"] * len(labels), source="m", labels=labels, rows=list(range(1, 43)))
    kept, held = stratified_split(data, 0.3, seed=0)
    assert sorted(kept + held) == list(range(len(labels)))
    kept_labels = {label for i in kept for label in labels[i]}
    assert kept_labels == {"a", "b", "c", "d"}


def _row_sets(*splits: TextData | None) -> list[set[int]]:
    return [set(split.rows) for split in splits if split is not None]


def test_load_splits_carves_validation_from_train(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(120, seed=1))
    splits = load_splits(splits_config(f"data.train={train}", "data.validation_fraction=0.2"))
    assert splits.labels == sorted(LABELS)
    assert splits.test is None
    assert len(splits.validation) == 24
    assert len(splits.train) == 96
    train_rows, validation_rows = _row_sets(splits.train, splits.validation)
    assert not train_rows & validation_rows
    assert train_rows | validation_rows == set(range(1, 121))
    assert "validation split" in splits.validation.source
    assert Counter(splits.validation.labels) == dict.fromkeys(LABELS, 8)  # type: ignore[arg-type]
    # Texts travel with their rows.
    frame = pd.read_csv(train)
    for row, text in zip(splits.validation.rows, splits.validation.texts, strict=True):
        assert frame["text"][row - 1] == text


def test_load_splits_carves_validation_and_test(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(150, seed=1))
    config = splits_config(f"data.train={train}", "data.validation_fraction=0.1", "data.test_fraction=0.2", "seed=5")
    splits = load_splits(config)
    assert splits.test is not None
    assert len(splits.test) == 30
    assert "test split" in splits.test.source
    train_rows, validation_rows, test_rows = _row_sets(splits.train, splits.validation, splits.test)
    assert not train_rows & validation_rows
    assert not train_rows & test_rows
    assert not validation_rows & test_rows
    assert train_rows | validation_rows | test_rows == set(range(1, 151))
    for split in (splits.train, splits.validation, splits.test):
        assert set(split.labels or []) == set(LABELS)
    again = load_splits(config)
    assert _row_sets(again.train, again.validation, again.test) == [train_rows, validation_rows, test_rows]


def test_load_splits_with_files_uses_them_as_given(data_files: dict[str, Path]) -> None:
    config = splits_config(*(f"data.{name}={path}" for name, path in data_files.items()))
    splits = load_splits(config)
    assert (len(splits.train), len(splits.validation), len(splits.test or [])) == (120, 30, 30)
    assert splits.validation.source == str(data_files["validation"])


def test_load_splits_tiny_training_set_keeps_every_class(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(6))  # two rows per class
    splits = load_splits(splits_config(f"data.train={train}", "data.validation_fraction=0.4"))
    assert set(splits.train.labels or []) == set(LABELS)


def test_load_splits_too_few_rows_for_validation(write_csv: WriteFile) -> None:
    train = write_csv("train.csv", make_rows(2, labels=["billing", "shipping"]))
    with pytest.raises(DataError, match=r"data\.validation") as info:
        load_splits(splits_config(f"data.train={train}"))
    assert str(train) in str(info.value)


# --- one label spelling in every format (issue item 10) ---------------------------------------------


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, labels: list[object]) -> Path:
    return _write_text(path, "".join(json.dumps({"text": f"t {i}", "label": v}) + "\n" for i, v in enumerate(labels)))


def test_a_label_reads_the_same_in_every_format(tmp_path: Path) -> None:
    # The same labels as a person writes them in CSV/TSV and as JSONL and Parquet type them.
    expected = ["1", "2", "true", "false", "2.5", "pos"]

    def delimited(name: str, sep: str, cells: list[str]) -> Path:
        lines = [f"text{sep}label", *(f"t {i}{sep}{cell}" for i, cell in enumerate(cells))]
        return _write_text(tmp_path / name, "\n".join(lines) + "\n")

    files = {
        "csv": delimited("a.csv", ",", ["1", "2", "true", "false", "2.5", "pos"]),
        "csv, other spellings": delimited("b.csv", ",", ["1", "2", "True", "FALSE", "2.5", " pos "]),
        "tsv": delimited("a.tsv", "\t", ["1", "2", "True", "False", "2.5", "pos"]),
        "jsonl typed": _jsonl(tmp_path / "a.jsonl", [1, 2.0, True, False, 2.5, "pos"]),
        "jsonl strings": _jsonl(tmp_path / "b.jsonl", ["1", "2", "true", "false", "2.5", "pos"]),
    }
    for name, path in files.items():
        assert load_examples(path, DataConfig()).labels == expected, name
    # Parquet columns have one type each: ints, floats (as an integer column that once had gaps is), booleans.
    columns: dict[str, tuple[list[object], list[str]]] = {
        "int": ([1, 2], ["1", "2"]),
        "float": ([1.0, 2.0, 2.5], ["1", "2", "2.5"]),
        "bool": ([True, False], ["true", "false"]),
    }
    for name, (values, want) in columns.items():
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"text": [f"t {i}" for i in range(len(values))], "label": values}).to_parquet(path)
        assert load_examples(path, DataConfig()).labels == want, name


def test_multi_label_names_read_the_same_in_every_format(tmp_path: Path) -> None:
    csv_file = _write_text(tmp_path / "ml.csv", 'text,label\na,1|2|true\nb,"[1, 2.0, true]"\n')
    jsonl = _jsonl(tmp_path / "ml.jsonl", [[1, 2.0, True], "1|2|True"])
    parquet = tmp_path / "ml.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [[1.0, 2.0], [2.0]]}).to_parquet(parquet)
    config = DataConfig(multi_label=True)
    assert load_examples(csv_file, config).labels == [["1", "2", "true"], ["1", "2", "true"]]
    assert load_examples(jsonl, config).labels == [["1", "2", "true"], ["1", "2", "true"]]
    assert load_examples(parquet, config).labels == [["1", "2"], ["2"]]


def test_mixed_formats_give_one_label_map(write_csv: WriteFile, tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [i % 2 == 0 for i in range(20)])
    validation = _write_text(tmp_path / "validation.csv", "text,label\nv 0,True\nv 1,false\n")
    splits = load_splits(splits_config(f"data.train={train}", f"data.validation={validation}"))
    assert splits.labels == ["false", "true"]
    assert splits.validation.labels == ["true", "false"]


def test_ordinary_label_names_are_kept_as_written(write_csv: WriteFile, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"text": f"t {i}", "label": name} for i, name in enumerate(["Card arrival", "lost_card", "Ü-Bahn", "x1"])]
    with caplog.at_level("WARNING", logger="adaptext"):
        data = load_examples(write_csv("train.csv", rows), DataConfig())
    assert data.labels == ["Card arrival", "lost_card", "Ü-Bahn", "x1"]
    assert not caplog.records


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_labels_differing_only_in_number_format_are_warned_about(
    write_csv: WriteFile, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    labels = ["1"] * 5 + ["1.0"] * 2 + ["01", "2", "2", "pos"]
    path = write_csv(f"train.{fmt}", [{"text": f"t {i}", "label": v} for i, v in enumerate(labels)])
    with caplog.at_level("WARNING", logger="adaptext"):
        data = load_examples(path, DataConfig())
    assert data.labels == labels  # still separate classes: only the user knows whether they are one
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(messages) == 1, messages
    message = messages[0]
    assert str(path) in message
    assert "column 'label'" in message
    assert "labels '1', '1.0' and '01' differ only in number format; they are different classes" in message
    assert "'1' in 5 rows, '1.0' in 2 rows, '01' in 1 row" in message


def test_labels_differing_only_in_case_or_spacing_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_text(tmp_path / "train.csv", "text,sentiment\na,pos\nb,Pos\nc,very  good\nd,very good\ne,neg\n")
    with caplog.at_level("WARNING", logger="adaptext"):
        load_examples(path, DataConfig(label_column="sentiment"))
    messages = sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert len(messages) == 2, messages
    assert all(str(path) in m and "column 'sentiment'" in m and "differ only in case or spacing" in m for m in messages)
    assert "labels 'pos' and 'Pos'" in messages[0]
    assert "labels 'very  good' and 'very good'" in messages[1]


def test_multi_label_spellings_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_text(tmp_path / "ml.csv", "text,label\na,x|1\nb,X\nc,1.0|y\n")
    with caplog.at_level("WARNING", logger="adaptext"):
        load_examples(path, DataConfig(multi_label=True))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "labels 'x' and 'X' differ only in case" in text
    assert "labels '1' and '1.0' differ only in number format" in text


def test_an_unseen_label_that_is_a_known_one_spelled_differently_says_so(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [i % 2 for i in range(20)])
    validation = _write_text(tmp_path / "validation.csv", "text,label\nv 0,0\nv 1,1.0\n")
    with pytest.raises(DataError) as info:
        load_splits(splits_config(f"data.train={train}", f"data.validation={validation}"))
    message = str(info.value)
    assert str(validation) in message and "row 2:" in message
    assert "label '1.0' never appears in the training data" in message
    assert "differs from the known label '1' only in number format" in message


# --- texts shared by train and the evaluated splits (issue item 11) ---------------------------------


def test_validation_and_test_texts_also_in_train_are_counted_and_warned_about(
    write_csv: WriteFile, caplog: pytest.LogCaptureFixture
) -> None:
    train_rows = make_rows(60, seed=1)
    validation_rows = [*train_rows[:3], *make_rows(17, seed=2)]
    test_rows = [train_rows[5], *make_rows(9, seed=3)]
    train_texts = {r["text"] for r in train_rows}
    expected_validation = sum(r["text"] in train_texts for r in validation_rows)
    expected_test = sum(r["text"] in train_texts for r in test_rows)
    assert expected_validation >= 3 and expected_test >= 1
    validation = write_csv("validation.csv", validation_rows)
    config = splits_config(
        f"data.train={write_csv('train.csv', train_rows)}",
        f"data.validation={validation}",
        f"data.test={write_csv('test.csv', test_rows)}",
    )
    with caplog.at_level("WARNING", logger="adaptext"):
        splits = load_splits(config)
    assert splits.in_train == {"validation": expected_validation, "test": expected_test}
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    share = 100 * expected_validation / 20
    assert (
        f"{expected_validation} texts of the validation split ({share:.1f}%, {validation}) also appear in train "
        "(exact duplicates): scores on it are optimistic"
    ) in messages
    assert any(
        m.startswith(f"{expected_test} text{'s' if expected_test > 1 else ''} of the test split") for m in messages
    )


def test_no_overlap_no_warning(data_files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    config = splits_config(*(f"data.{name}={path}" for name, path in data_files.items()))
    with caplog.at_level("WARNING", logger="adaptext"):
        splits = load_splits(config)
    assert splits.in_train == {"validation": 0, "test": 0}
    assert not [r for r in caplog.records if "also appear in train" in r.getMessage()]


def test_pair_overlap_compares_both_texts(write_csv: WriteFile, caplog: pytest.LogCaptureFixture) -> None:
    train_rows = [{"q": f"question {i}", "text": f"answer {i}", "label": "ab"[i % 2]} for i in range(20)]
    validation_rows = [
        {"q": "question 0", "text": "answer 0", "label": "a"},  # the same pair: a duplicate
        {"q": "question 0", "text": "answer 1", "label": "a"},  # both texts are in train, not as a pair
        {"q": "question 99", "text": "answer 2", "label": "b"},
    ]
    config = splits_config(
        f"data.train={write_csv('train.csv', train_rows)}",
        f"data.validation={write_csv('validation.csv', validation_rows)}",
        "data.text_pair_column=q",
    )
    with caplog.at_level("WARNING", logger="adaptext"):
        splits = load_splits(config)
    assert splits.in_train == {"validation": 1}
    assert any(r.getMessage().startswith("1 text pair of the validation split (33.3%") for r in caplog.records)


def test_duplicates_inside_train_reach_a_carved_validation_split(
    write_csv: WriteFile, caplog: pytest.LogCaptureFixture
) -> None:
    rows = make_rows(60, seed=1)
    rows = rows + rows[:30]  # 30 texts twice: a carved split holds some whose twin stays in train
    with caplog.at_level("WARNING", logger="adaptext"):
        splits = load_splits(
            splits_config(f"data.train={write_csv('train.csv', rows)}", "data.validation_fraction=0.3")
        )
    assert splits.in_train["validation"] > 0
    assert any("of the validation split" in r.getMessage() for r in caplog.records)


# --- ~ in paths (issue item 12a) -------------------------------------------------------------------


def test_data_paths_with_a_tilde_mean_the_home_folder(
    write_csv: WriteFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_csv("train.csv", make_rows(30, seed=1))
    assert len(load_examples("~/train.csv", DataConfig())) == 30
    assert len(read_table(Path("~/train.csv"))) == 30
    splits = load_splits(splits_config("data.train=~/train.csv"))
    assert splits.train.source == str(tmp_path / "train.csv")


def test_map_batches_returns_rows_in_example_order_from_longest_first_batches() -> None:
    ids = [[5] * n for n in (2, 5, 1, 4, 3)]
    encoded = Encoded(features={"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
    widths: list[int] = []

    def lengths(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert set(batch) == {"input_ids", "attention_mask"}
        widths.append(batch["input_ids"].shape[1])
        return batch["attention_mask"].sum(1, keepdim=True).repeat(1, 2)  # (batch, 2): each example's length

    out = map_batches(encoded, lengths, pad_token_id=0, device=torch.device("cpu"), batch_size=2)
    assert out.dtype == np.float32
    assert out[:, 0].tolist() == [2, 5, 1, 4, 3]
    assert widths == [5, 3, 1]  # (5, 4), (3, 2), (1): the longest batch first, each padded to its own longest
    with pytest.raises(ValueError, match="no examples"):
        map_batches(Encoded(features={"input_ids": []}), lengths, pad_token_id=0, device=torch.device("cpu"))
