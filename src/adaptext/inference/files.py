"""Predicting every row of a file and writing the rows back with their labels and scores.

The file is read, predicted and written in chunks of rows, so memory stays flat however large it is. Until the
last chunk is written the output grows beside its final name, as `OUT.partial`, with a progress record
`OUT.partial.json` (the input's size and time, the options that decide the predictions, the rows done) updated
after each chunk; the complete file is then renamed to `OUT`. `resume=True` continues an interrupted run from its
last complete chunk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from adaptext.core.console import progress_bar
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_file, expand
from adaptext.core.run import write_json
from adaptext.data.io import check_tsv_cells
from adaptext.inference.stream import (
    DEFAULT_CHUNK_ROWS,
    OUTPUT_FORMATS,
    ChunkWriter,
    InputScan,
    read_chunks,
    remove_partial,
    scan_input,
)

if TYPE_CHECKING:  # torch is imported by the caller that builds the predictor, not by reading and writing files
    from adaptext.inference.predictor import Prediction, Predictor

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1

# The options of `Predictor.predict` at their defaults, so a run started without them compares equal on --resume.
PREDICT_DEFAULTS: dict[str, Any] = {"sliding_window": False, "stride": None, "aggregate": "mean"}


def partial_paths(output: Path) -> tuple[Path, Path]:
    """Where the output of an unfinished run grows (`OUT.partial`), and its progress record."""
    partial = output.with_name(output.name + ".partial")
    return partial, partial.with_name(partial.name + ".json")


def check_predict_output(
    input_path: str | Path, output_path: str | Path, *, overwrite: bool, resume: bool = False
) -> Path:
    """Check, before any work, that predictions may be written to `output_path`; returns it with `~` expanded.

    The output is never the input and replaces an existing file only with `overwrite`. An unfinished run's
    output beside it is continued only with `resume` (from the same input file) and discarded only with `overwrite`.
    """
    output = check_output_file(output_path, overwrite=overwrite, inputs=[input_path])
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise AdaptextError(f"{output_path}: write predictions to a .csv, .tsv, .jsonl or .parquet file")
    partial, record_path = partial_paths(output)
    if not (partial.exists() or record_path.exists()):
        return output
    if resume:
        _check_same_input(_read_record(record_path), expand(input_path))
    elif not overwrite:
        raise AdaptextError(
            f"{partial}: an unfinished prediction run is writing {output.name}; "
            "use --resume to continue it or --overwrite to start over"
        )
    return output


@dataclass
class ProgressRecord:
    """The JSON record beside `OUT.partial`: where it comes from, and how far it got."""

    input: str
    input_size: int
    input_mtime_ns: int
    settings: dict[str, Any]  # everything that decides the predictions, compared on --resume
    rows_done: int = 0
    position: int = 0  # the end of the last complete chunk: a byte offset, or a number of Parquet parts
    format: int = RECORD_FORMAT
    columns: list[str] = field(default_factory=list)  # the input's columns, so a resumed run writes the same ones

    @classmethod
    def of_input(cls, input_path: Path, settings: dict[str, Any], columns: list[str]) -> ProgressRecord:
        stat = input_path.stat()
        return cls(str(input_path.resolve()), stat.st_size, stat.st_mtime_ns, settings, columns=columns)


def _read_record(record_path: Path) -> ProgressRecord:
    try:
        return ProgressRecord(**json.loads(record_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise AdaptextError(
            f"{record_path}: cannot read the progress record ({error}); use --overwrite to start over"
        ) from None


def _check_same_input(record: ProgressRecord, input_path: Path) -> None:
    stat = input_path.stat() if input_path.is_file() else None
    if record.input != str(input_path.resolve()):
        raise AdaptextError(
            f"cannot resume: the unfinished output was predicted from {record.input}, not {input_path}; "
            "use --overwrite to start over"
        )
    if stat is None or (stat.st_size, stat.st_mtime_ns) != (record.input_size, record.input_mtime_ns):
        raise AdaptextError(
            f"cannot resume: {input_path} has changed since the unfinished output was started "
            "(its size or modification time differ); use --overwrite to start over"
        )


def _check_same_settings(record: ProgressRecord, settings: dict[str, Any]) -> None:
    for key in sorted(set(record.settings) | set(settings)):
        before, now = record.settings.get(key), settings.get(key)
        if before != now:
            raise AdaptextError(
                f"cannot resume: the unfinished output was predicted with {key}={before!r}, now {key}={now!r}; "
                "give the same options, or use --overwrite to start over"
            )


class PartialOutput:
    """The output of one prediction run while it is written: chunks appended to `OUT.partial`, the progress
    record updated after each, and the file renamed to `OUT` once complete. Open with `open_output`."""

    def __init__(self, output: Path, writer: ChunkWriter, record: ProgressRecord, record_path: Path) -> None:
        self.output, self.writer, self.record, self.record_path = output, writer, record, record_path
        self.columns: list[str] | None = None  # fixed by the first chunk written in this process

    @property
    def rows_done(self) -> int:
        return self.record.rows_done

    def write(self, frame: pd.DataFrame) -> None:
        """Append the next rows (input columns, then `label` and `score`) and record the progress."""
        if self.columns is None:
            self.columns = [str(c) for c in frame.columns]
        elif [str(c) for c in frame.columns] != self.columns:
            extra = [str(c) for c in frame.columns if str(c) not in self.columns]
            if extra:
                raise AdaptextError(
                    f"{self.output}: rows from {self.rows_done + 1} have column(s) {extra} the first rows lack"
                )
            frame = frame.reindex(columns=self.columns)
        self.writer.write(frame, self.rows_done + 1)
        self.record.rows_done += len(frame)
        self.record.position = self.writer.position
        write_json(self.record_path, asdict(self.record))

    def finish(self) -> int:
        """Move the complete file to its final name; returns the number of rows in it."""
        self.writer.finish(self.output)
        self.record_path.unlink()
        return self.record.rows_done


@contextmanager
def open_output(
    output: Path, input_path: Path, scan: InputScan, settings: dict[str, Any], *, resume: bool
) -> Iterator[PartialOutput]:
    """Start the output of a prediction run, or continue an unfinished one (`resume`, same input and `settings`).

    `output` must have passed `check_predict_output`. Whatever stops the run after its first chunk leaves
    `OUT.partial` and its record for `resume`.
    """
    partial, record_path = partial_paths(output)
    fmt = output.suffix.lower()
    record: ProgressRecord | None = None
    if resume and record_path.exists():
        record = _read_record(record_path)
        _check_same_input(record, input_path)
        _check_same_settings(record, settings)
        if record.columns != scan.columns:
            raise AdaptextError(f"cannot resume: the columns of {input_path} differ from the unfinished output's")
        writer = ChunkWriter(partial, fmt, name=output, resume_at=record.position)
        logger.info("%s: resuming after row %d", partial, record.rows_done)
    else:
        if resume:
            logger.info("%s: no unfinished run to resume; starting", output)
        if partial.exists():
            remove_partial(partial)  # allowed by `check_predict_output` only with overwrite
        record = ProgressRecord.of_input(input_path, settings, scan.columns)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(record_path, asdict(record))
        writer = ChunkWriter(partial, fmt, name=output)
    try:
        yield PartialOutput(output, writer, record, record_path)
    except BaseException:
        writer.close()
        if record.rows_done == 0:  # stopped before the first chunk (a bad option, say): nothing to resume
            remove_partial(partial)
            record_path.unlink(missing_ok=True)
        raise
    writer.close()


def add_predictions(
    frame: pd.DataFrame, predictions: Sequence[Prediction], *, multi_label: bool, delimiter: str, as_lists: bool
) -> pd.DataFrame:
    """`frame` with `label` and `score` columns set from `predictions` (one per row, in order); for a regression
    model only `score`, the predicted value.

    Multi-label: the predicted labels and their scores, best first, as lists (`as_lists`), else joined with
    `delimiter`. A model with an out-of-scope detector adds `ood_score` (its label is then `ood.label` for a text
    out of scope)."""
    frame = frame.copy()
    if multi_label:
        frame["label"] = [p.labels if as_lists else delimiter.join(p.labels) for p in predictions]
        scores = [[p.scores[name] for name in p.labels] for p in predictions]
        frame["score"] = scores if as_lists else [delimiter.join(f"{s:.6f}" for s in row) for row in scores]
    elif predictions and not predictions[0].labels:  # a regression model: a value per row, no label
        frame["score"] = [p.score for p in predictions]
    else:
        frame["label"] = [p.label for p in predictions]
        frame["score"] = [p.score for p in predictions]
        if predictions and predictions[0].ood_score is not None:  # the model has an out-of-scope detector
            frame["ood_score"] = [p.ood_score for p in predictions]
    return frame


def prediction_settings(predictor: Predictor, text_columns: list[str], delimiter: str, **options: Any) -> dict:
    """What decides the rows of a prediction file: the model's labels and thresholds, the columns read, the options
    of `Predictor.predict`. An unfinished file is continued only with the same settings."""
    return {
        "labels": list(predictor.labels),
        "multi_label": predictor.multi_label,
        "threshold": predictor.threshold,
        "max_length": predictor.max_length,
        "text_columns": list(text_columns),
        "label_delimiter": delimiter,
        **PREDICT_DEFAULTS,
        **{key: value for key, value in sorted(options.items()) if key != "progress"},
        # Scores change with a calibration or detector fitted anew: only set when the model has them.
        **({"temperature": predictor.temperature} if predictor.temperature != 1.0 else {}),
        **({"ood": predictor.info.ood} if predictor.info.ood else {}),
    }


def prepare_input(input_path: Path, output: Path, text_columns: list[str], chunk_size: int) -> InputScan:
    """Check every row of the input before any prediction (see `scan_input`); for a TSV output, also that no
    input cell holds a tab or line break."""
    check = None
    if output.suffix.lower() == ".tsv":

        def check(frame: pd.DataFrame, first_row: int) -> None:
            check_tsv_cells(output, frame, first_row=first_row)

    scan = scan_input(input_path, text_columns, chunk_size=chunk_size, check=check)
    taken = [c for c in ("label", "score") if c in scan.columns]
    if taken:
        logger.warning("%s: column(s) %s are replaced by the predictions", input_path, taken)
    return scan


def predict_file(
    predictor: Predictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_delimiter: str = "|",
    overwrite: bool = False,
    resume: bool = False,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    **options: Any,
) -> int:
    """Predict every row of a CSV/TSV/JSONL/Parquet file and write it out with `label` and `score` added.

    The output format follows `output_path`'s suffix (`.csv`, `.tsv`, `.jsonl` or `.parquet`); the input's columns
    are kept. Multi-label predictions are joined with `label_delimiter` in CSV/TSV and kept as lists in JSONL and
    Parquet. Rows are read, predicted and written `chunk_size` at a time; `resume` continues an interrupted run
    (see the module docstring). The output is never the input file, and an existing file is replaced only with
    `overwrite`. `options` go to `Predictor.predict` (`sliding_window`, `stride`, `aggregate`).
    Returns the number of rows written.

    >>> predict_file(Predictor.from_dir("runs/quickstart"), "tickets.csv", "labelled.parquet")  # doctest: +SKIP
    120000
    """
    input_path = expand(input_path)
    output = check_predict_output(input_path, output_path, overwrite=overwrite, resume=resume)
    text_columns = [text_column] + ([text_pair_column] if text_pair_column else [])
    scan = prepare_input(input_path, output, text_columns, chunk_size)
    settings = prediction_settings(predictor, text_columns, label_delimiter, **options)
    options.pop("progress", None)
    as_lists = output.suffix.lower() in (".jsonl", ".parquet")
    with open_output(output, input_path, scan, settings, resume=resume) as out:
        chunks = read_chunks(input_path, text_columns, chunk_size=chunk_size, skip=out.rows_done, columns=scan.columns)
        with progress_bar(total=scan.rows, initial=out.rows_done, desc="predict", unit="row") as bar:
            for chunk in chunks:
                predictions = predictor.predict(chunk.texts, chunk.pairs, **options)
                out.write(
                    add_predictions(
                        chunk.frame,
                        predictions,
                        multi_label=predictor.multi_label,
                        delimiter=label_delimiter,
                        as_lists=as_lists,
                    )
                )
                bar.update(len(chunk))
        return out.finish()
