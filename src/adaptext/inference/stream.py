"""A data file read in chunks of rows, and predictions written chunk by chunk, so memory stays flat in the file size.

`read_chunks` yields at most `chunk_size` rows at a time from a CSV/TSV/JSONL/Parquet file, with the same values
and the same one-line errors (file, line or row, column) as `adaptext.data.io.load_examples` gives for the whole
file. `ChunkWriter` appends chunks to an output file that can be cut back to its last complete chunk, which is what
lets an interrupted prediction run continue where it stopped.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from adaptext.core.errors import DataError
from adaptext.data.io import check_tsv_cells, file_format, json_record, require_columns, text_values

DEFAULT_CHUNK_ROWS = 10_000

OUTPUT_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass
class Chunk:
    """Consecutive rows of a file: the frame as read, and its texts (and pairs) checked.

    `first_row` is the 1-based row number of the frame's first row in the file, for error messages.
    """

    frame: pd.DataFrame
    first_row: int
    texts: list[str]
    pairs: list[str] | None

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class InputScan:
    """What one pass over a file found: its number of rows and its columns, in order."""

    rows: int
    columns: list[str]


def scan_input(
    path: Path,
    text_columns: list[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    check: Callable[[pd.DataFrame, int], None] | None = None,
) -> InputScan:
    """Read `path` once, checking every row as `read_chunks` will, so a bad row fails before any prediction.

    `text_columns` (the text and, for pairs, the second text) must exist and be non-empty in every row; `check`,
    when given, is called on each chunk's frame and first row number. For JSONL the columns are every key of every
    record, in order of first appearance (as one `DataFrame` of the whole file would have them).
    """
    fmt = file_format(path)
    rows = 0
    columns: dict[str, None] = {}
    if fmt == "parquet" and check is None:
        # Only the text columns need reading; the row count and columns are in the footer.
        for frame, first_row in _parquet_frames(path, chunk_size, columns=text_columns):
            _checked_texts(path, frame, text_columns, first_row)
            rows += len(frame)
        # The columns as pandas reads them: an index saved as a column (`__index_level_0__`) is not one.
        first = next(_parquet_frames(path, 1), None)
        columns = dict.fromkeys(str(c) for c in first[0].columns) if first is not None else {}
    else:
        for frame, first_row in _frames(path, fmt, chunk_size):
            _checked_texts(path, frame, text_columns, first_row)
            if check is not None:
                check(frame, first_row)
            rows += len(frame)
            columns.update(dict.fromkeys(str(c) for c in frame.columns))
    if rows == 0:
        raise DataError(f"{path}: the file has a header but no data rows")
    return InputScan(rows=rows, columns=list(columns))


def read_chunks(
    path: Path,
    text_columns: list[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    skip: int = 0,
    columns: list[str] | None = None,
) -> Iterator[Chunk]:
    """The rows of `path` after the first `skip`, in chunks of at most `chunk_size` rows, in file order.

    `text_columns` as in `scan_input`. `columns` (JSONL) gives every chunk the same columns, missing keys as NaN.
    """
    if chunk_size < 1:
        raise DataError(f"chunk size must be at least 1, got {chunk_size}")
    for frame, first_row in _frames(path, file_format(path), chunk_size, skip=skip, columns=columns):
        texts = _checked_texts(path, frame, text_columns, first_row)
        yield Chunk(frame=frame, first_row=first_row, texts=texts[0], pairs=texts[1] if len(texts) > 1 else None)


def _checked_texts(path: Path, frame: pd.DataFrame, text_columns: list[str], first_row: int) -> list[list[str]]:
    require_columns(path, frame, text_columns)
    return [text_values(path, frame, column, first_row=first_row) for column in text_columns]


Frames = Iterator[tuple[pd.DataFrame, int]]  # (rows, the 1-based row number of the first)


def _frames(path: Path, fmt: str, chunk_size: int, *, skip: int = 0, columns: list[str] | None = None) -> Frames:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a data file")
    if fmt == "parquet":
        return _parquet_frames(path, chunk_size, skip=skip)
    if fmt == "jsonl":
        return _jsonl_frames(path, chunk_size, skip=skip, columns=columns)
    return _csv_frames(path, fmt, chunk_size, skip=skip)


@contextmanager
def _utf8_lines(path: Path) -> Iterator[IO[str]]:
    """`path` open as UTF-8 text (a byte-order mark dropped, line endings kept); a byte that is not UTF-8 is
    reported with its line number."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        try:
            yield file
        except UnicodeDecodeError:
            _raise_utf8_error(path)
            raise


