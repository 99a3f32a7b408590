"""Predicting every row of a file and writing the rows back with their labels and scores."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adaptext.core.config import DataConfig
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_file, expand
from adaptext.data.io import load_examples, write_table
from adaptext.inference.predictor import Predictor

logger = logging.getLogger(__name__)


def check_predict_output(input_path: str | Path, output_path: str | Path, *, overwrite: bool) -> Path:
    """Check, before any work, that predictions may be written to `output_path`; returns it with `~` expanded."""
    output = check_output_file(output_path, overwrite=overwrite, inputs=[input_path])
    if output.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        raise AdaptextError(f"{output_path}: write predictions to a .csv, .tsv or .jsonl file")
    return output


def predict_file(
    predictor: Predictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_delimiter: str = "|",
    overwrite: bool = False,
    **options: Any,
) -> int:
    """Predict every row of a CSV/TSV/JSONL/Parquet file and write it out with `label` and `score` added.

    The output format follows `output_path`'s suffix (`.csv`, `.tsv` or `.jsonl`); the input's columns are kept.
    Multi-label predictions are joined with `label_delimiter` in CSV/TSV and kept as lists in JSONL.
    The output is never the input file, and an existing file is replaced only with `overwrite`.
    Returns the number of rows written.
    """
    input_path = expand(input_path)
    output_path = check_predict_output(input_path, output_path, overwrite=overwrite)
    out_format = output_path.suffix.lower()
    cfg = DataConfig(text_column=text_column, text_pair_column=text_pair_column)
    data = load_examples(input_path, cfg, with_labels=False)
    predictions = predictor.predict(data.texts, data.pairs, progress=True, **options)
    assert data.frame is not None
    frame = data.frame.copy()
    taken = [c for c in ("label", "score") if c in frame.columns]
    if taken:
        logger.warning("%s: column(s) %s are replaced by the predictions", input_path, taken)
    as_lists = out_format == ".jsonl"
    if predictor.multi_label:
        frame["label"] = [p.labels if as_lists else label_delimiter.join(p.labels) for p in predictions]
        scores = [[p.scores[name] for name in p.labels] for p in predictions]
        frame["score"] = scores if as_lists else [label_delimiter.join(f"{s:.6f}" for s in row) for row in scores]
    else:
        frame["label"] = [p.label for p in predictions]
        frame["score"] = [p.score for p in predictions]
    write_table(frame, output_path)
    return len(frame)
