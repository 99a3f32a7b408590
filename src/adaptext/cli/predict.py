"""`adaptext predict MODEL --input FILE --output FILE`: a label and score for every row of a file."""

from __future__ import annotations

import argparse
import sys

from adaptext.cli.options import add_column_options, add_overwrite_option
from adaptext.core.console import keep_debug_log
from adaptext.core.outputs import expand

DEFAULT_CHUNK_ROWS = 10_000  # adaptext.inference.stream.DEFAULT_CHUNK_ROWS, not imported so --help stays instant


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", help="predict labels for every row of a file")
    p.add_argument("model", help="run folder or model folder")
    p.add_argument("--input", required=True, help="CSV/TSV/JSONL/Parquet file with a text column")
    p.add_argument(
        "--output", required=True, help="output .csv, .tsv, .jsonl or .parquet (input columns + label, score)"
    )
    add_overwrite_option(p, "an existing --output file (never the input), or discard an unfinished one")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last complete chunk (OUTPUT.partial), same input and options",
    )
    add_column_options(p, with_label=False)
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"rows read, predicted and written at a time; memory grows with it (default {DEFAULT_CHUNK_ROWS})",
    )
    p.add_argument(
        "--sliding-window",
        action="store_true",
        help="score texts longer than max_length in overlapping windows and aggregate",
    )
    p.add_argument(
        "--stride", type=int, default=None, help="tokens of overlap between windows (default: min(32, max_length/4))"
    )
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="how window scores combine")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a pool of Ray workers, one model each (default local)",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="Ray workers (--engine ray; default: one per 2 CPU cores)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.core.errors import AdaptextError
    from adaptext.inference.files import check_predict_output

    if args.num_workers is not None and args.engine != "ray":
        raise AdaptextError("--num-workers is for --engine ray")
    for name in ("batch_size", "chunk_size", "num_workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AdaptextError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    # Before the model is loaded.
    check_predict_output(args.input, args.output, overwrite=args.overwrite, resume=args.resume)
    try:
        count = _predict(args)
    except KeyboardInterrupt:
        print("stopped: run the same command with --resume to continue from the last complete chunk", file=sys.stderr)
        raise
    output = expand(args.output)
    keep_debug_log(output.with_name(output.name + ".debug.log"), append=args.resume)  # beside OUT, as OUT.partial is
    print(f"{count} predictions written to {args.output}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    options = {"sliding_window": args.sliding_window, "stride": args.stride, "aggregate": args.aggregate}
    if args.engine == "ray":
        from adaptext.inference.ray_engine import predict_file_ray

        return predict_file_ray(
            expand(args.model),
            args.input,
            args.output,
            num_workers=args.num_workers,
            batch_size=args.batch_size,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            overwrite=args.overwrite,
            resume=args.resume,
            chunk_size=args.chunk_size,
            **options,
        )
    from adaptext.core.device import freeze_loaded_objects
    from adaptext.inference.files import predict_file
    from adaptext.inference.predictor import Predictor

    predictor = Predictor.from_dir(expand(args.model), batch_size=args.batch_size)
    freeze_loaded_objects()  # this process predicts until it ends
    saved = predictor.info
    return predict_file(
        predictor,
        args.input,
        args.output,
        text_column=args.text_column or saved.text_column,
        text_pair_column=args.text_pair_column or saved.text_pair_column,
        label_delimiter=saved.label_delimiter,
        overwrite=args.overwrite,
        resume=args.resume,
        chunk_size=args.chunk_size,
        **options,
    )
