"""Reading labelled text files and checking them before any training starts.

Supported: CSV, TSV, JSONL and Parquet; single-label, multi-label and text pairs; any UTF-8 text.
Every problem is raised as `DataError` naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adaptext.config import AdaptextError, Config, DataConfig

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class DataError(AdaptextError):
    """A data file is missing, unreadable or inconsistent with the configuration."""


@dataclass
class TextData:
    """Texts (and optional pairs and labels) read from one file, in file order.

    `labels` holds one string per row, or a list of strings per row for multi-label data;
    `rows` holds each example's 1-based row number in `source`, for error messages.
    """

    texts: list[str]
    source: str
    pairs: list[str] | None = None
    labels: list[str] | list[list[str]] | None = None
    rows: list[int] = field(default_factory=list)
    frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int], source: str | None = None) -> TextData:
        """The examples at `indices`, in that order."""
        return TextData(
            texts=[self.texts[i] for i in indices],
            source=source or self.source,
            pairs=None if self.pairs is None else [self.pairs[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],  # type: ignore[arg-type]
            rows=[self.rows[i] for i in indices],
            frame=None if self.frame is None else self.frame.iloc[indices].reset_index(drop=True),
        )


@dataclass
class Splits:
    """The data of one run: train, validation, optional test, and the label names in id order.

    `in_train` counts, per evaluated split (`validation`, `test`), its examples whose text (and pair) also
    appears in train: exact duplicates that make the scores on that split optimistic.
    """

    train: TextData
    validation: TextData
    test: TextData | None
    labels: list[str]
    in_train: dict[str, int] = field(default_factory=dict)


def file_format(path: Path) -> str:
    """The format of `path` from its suffix, or a `DataError` listing the supported ones."""
    fmt = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    return fmt


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: bytes {raw[error.start : error.end]!r} are not valid UTF-8 "
            f"(byte offset {error.start}); save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {line_no}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _check_field_counts(path: Path, text: str, fmt: str) -> None:
    # pandas silently turns surplus leading fields into an index, shifting every column; refuse instead.
    if fmt == "tsv":
        reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text))
    expected = None
    for fields in reader:
        if not fields:
            continue
        if expected is None:
            expected = len(fields)
        elif len(fields) != expected:
            raise DataError(
                f"{path}: line {reader.line_num}: expected {expected} fields as in the header, found {len(fields)}"
                + ("; quote texts that contain commas" if fmt == "csv" else "")
            )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/Parquet file into a frame of raw values, raising `DataError` on any problem."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a data file")
    fmt = file_format(path)
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises many types for a damaged file
            raise DataError(f"{path}: cannot read Parquet: {error}") from None
    else:
        text = _decode(path)
        if fmt == "jsonl":
            frame = _read_jsonl(path, text)
        else:
            _check_field_counts(path, text, fmt)
            try:
                frame = pd.read_csv(
                    io.StringIO(text),
                    sep="\t" if fmt == "tsv" else ",",
                    dtype=str,
                    keep_default_na=False,
                    quoting=3 if fmt == "tsv" else 0,  # TSV has no quoting convention
                )
            except pd.errors.ParserError as error:
                raise DataError(f"{path}: cannot parse {fmt.upper()}: {error}") from None
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no data rows")
    return frame


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


def _require_columns(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in frame.columns)
        raise DataError(f"{path}: column {missing[0]!r} not found; the columns are: {found}")


def _text_column(path: Path, frame: pd.DataFrame, column: str) -> list[str]:
    values = []
    for row, value in enumerate(frame[column].tolist(), start=1):
        if _is_missing(value):
            raise DataError(f"{path}: row {row}: column {column!r} is empty; every example needs text")
        values.append(str(value))
    return values


def canonical_label(value: Any) -> str:
    """The label name a cell holds, the same in every file format.

    CSV and TSV give every cell as text, JSONL and Parquet give typed values; a label must not depend on that.
    Numbers become their shortest decimal spelling, with whole numbers written as integers (the JSON number
    1, 1.0 from a numeric column with gaps, the string "1" and the CSV cell 1 are all "1"). Booleans, typed
    (JSON true, a Parquet bool) or spelled true/True/TRUE in a text cell, become "true" and "false", as JSON
    writes them. Other text is kept as written, without surrounding whitespace: "1.0" or "01" written as text
    stay as they are (see `label_spellings` for the warning about them).

    >>> [canonical_label(v) for v in (1, 1.0, "1", " 1.0 ", 2.5, True, "True", "pos")]
    ['1', '1', '1', '1.0', '2.5', 'true', 'true', 'pos']
    """
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, Decimal):  # Parquet decimal columns
        return str(int(value)) if value.is_finite() and value == value.to_integral_value() else str(value)
    text = str(value).strip()
    return text.lower() if text.lower() in ("true", "false") else text


def _label_value(path: Path, row: int, column: str, value: Any, cfg: DataConfig) -> str | list[str]:
    if cfg.multi_label:
        if isinstance(value, str):
            if value.strip().startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise DataError(f"{path}: row {row}: column {column!r}: bad JSON list {value!r}") from None
            else:
                return [canonical_label(part) for part in value.split(cfg.label_delimiter) if part.strip()]
        if value is None or (isinstance(value, float) and value != value):
            return []
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, list) or any(_is_missing(v) for v in value):
            raise DataError(
                f"{path}: row {row}: column {column!r}: expected a list of label names or a "
                f"{cfg.label_delimiter!r}-separated string, got {value!r}"
            )
        return [canonical_label(v) for v in value]
    if _is_missing(value):
        raise DataError(f"{path}: row {row}: column {column!r} is empty; every example needs a label")
    if isinstance(value, list | dict):
        raise DataError(
            f"{path}: row {row}: column {column!r}: got a list {value!r}; set data.multi_label=true "
            "for multi-label data"
        )
    return canonical_label(value)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(name: str) -> Decimal | None:
    if not _NUMBER.match(name):
        return None
    try:
        return Decimal(name)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        return None


def _loose(name: str) -> str:
    return " ".join(name.split()).casefold()


def label_spellings(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Groups of distinct label names that look like one label written differently: (how they differ, names).

    Names that are equal as numbers ("1", "1.0", "01") differ in number format; other names equal but for
    letter case or spacing ("Pos", "pos", "very  good" / "very good") differ in case or spacing.

    >>> label_spellings(["1", "1.0", "2", "Pos", "pos", "neg"])
    [('number format', ['1', '1.0']), ('case or spacing', ['Pos', 'pos'])]
    """
    by_number: dict[Decimal, list[str]] = defaultdict(list)
    by_text: dict[str, list[str]] = defaultdict(list)
    for name in dict.fromkeys(names):
        number = _number(name)
        if number is not None:
            by_number[number].append(name)
        else:
            by_text[_loose(name)].append(name)
    groups = [("number format", group) for group in by_number.values() if len(group) > 1]
    return groups + [("case or spacing", group) for group in by_text.values() if len(group) > 1]