def _raise_utf8_error(path: Path) -> None:
    # Lines are split on b"\n" before decoding: no byte of a multi-byte UTF-8 character is a newline.
    offset = 0
    with path.open("rb") as file:
        for line_no, raw in enumerate(file, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}: line {line_no}: bytes {raw[error.start : error.end]!r} are not valid UTF-8 "
                    f"(byte offset {offset + error.start}); save the file as UTF-8"
                ) from None
            offset += len(raw)


def _csv_frames(path: Path, fmt: str, chunk_size: int, *, skip: int) -> Frames:
    # The csv module streams; it reads cells as `read_table` does (every cell a string, blank lines skipped).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a long text is one cell, as pandas allows
    with _utf8_lines(path) as file:
        dialect: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
        reader = csv.reader(file, **dialect)
        records = (fields for fields in reader if fields)
        try:
            header = next(records, None)
            if header is None:
                raise DataError(f"{path}: the file is empty")
            names = _column_names(header)
            row, rows = 0, []
            for fields in records:
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num}: expected {len(header)} fields as in the header, "
                        f"found {len(fields)}" + ("; quote texts that contain commas" if fmt == "csv" else "")
                    )
                row += 1
                if row > skip:
                    rows.append(fields)
                if len(rows) == chunk_size:
                    yield pd.DataFrame(rows, columns=names, dtype=str), row - len(rows) + 1
                    rows = []
            if rows:
                yield pd.DataFrame(rows, columns=names, dtype=str), row - len(rows) + 1
        except csv.Error as error:
            raise DataError(f"{path}: line {reader.line_num}: cannot parse {fmt.upper()}: {error}") from None


def _column_names(header: list[str]) -> list[str]:
    # As pandas names them: a blank name becomes "Unnamed: i", a repeated one gets ".1", ".2", ...
    names: list[str] = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}.{n}"
        names.append(name)
    return names


def _jsonl_frames(path: Path, chunk_size: int, *, skip: int, columns: list[str] | None) -> Frames:
    with _utf8_lines(path) as file:
        row, records, seen = 0, [], False
        for line_no, line in enumerate(file, start=1):
            if not line.strip():
                continue
            seen = True
            row += 1
            if row <= skip:
                continue  # checked by the scan before the first chunk
            records.append(json_record(path, line_no, line))
            if len(records) == chunk_size:
                yield pd.DataFrame.from_records(records, columns=columns), row - len(records) + 1
                records = []
        if records:
            yield pd.DataFrame.from_records(records, columns=columns), row - len(records) + 1
        if not seen:
            raise DataError(f"{path}: the file is empty")


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises many types for a damaged file
        raise DataError(f"{path}: cannot read Parquet: {error}") from None


def _parquet_frames(path: Path, chunk_size: int, *, skip: int = 0, columns: list[str] | None = None) -> Frames:
    parquet = _parquet_file(path)
    meta = parquet.metadata
    if columns is not None:
        require_columns(path, pd.DataFrame(columns=parquet.schema_arrow.names), columns)
    # Whole row groups before `skip` are not read at all.
    group, row = 0, 0
    while group < meta.num_row_groups and row + meta.row_group(group).num_rows <= skip:
        row += meta.row_group(group).num_rows
        group += 1
    batches = parquet.iter_batches(
        batch_size=chunk_size, row_groups=list(range(group, meta.num_row_groups)), columns=columns
    )
    try:
        for batch in batches:
            frame = batch.to_pandas()
            if row < skip:
                frame = frame.iloc[skip - row :].reset_index(drop=True)
                row = skip
            if len(frame):
                yield frame, row + 1
                row += len(frame)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path}: cannot read Parquet after row {row}: {error}") from None


