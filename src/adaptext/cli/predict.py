"""`adaptext predict MODEL --input FILE --output FILE`: a label and score for every row of a file."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_column_options, add_overwrite_option
from adaptext.core.outputs import expand


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", help="predict labels for every row of a file")
    p.add_argument("model", help="run folder or model folder")
    p.add_argument("--input", required=True, help="CSV/TSV/JSONL/Parquet file with a text column")
    p.add_argument("--output", required=True, help="output .csv, .tsv or .jsonl (input columns + label, score)")
    add_overwrite_option(p, "an existing --output file (never the input)")
    add_column_options(p, with_label=False)
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument(
        "--sliding-window",
        action="store_true",
        help="score texts longer than max_length in overlapping windows and aggregate",
    )
    p.add_argument(
        "--stride", type=int, default=None, help="tokens of overlap between windows (default: min(32, max_length/4))"
    )
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="how window scores combine")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.inference.files import check_predict_output, predict_file
    from adaptext.inference.predictor import Predictor

    check_predict_output(args.input, args.output, overwrite=args.overwrite)  # before the model is loaded
    predictor = Predictor.from_dir(expand(args.model), batch_size=args.batch_size)
    saved = predictor.info
    count = predict_file(
        predictor,
        args.input,
        args.output,
        text_column=args.text_column or saved.text_column,
        text_pair_column=args.text_pair_column or saved.text_pair_column,
        label_delimiter=saved.label_delimiter,
        sliding_window=args.sliding_window,
        stride=args.stride,
        aggregate=args.aggregate,
        overwrite=args.overwrite,
    )
    print(f"{count} predictions written to {args.output}")
    return 0