def _quoted_list(names: list[str]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def warn_label_spellings(source: str, column: str, labels: list[str] | list[list[str]]) -> None:
    """Log a warning for every group of labels in one file that differ only in number format, case or spacing:
    they are separate classes, which is rarely what the file's author meant."""
    counts: Counter[str] = Counter()
    for value in labels:
        counts.update(value if isinstance(value, list) else [value])
    for difference, group in label_spellings(name for name, _ in counts.most_common()):
        rows = ", ".join(f"{name!r} in {counts[name]} row{'s' if counts[name] != 1 else ''}" for name in group)
        logger.warning(
            "%s: column %r: labels %s differ only in %s; they are different classes (%s). "
            "Write them one way if they mean the same class",
            source,
            column,
            _quoted_list(group),
            difference,
            rows,
        )


def load_examples(path: str | Path, cfg: DataConfig, *, with_labels: bool = True) -> TextData:
    """Read one file into `TextData`, checking columns, texts and labels row by row.

    >>> data = load_examples("train.csv", DataConfig())  # doctest: +SKIP
    >>> data.texts[0], data.labels[0]  # doctest: +SKIP
    ('I am still waiting on my card?', 'card_arrival')
    """
    path = Path(path).expanduser()
    frame = read_table(path)
    columns = [cfg.text_column]
    if cfg.text_pair_column:
        columns.append(cfg.text_pair_column)
    if with_labels:
        columns.append(cfg.label_column)
    _require_columns(path, frame, columns)
    texts = _text_column(path, frame, cfg.text_column)
    pairs = _text_column(path, frame, cfg.text_pair_column) if cfg.text_pair_column else None
    labels: list[Any] | None = None
    if with_labels:
        labels = [
            _label_value(path, row, cfg.label_column, value, cfg)
            for row, value in enumerate(frame[cfg.label_column].tolist(), start=1)
        ]
        warn_label_spellings(str(path), cfg.label_column, labels)
    return TextData(
        texts=texts,
        source=str(path),
        pairs=pairs,
        labels=labels,
        rows=list(range(1, len(texts) + 1)),
        frame=frame,
    )


def label_names(data: TextData) -> list[str]:
    """The sorted label names seen in `data`, requiring at least two."""
    assert data.labels is not None
    counts: Counter[str] = Counter()
    for value in data.labels:
        counts.update(value if isinstance(value, list) else [value])
    if len(counts) < 2:
        seen = ", ".join(repr(k) for k in counts) or "none"
        raise DataError(
            f"{data.source}: found {len(counts)} distinct label(s) ({seen}); a classifier needs at least two"
        )
    return sorted(counts)


def label_targets(data: TextData, labels: list[str], multi_label: bool) -> np.ndarray:
    """Training targets for `data`'s labels: class ids (n,), or a multi-hot matrix (n, len(labels))."""
    assert data.labels is not None
    index = {name: i for i, name in enumerate(labels)}
    if not multi_label:
        return np.asarray([index[str(name)] for name in data.labels], dtype=np.int64)
    targets = np.zeros((len(data), len(labels)), dtype=np.float32)
    for row, names in enumerate(data.labels):
        targets[row, [index[name] for name in names]] = 1.0
    return targets


def check_known_labels(data: TextData, known: list[str]) -> None:
    """Fail on the first label in `data` that training never saw, naming its row."""
    assert data.labels is not None
    known_set = set(known)
    for row, value in zip(data.rows, data.labels, strict=True):
        for label in value if isinstance(value, list) else [value]:
            if label not in known_set:
                shown = ", ".join(repr(k) for k in known[:20]) + (" ..." if len(known) > 20 else "")
                near = [
                    f"; it differs from the known label {other!r} only in {difference}"
                    for difference, group in label_spellings([str(label), *known])
                    if label in group
                    for other in group
                    if other != label
                ]
                raise DataError(
                    f"{data.source}: row {row}: label {label!r} never appears in the training data "
                    f"(known labels: {shown}){near[0] if near else ''}"
                )


def _example_keys(data: TextData) -> list[tuple[str, str | None]]:
    pairs: list[str] | list[None] = data.pairs if data.pairs is not None else [None] * len(data)
    return list(zip(data.texts, pairs, strict=True))


def count_in_train(train: TextData, other: TextData) -> int:
    """How many examples of `other` have exactly the text (and pair) of some training example."""
    seen = set(_example_keys(train))
    return sum(key in seen for key in _example_keys(other))


def check_train_overlap(train: TextData, evaluated: dict[str, TextData]) -> dict[str, int]:
    """Count, and warn about, examples of each evaluated split (name -> data) whose text also appears in train.

    Texts (with their pair, for pair data) are compared exactly. Returns name -> count for every split.
    """
    counts: dict[str, int] = {}
    what = "text pair" if train.pairs is not None else "text"
    for name, data in evaluated.items():
        counts[name] = count_in_train(train, data)
        if counts[name]:
            logger.warning(
                "%d %s of the %s split (%.1f%%, %s) also %s in train (exact duplicates): scores on it are optimistic",
                counts[name],
                what if counts[name] == 1 else what + "s",
                name,
                100 * counts[name] / len(data),
                data.source,
                "appears" if counts[name] == 1 else "appear",
            )
    return counts


def stratified_split(data: TextData, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): about `fraction` of each class held out, every class kept in training.

    Multi-label rows are stratified by their label combination. The result depends only on the data and seed.
    """
    assert data.labels is not None
    groups: dict[str, list[int]] = defaultdict(list)
    for index, value in enumerate(data.labels):
        key = "\x1f".join(sorted(value)) if isinstance(value, list) else str(value)
        groups[key].append(index)
    rng = random.Random(seed)
    kept: list[int] = []
    held: list[int] = []
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        n_held = min(int(len(members) * fraction + 0.5), len(members) - 1)
        held.extend(members[:n_held])
        kept.extend(members[n_held:])
    return sorted(kept), sorted(held)


def load_splits(config: Config) -> Splits:
    """Read and check every file of a run, carving validation/test splits from train where asked."""
    cfg = config.data
    if cfg.train is None:
        raise DataError("data.train is not set; give the training file in the config or as data.train=PATH")
    train = load_examples(cfg.train, cfg)
    labels = label_names(train)
    test = load_examples(cfg.test, cfg) if cfg.test is not None else None
    validation = load_examples(cfg.validation, cfg) if cfg.validation is not None else None
    if test is None and cfg.test_fraction is not None:
        kept, held = stratified_split(train, cfg.test_fraction, config.seed)
        test = train.subset(held, source=f"{train.source} (test split)")
        train = train.subset(kept)
    if validation is None:
        kept, held = stratified_split(train, cfg.validation_fraction, config.seed + 1)
        if not held:
            raise DataError(f"{train.source}: too few rows to carve a validation split; give data.validation")
        validation = train.subset(held, source=f"{train.source} (validation split)")
        train = train.subset(kept)
    for split in (validation, test):
        if split is not None:
            check_known_labels(split, labels)
    evaluated = {"validation": validation} | ({"test": test} if test is not None else {})
    in_train = check_train_overlap(train, evaluated)
    logger.info(
        "data: %d train, %d validation, %s test examples, %d labels",
        len(train),
        len(validation),
        len(test) if test is not None else "no",
        len(labels),
    )
    return Splits(train=train, validation=validation, test=test, labels=labels, in_train=in_train)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write `frame` as CSV, TSV, JSONL or Parquet by `path`'s suffix, through a temporary file and a rename."""
    path = Path(path)
    fmt = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported output format; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "jsonl":
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    elif fmt == "parquet":
        frame.to_parquet(tmp, index=False)
    elif fmt == "tsv":
        # TSV has no quoting (as read_table reads it), so a tab or line break inside a value cannot be written.
        for column in frame.columns:
            for row, value in enumerate(frame[column].astype(str), start=1):
                if "\t" in value or "\n" in value or "\r" in value:
                    raise DataError(
                        f"{path}: row {row}, column {column!r} holds a tab or line break, which TSV cannot store; "
                        "write .csv or .jsonl instead"
                    )
        frame.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)


def sample_per_class(data: TextData, per_class: int, seed: int) -> tuple[list[int], dict[str, int]]:
    """Indices (in file order) of `per_class` examples of every label, drawn reproducibly with `seed`,
    and the labels that had fewer (all of theirs are taken) with their counts.

    Multi-label rows: rows are drawn in a seeded order and a row is taken while one of its labels still has fewer
    than `per_class` examples, so every label reaches `per_class` where the data allows.
    """
    assert data.labels is not None
    if per_class < 1:
        raise DataError(f"per-class sample size must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    chosen: list[int] = []
    if data.labels and isinstance(data.labels[0], list):
        for index in rng.permutation(len(data)):
            names = data.labels[int(index)]
            if any(counts[name] < per_class for name in names):
                chosen.append(int(index))
                counts.update(names)
    else:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, value in enumerate(data.labels):
            groups[str(value)].append(index)
        for name in sorted(groups):
            members = groups[name]
            take = rng.permutation(len(members))[:per_class]
            chosen.extend(members[int(i)] for i in take)
            counts[name] = len(take)
    short = {name: n for name, n in sorted(counts.items()) if n < per_class}
    return sorted(chosen), short
