"""Reading labelled text files and checking them before any training starts.

Supported: CSV, TSV, JSONL and Parquet; single-label, multi-label and text pairs; any UTF-8 text.
Every problem is raised as `DataError` naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from adaptext.core.config import DataConfig
from adaptext.core.errors import DataError
from adaptext.data.examples import TextData
from adaptext.data.labels import _is_missing, _label_value, warn_label_spellings

if TYPE_CHECKING:
    pass


SUPPORTED_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


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
        records.append(json_record(path, line_no, line))
    return pd.DataFrame.from_records(records)


def json_record(path: Path, line_no: int, line: str) -> dict[str, Any]:
    """One line of a JSONL file as its object; a one-line `DataError` naming the file and line otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: line {line_no}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(record).__name__}")
    return record


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


def require_columns(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    """Raise `DataError` naming the first of `columns` that `frame` (read from `path`) lacks, and the ones it has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in frame.columns)
        raise DataError(f"{path}: column {missing[0]!r} not found; the columns are: {found}")


def text_values(path: Path, frame: pd.DataFrame, column: str, *, first_row: int = 1) -> list[str]:
    """The texts of `column`, or a `DataError` naming the first empty one; `first_row` numbers the frame's first row
    (a chunk of a larger file starts past 1)."""
    cells = frame[column]
    if isinstance(cells.dtype, pd.StringDtype) and not (cells.isna() | cells.str.strip().eq("")).any():
        return cells.tolist()  # every cell a non-blank string: no need to look at them one by one
    values = []
    for row, value in enumerate(cells.tolist(), start=first_row):
        if _is_missing(value):
            raise DataError(f"{path}: row {row}: column {column!r} is empty; every example needs text")
        values.append(str(value))
    return values


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
    require_columns(path, frame, columns)
    texts = text_values(path, frame, cfg.text_column)
    pairs = text_values(path, frame, cfg.text_pair_column) if cfg.text_pair_column else None
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
        check_tsv_cells(path, frame)
        frame.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)


def check_tsv_cells(path: Path, frame: pd.DataFrame, *, first_row: int = 1) -> None:
    """Refuse a value holding a tab or line break before it is written to the TSV file `path`: TSV has no quoting
    (as `read_table` reads it), so it cannot store one. `first_row` numbers the frame's first row."""
    for column in frame.columns:
        for row, value in enumerate(frame[column].astype(str), start=first_row):
            if "\t" in value or "\n" in value or "\r" in value:
                raise DataError(
                    f"{path}: row {row}, column {column!r} holds a tab or line break, which TSV cannot store; "
                    "write .csv or .jsonl instead"
                )


def label_descriptions(path: Path, labels: list[str] | None) -> dict[str, str]:
    """Read a `label,description` file (CSV/TSV/JSONL/Parquet). With `labels`, every row must name a known label;
    labels without a row are described by their own name."""
    from adaptext.core.errors import DataError
    from adaptext.data.io import read_table
    from adaptext.data.labels import canonical_label

    frame = read_table(path)
    missing = [c for c in ("label", "description") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a label-description file has columns label,description")
    found: dict[str, str] = {}
    for row, (label, text) in enumerate(zip(frame["label"], frame["description"], strict=True), start=1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {row}: column 'description' is empty")
        name = canonical_label(label)
        if labels is not None and name not in labels:
            raise DataError(f"{path}: row {row}: label {name!r} is not one of the labels ({', '.join(labels[:20])})")
        if name in found:
            raise DataError(f"{path}: row {row}: label {name!r} is described twice")
        found[name] = text.strip()
    return found


TEXT_SUFFIX = ".txt"


def read_texts(path: Path, text_column: str) -> list[str]:
    """The texts of `path`: a CSV/TSV/JSONL/Parquet file's `text_column`, or a `.txt` file's non-blank lines.

    >>> read_texts(Path("reviews.txt"), "text")[:1]  # doctest: +SKIP
    ['a gripping, well acted thriller']
    """
    if path.suffix.lower() != TEXT_SUFFIX:
        frame = read_table(path)
        require_columns(path, frame, [text_column])
        return text_values(path, frame, text_column)
    if not path.is_file():
        raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: is a folder, expected a file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {error.start}); save the file as UTF-8") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{path}: the file holds no text (one text per line expected)")
    return texts
