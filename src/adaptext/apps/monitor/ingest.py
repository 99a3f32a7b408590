"""Classifying timestamped texts and storing them: from a file, from JSON lines on stdin, or from `POST /events`.

Rows are read, checked, classified and committed one batch at a time: a bad row stops the ingest with an error that
names the file, row and column, and every batch before it stays stored. Rows already stored (same text, time,
source and topic) are neither classified again nor stored twice, so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from adaptext.apps.monitor.alerts import Evaluation, evaluate_alerts, watched_label
from adaptext.apps.monitor.config import MonitorConfig
from adaptext.apps.monitor.store import EventRow, Store, event_key
from adaptext.core.console import progress_bar
from adaptext.core.errors import DataError
from adaptext.data.io import json_record, require_columns
from adaptext.inference.predictor import Predictor
from adaptext.inference.stream import read_chunks

logger = logging.getLogger(__name__)

STDIN = "-"
_SECONDS = re.compile(r"^\s*\d+(\.\d*)?\s*$")
TIME_HELP = "an ISO 8601 time such as 2024-05-01T09:30:00Z (UTC when no offset is given), or seconds since 1970"


@dataclass
class IngestResult:
    """What an ingest did: rows read, newly stored, already stored; the alerts it raised; its duration."""

    read: int = 0
    stored: int = 0
    known: int = 0
    seconds: float = 0.0
    evaluation: Evaluation = field(default_factory=Evaluation)

    @property
    def rate(self) -> float:
        """Rows read per second."""
        return self.read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Rows:
    texts: list[str]
    times: list[int]
    sources: list[str]
    topics: list[str]


def ingest(
    predictor: Predictor,
    store: Store,
    source: str | Path,
    config: MonitorConfig,
    *,
    stdin: IO[str] | None = None,
    progress: bool = True,
) -> IngestResult:
    """Classify and store the events of `source` (a CSV/TSV/JSONL/Parquet file, or `-` for JSON lines on stdin),
    then evaluate alerts.

    >>> ingest(Predictor.from_dir("runs/news"), open_store(), "news.csv", MonitorConfig())  # doctest: +SKIP
    """
    label = watched_label(predictor.labels, config.label)
    started = time.perf_counter()
    result = IngestResult()
    name = "<stdin>" if str(source) == STDIN else str(source)
    frames = (
        _stdin_frames(stdin or sys.stdin, config.batch_size)
        if str(source) == STDIN
        else _file_frames(Path(source), config.batch_size)
    )
    bar = progress_bar(None, show=progress, desc="ingest", unit="event")
    try:
        for frame, first_row in frames:
            rows = check_events(frame, name, first_row)
            _store_rows(predictor, store, rows, result)
            bar.update(len(frame))
            bar.set_postfix(stored=result.stored, known=result.known)
    finally:
        bar.close()
    result.evaluation = evaluate_alerts(store, config, label)
    result.seconds = time.perf_counter() - started
    return result


def ingest_records(
    predictor: Predictor, store: Store, records: Sequence[dict[str, Any]], config: MonitorConfig
) -> IngestResult:
    """Classify and store events given as objects (`POST /events`), then evaluate alerts; errors name the index."""
    label = watched_label(predictor.labels, config.label)
    started = time.perf_counter()
    result = IngestResult()
    if records:
        rows = check_events(pd.DataFrame.from_records(list(records)), "events", 0)
        for start in range(0, len(rows.texts), config.batch_size):
            end = start + config.batch_size
            part = _Rows(rows.texts[start:end], rows.times[start:end], rows.sources[start:end], rows.topics[start:end])
            _store_rows(predictor, store, part, result)
    result.evaluation = evaluate_alerts(store, config, label)
    result.seconds = time.perf_counter() - started
    return result


def _store_rows(predictor: Predictor, store: Store, rows: _Rows, result: IngestResult) -> None:
    result.read += len(rows.texts)
    keys = [event_key(*values) for values in zip(rows.texts, rows.times, rows.sources, rows.topics, strict=True)]
    known = store.existing_keys(keys)
    todo: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in known and key not in todo:
            todo[key] = i
    result.known += len(keys) - len(todo)
    if not todo:
        return
    predictions = predictor.predict([rows.texts[i] for i in todo.values()])
    events = [
        EventRow(
            key=key,
            ts=rows.times[i],
            source=rows.sources[i],
            topic=rows.topics[i],
            text=rows.texts[i],
            label=prediction.label,
            score=prediction.score,
            ood_score=prediction.ood_score,
        )
        for (key, i), prediction in zip(todo.items(), predictions, strict=True)
    ]
    result.stored += store.add_events(events)


def check_events(frame: pd.DataFrame, name: str, first_row: int) -> _Rows:
    """The texts, times (seconds since 1970, UTC), sources and topics of `frame`; a `DataError` names the first bad
    row (`first_row` numbers the frame's first row; 0 numbers from 0, as the items of a JSON list)."""
    where = Path(name)
    require_columns(where, frame, ["text", "time"])
    texts = []
    for row, value in enumerate(frame["text"].tolist(), start=first_row):
        if _missing(value) or not str(value).strip():
            raise DataError(f"{name}: row {row}: column 'text' is empty; every event needs a text")
        if not isinstance(value, str):
            raise DataError(f"{name}: row {row}: column 'text' is {type(value).__name__}, expected a string")
        texts.append(value)
    times = _times(frame["time"], name, first_row)
    return _Rows(texts, times, _names(frame, "source", name, first_row), _names(frame, "topic", name, first_row))


def _times(cells: pd.Series, name: str, first_row: int) -> list[int]:
    # Seconds since 1970 may come as numbers (JSON, Parquet) or as digits (CSV, TSV).
    values = [float(v) if isinstance(v, str) and _SECONDS.match(v) else v for v in cells.tolist()]
    if pd.api.types.is_datetime64_any_dtype(cells.dtype):
        parsed = pd.to_datetime(cells, utc=True)
    else:
        text = pd.Series([None if _missing(v) or isinstance(v, bool | int | float) else str(v) for v in values])
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    times = []
    for row, (value, stamp) in enumerate(zip(values, parsed.tolist(), strict=True), start=first_row):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            seconds = int(value)
        elif stamp is None or pd.isna(stamp):
            shown = "empty" if _missing(value) else f"{value!r}"
            raise DataError(f"{name}: row {row}: column 'time' is {shown}; expected {TIME_HELP}")
        else:
            seconds = int(stamp.timestamp())
        if seconds < 0:
            raise DataError(f"{name}: row {row}: column 'time' is before 1970: {value!r}")
        times.append(seconds)
    return times


def parse_time(value: str, what: str) -> int:
    """One time given by a user (`--since`, a query parameter) as seconds since 1970; a `DataError` names `what`."""
    return _times(pd.Series([value]), what, 1)[0]


def _names(frame: pd.DataFrame, column: str, name: str, first_row: int) -> list[str]:
    if column not in frame.columns:
        return [""] * len(frame)
    names = []
    for row, value in enumerate(frame[column].tolist(), start=first_row):
        text = "" if _missing(value) else str(value).strip()
        if len(text) > 200:
            raise DataError(f"{name}: row {row}: column {column!r} is longer than 200 characters")
        names.append(text)
    return names


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _file_frames(path: Path, batch_size: int) -> Iterator[tuple[pd.DataFrame, int]]:
    # read_chunks checks that every text is there, naming the file, row and column of the first that is not.
    for chunk in read_chunks(path, ["text"], chunk_size=batch_size):
        yield chunk.frame, chunk.first_row


def _stdin_frames(stream: IO[str], batch_size: int) -> Iterator[tuple[pd.DataFrame, int]]:
    records: list[dict[str, Any]] = []
    first = 1
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        records.append(json_record(Path("<stdin>"), line_no, line))
        if len(records) == batch_size:
            yield pd.DataFrame.from_records(records), first
            records, first = [], line_no + 1
    if records:
        yield pd.DataFrame.from_records(records), first
    elif first == 1:
        raise DataError("<stdin>: no events (expected one JSON object per line)")
