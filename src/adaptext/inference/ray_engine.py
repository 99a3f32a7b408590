"""Predicting a file on a pool of Ray workers (`adaptext predict --engine ray`), one model per worker.

Ray Data reads the input, a fixed pool of actors (each holding one `Predictor`) predicts batches of rows, and this
process writes the rows back in input order through the same chunked, resumable output as the local engine
(`adaptext.inference.files`). Ray is started here and stopped afterwards, unless `RAY_ADDRESS` names a cluster to
join or this process already runs one. Ray is imported only by this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from adaptext.core.console import progress_bar
from adaptext.core.device import freeze_loaded_objects
from adaptext.core.errors import AdaptextError, require_extra
from adaptext.core.outputs import expand
from adaptext.data.io import file_format, text_values
from adaptext.inference.files import (
    PartialOutput,
    add_predictions,
    check_predict_output,
    open_output,
    prediction_settings,
    prepare_input,
)
from adaptext.inference.predictor import Predictor
from adaptext.inference.stream import DEFAULT_CHUNK_ROWS

logger = logging.getLogger(__name__)

QUIET_LOGGERS = {
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray._private.authentication": logging.ERROR,
    "ray.data._internal.progress": logging.ERROR,
}

MAX_ROWS_PER_CALL = 4096  # rows a worker predicts per call: length-sorted batches pad little within it


class PredictBatch:
    """The map function of the actor pool: loads one `Predictor` per worker, then labels batches of rows."""

    def __init__(self, model_dir: str, settings: dict[str, Any], columns: list[str], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.predictor = Predictor.from_dir(model_dir, device="cpu", batch_size=settings["batch_size"])
        self.settings = settings
        self.columns = columns
        freeze_loaded_objects()  # the worker process holds this one model until the pool ends, as `predict` does

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        s = self.settings
        frame = frame.reindex(columns=self.columns)  # the local reader's columns, whatever Ray's reader added
        source = Path(s["source"])
        texts = [text_values(source, frame, column) for column in s["text_columns"]]
        predictions = self.predictor.predict(texts[0], texts[1] if len(texts) > 1 else None, **s["options"])
        return add_predictions(
            frame,
            predictions,
            multi_label=self.predictor.multi_label,
            delimiter=s["label_delimiter"],
            as_lists=s["as_lists"],
        )


def predict_file_ray(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    num_workers: int | None = None,
    batch_size: int = 64,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    **options: Any,
) -> int:
    """`predict_file` with the rows predicted by `num_workers` Ray workers; the output is the same file.

    Columns default to the ones the model was trained on. `num_workers` defaults to one per two CPUs of the Ray
    cluster; each worker gets an equal share of the CPUs (and as many torch threads). With `resume`, the rows
    already written are read and predicted again but not written twice.

    >>> predict_file_ray("runs/quickstart", "tickets.parquet", "labelled.parquet", num_workers=4)  # doctest: +SKIP
    120000
    """
    input_path = expand(input_path)
    output = check_predict_output(input_path, output_path, overwrite=overwrite, resume=resume)
    predictor = Predictor.from_dir(expand(model_dir), device="cpu", batch_size=batch_size)  # fails here, not in Ray
    info = predictor.info
    text_columns = [text_column or info.text_column]
    if text_pair_column or info.text_pair_column:
        text_columns.append(text_pair_column or info.text_pair_column or "")
    scan = prepare_input(input_path, output, text_columns, chunk_size)
    settings = prediction_settings(predictor, text_columns, info.label_delimiter, **options)
    del predictor
    worker_settings = {
        "source": str(input_path),
        "text_columns": text_columns,
        "label_delimiter": info.label_delimiter,
        "as_lists": output.suffix.lower() in (".jsonl", ".parquet"),
        "batch_size": batch_size,
        "options": options,
    }
    with ray_session() as cpus, open_output(output, input_path, scan, settings, resume=resume) as out:
        from ray.data import ActorPoolStrategy

        workers = num_workers or max(1, int(cpus) // 2)
        dataset = _read(input_path, scan.columns)
        # Ray Data's own read tasks need a CPU too: the workers share what is left.
        per_worker = max(cpus - 1, 1) / workers
        predicted = dataset.map_batches(
            PredictBatch,
            fn_constructor_args=(str(expand(model_dir)), worker_settings, scan.columns, max(1, int(cpus // workers))),
            batch_size=min(max(batch_size, chunk_size // workers), MAX_ROWS_PER_CALL),
            batch_format="pandas",
            compute=ActorPoolStrategy(size=workers),  # a fixed pool: each worker loads the model once
            num_cpus=per_worker,
        )
        logger.info("predicting %d rows on %d Ray workers (%.2g CPUs each)", scan.rows, workers, per_worker)
        _write_in_order(predicted, out, scan.rows, chunk_size)
        return out.finish()


def _write_in_order(predicted: Any, out: PartialOutput, total: int, chunk_size: int) -> None:
    skip = out.rows_done  # a resumed run: these rows are in the output already
    with progress_bar(total=total, initial=skip, desc="predict", unit="row") as bar:
        for frame in predicted.iter_batches(batch_size=chunk_size, batch_format="pandas", prefetch_batches=2):
            if skip:
                dropped = min(skip, len(frame))
                frame, skip = frame.iloc[dropped:], skip - dropped
                if frame.empty:
                    continue
            out.write(frame.reset_index(drop=True))
            bar.update(len(frame))
    if out.rows_done != total:
        raise AdaptextError(f"Ray returned {out.rows_done} rows of {total}; the output was not finished")


def _read(path: Path, columns: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import ray.data

    fmt = file_format(path)
    if fmt == "parquet":
        return ray.data.read_parquet(str(path))
    if fmt == "jsonl":
        return ray.data.read_json(str(path), lines=True, file_extensions=None)
    # Every cell a string, empty cells included, as the local reader reads them.
    convert = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(columns, pa.string()),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    if fmt == "tsv":
        parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
    else:
        parse = pa_csv.ParseOptions(newlines_in_values=True)
    return ray.data.read_csv(str(path), parse_options=parse, convert_options=convert, file_extensions=None)


@contextmanager
def ray_session() -> Iterator[float]:
    """Ray for one command: joins `RAY_ADDRESS` when set, else starts a local Ray on this machine's CPUs, and stops
    what it started. Yields the cluster's CPUs. Ray Data keeps rows in order and shows no progress bars of its own."""
    require_extra("ray", "--engine ray")
    import ray
    from ray.data import DataContext

    # Ray's own warnings stay; its notes that token authentication is on (as it should be) and that its progress
    # bars are off (this command shows its own) do not help.
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    started = not ray.is_initialized()
    if started:
        quiet: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": False,
        }
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], **quiet)
        else:
            ray.init(num_cpus=_local_cpus(), **quiet)
    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.print_on_execution_start)
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = False  # one adaptext bar instead
    context.print_on_execution_start = False
    try:
        yield float(ray.cluster_resources().get("CPU", 1.0))
    finally:
        (
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.print_on_execution_start,
        ) = saved
        if started:
            ray.shutdown()


def _local_cpus() -> int:
    # The CPUs this process may run on (a container or `taskset` may allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