class ChunkWriter:
    """Chunks of an output file appended one at a time to `path`, each one on disk before `write` returns.

    `position` marks the end of the last complete chunk; `ChunkWriter(path, fmt, resume_at=position)` cuts off
    anything after it (half a chunk written when the process stopped) and appends from there. CSV, TSV and JSONL
    are one file; Parquet is a folder of one file per chunk, joined by `finish` into one file with one row group
    per chunk (a Parquet file is unreadable until its footer is written, so it cannot be appended to).
    `name` is the path errors name (the final output, not this file).
    """

    def __init__(self, path: Path, fmt: str, *, name: Path, resume_at: int | None = None) -> None:
        self.path, self.fmt, self.name = path, fmt, name
        self.position = resume_at or 0
        self._file: IO[bytes] | None = None
        if fmt == ".parquet":
            if resume_at is None:
                path.mkdir(parents=True, exist_ok=True)
            for part in self._parts():
                if _part_index(part) >= self.position:
                    part.unlink()
            return
        if resume_at is None:
            self._file = path.open("wb")
        else:
            self._file = path.open("r+b")
            if self._file.seek(0, os.SEEK_END) < resume_at:
                self._file.close()
                raise DataError(f"{path}: is shorter than its progress record says; use --overwrite to start over")
            self._file.truncate(resume_at)
            self._file.seek(resume_at)

    def write(self, frame: pd.DataFrame, first_row: int) -> None:
        """Append `frame` (rows `first_row`, ... of the output) and make it durable."""
        if self.fmt == ".parquet":
            self._write_part(frame, first_row)
            return
        assert self._file is not None, "write after close"
        if self.fmt == ".jsonl":
            text = frame.to_json(orient="records", lines=True, force_ascii=False)
            if text and not text.endswith("\n"):
                text += "\n"
        else:
            if self.fmt == ".tsv":
                check_tsv_cells(self.name, frame, first_row=first_row)
            header = self.position == 0
            if self.fmt == ".tsv":
                text = frame.to_csv(sep="\t", index=False, header=header, quoting=csv.QUOTE_NONE)
            else:
                text = frame.to_csv(index=False, header=header)
        data = text.encode("utf-8")
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.position += len(data)

    def _write_part(self, frame: pd.DataFrame, first_row: int) -> None:
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowException, ValueError) as error:
            last = first_row + len(frame) - 1
            raise DataError(f"{self.name}: rows {first_row}-{last}: cannot be written as Parquet: {error}") from None
        part = self.path / f"part-{self.position:06d}.parquet"
        tmp = part.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(part)
        self.position += 1

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self, target: Path) -> None:
        """Close, and move the complete output to `target` (replacing it)."""
        self.close()
        if self.fmt != ".parquet":
            self.path.replace(target)
            return
        joined = self.path / "joined.tmp"
        _join_parquet(self._parts(), joined, name=self.name)
        joined.replace(target)
        remove_partial(self.path)


def _part_index(part: Path) -> int:
    return int(part.stem.removeprefix("part-"))


def _join_parquet(parts: Iterable[Path], target: Path, *, name: Path) -> None:
    # One part in memory at a time. The parts' types may differ (a column all null in one chunk, integers in one
    # and floats in another): every part is cast to the types all of them share.
    parts = list(parts)
    try:
        schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    except pa.ArrowException as error:
        raise DataError(f"{name}: the chunks' columns have types Parquet cannot join: {error}") from None
    schema = schema.remove_metadata()
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            table = pq.read_table(part).replace_schema_metadata(None)
            try:
                table = table.select(schema.names).cast(schema)
            except (pa.ArrowException, KeyError) as error:
                raise DataError(f"{name}: the chunks' columns have types Parquet cannot join: {error}") from None
            writer.write_table(table, row_group_size=max(len(table), 1))


def remove_partial(path: Path) -> None:
    """Remove an unfinished output (a file, or a folder of Parquet parts) that `ChunkWriter` wrote."""
    if path.is_dir():
        for item in path.iterdir():
            if not (item.name.startswith("part-") or item.name == "joined.tmp"):
                raise DataError(f"{path}: holds {item.name}, which adaptext did not write; remove the folder yourself")
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
