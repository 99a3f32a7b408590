"""`adaptext sample DATA --per-class N --output FILE`: N rows of every label, reproducibly (few-shot files)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from adaptext.cli.options import add_column_options, add_overwrite_option
from adaptext.core.config import DataConfig
from adaptext.core.errors import ConfigError


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
    from adaptext.data.splits import sample_file

    try:
        cfg = DataConfig(
            text_column=args.text_column or "text",
            label_column=args.label_column or "label",
            multi_label=args.multi_label,
            label_delimiter=args.label_delimiter,
        )
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(problems) from None
    sample = sample_file(args.data, cfg, args.per_class, args.seed, args.output, args.rest, overwrite=args.overwrite)
    print(
        f"{sample.drawn} of {sample.total} rows ({args.per_class} per label, seed {args.seed}) "
        f"written to {sample.output}"
    )
    if args.rest:
        print(f"the other {sample.total - sample.drawn} rows written to {args.rest}")
    return 0
