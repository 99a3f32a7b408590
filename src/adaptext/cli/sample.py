"""`adaptext sample DATA --per-class N --output FILE`: N rows of every label, reproducibly (few-shot files)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from adaptext.cli.options import add_column_options, add_overwrite_option
from adaptext.core.config import DataConfig
from adaptext.core.errors import DataError
from adaptext.core.outputs import check_output_file, expand

logger = logging.getLogger("adaptext")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sample",
        help="draw N examples per label from a labelled file, reproducibly (few-shot training files)",
        description="Write N rows of every label (all rows of a label that has fewer), in file order, with all "
        "columns kept. The same file, N and seed always give the same rows.",
    )
    p.add_argument("data", help="labelled CSV/TSV/JSONL/Parquet file")
    p.add_argument("--per-class", type=int, required=True, help="rows per label")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output", required=True, help="output .csv, .tsv, .jsonl or .parquet file")
    p.add_argument("--rest", help="also write the rows not drawn to this file (held-out data to evaluate on)")
    add_overwrite_option(p, "existing --output / --rest files (never the input)")
    add_column_options(p, with_label=True, with_pair=False)
    p.add_argument("--multi-label", action="store_true", help="rows carry several labels (see data.multi_label)")
    p.add_argument("--label-delimiter", default="|", help="separator of labels in a CSV/TSV cell (default |)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = DataConfig(
        text_column=args.text_column or "text",
        label_column=args.label_column or "label",
        multi_label=args.multi_label,
        label_delimiter=args.label_delimiter,
    )
    sample = sample_file(args.data, cfg, args.per_class, args.seed, args.output, args.rest, overwrite=args.overwrite)
    print(
        f"{sample.drawn} of {sample.total} rows ({args.per_class} per label, seed {args.seed}) "
        f"written to {sample.output}"
    )
    if args.rest:
        print(f"the other {sample.total - sample.drawn} rows written to {args.rest}")
    return 0


@dataclass(frozen=True)
class Sample:
    """What `sample_file` wrote: `drawn` of the file's `total` rows into `output`, the others into `rest`."""

    drawn: int
    total: int
    output: Path
    rest: Path | None


def sample_file(
    data: str, cfg: DataConfig, per_class: int, seed: int, output: str, rest: str | None, *, overwrite: bool
) -> Sample:
    """Write `per_class` rows of every label of `data` to `output` (and the other rows to `rest`), all columns kept.

    Both output files are checked before the data is read; `rest` and `output` must differ.
    """
    from adaptext.data.io import SUPPORTED_SUFFIXES, load_examples, write_table
    from adaptext.data.splits import sample_per_class

    names = [output] + ([rest] if rest else [])
    outputs = [check_output_file(name, overwrite=overwrite, inputs=[data]) for name in names]
    for name, path in zip(names, outputs, strict=True):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(f"{name}: unsupported output format; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise DataError("--output and --rest name the same file")
    examples = load_examples(expand(data), cfg)
    chosen, short = sample_per_class(examples, per_class, seed)
    for name, count in short.items():
        logger.warning("label %r has only %d example(s); all are taken", name, count)
    assert examples.frame is not None
    write_table(examples.frame.iloc[chosen], outputs[0])
    if len(outputs) == 2:
        taken = set(chosen)
        write_table(examples.frame.iloc[[i for i in range(len(examples)) if i not in taken]], outputs[1])
    return Sample(drawn=len(chosen), total=len(examples), output=outputs[0], rest=outputs[1] if rest else None)
