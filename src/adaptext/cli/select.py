"""`adaptext select RUN --pool POOL --n N --output TO_LABEL`: the N pool texts whose labels would help most."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_overwrite_option

STRATEGIES = ("entropy", "margin", "diverse", "random")  # adaptext.apps.select.SELECT_STRATEGIES; --help stays instant
DEFAULT_STRATEGY = "diverse"  # adaptext.apps.select.DEFAULT_STRATEGY


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "select",
        help="active learning: pick the N unlabelled texts whose labels would help the model most",
        description="Scores the texts of a pool file with a trained classifier and writes the N most useful to "
        "label, best first: all their columns, the model's guess (predicted_label, score), selection_score, "
        "selection_rank and an empty label column to fill in. Rows with blank text, rows whose label is already "
        "filled and repeated texts are never picked. See docs/label_efficiency.md.",
    )
    p.add_argument("model", help="run folder or model folder of a classifier")
    p.add_argument("--pool", required=True, help="CSV/TSV/JSONL/Parquet file of texts (a label column is allowed)")
    p.add_argument("--n", type=int, required=True, help="texts to pick")
    p.add_argument("--output", required=True, help="output .csv, .tsv, .jsonl or .parquet file")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help="entropy: most uncertain; margin: smallest gap between the two likeliest labels; diverse: uncertain "
        f"and unlike each other (weighted k-means); random: the baseline (default {DEFAULT_STRATEGY})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random and diverse (default 0)")
    p.add_argument("--text-column", help="text column of --pool (default: as in training, else 'text')")
    add_overwrite_option(p, "an existing --output file (never the pool)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.apps.select import select_pool
    from adaptext.core.errors import AdaptextError
    from adaptext.core.outputs import check_output_file, expand
    from adaptext.inference.predictor import Predictor

    if args.n < 1 or args.batch_size < 1:
        raise AdaptextError(f"--n and --batch-size must be at least 1, got {args.n} and {args.batch_size}")
    check_output_file(args.output, overwrite=args.overwrite, inputs=[args.pool])  # before the model is loaded
    predictor = Predictor.from_dir(expand(args.model), batch_size=args.batch_size)
    selection = select_pool(
        predictor,
        args.pool,
        args.output,
        n=args.n,
        strategy=args.strategy,
        seed=args.seed,
        text_column=args.text_column,
        overwrite=args.overwrite,
    )
    skipped = (
        f"; not candidates: {selection.blank} blank, {selection.labelled} already labelled, "
        f"{selection.duplicates} repeated texts"
        if selection.blank or selection.labelled or selection.duplicates
        else ""
    )
    print(
        f"{selection.picked} of {selection.candidates} candidate rows (pool: {selection.pool_rows} rows{skipped}) "
        f"picked by {selection.strategy} and written to {selection.output}, best first; fill in the label column"
    )
    if selection.picked < selection.requested:
        print(f"warning: {selection.requested} asked for, but only {selection.picked} rows could be picked")
    return 0
