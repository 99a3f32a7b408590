"""`adaptext ensemble RUN1 RUN2 ... --output DIR`: one servable folder averaging the runs' probabilities."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_overwrite_option


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine runs into one model folder: their probabilities averaged (or, --average-weights, their weights)",
        description="Copy the runs' models into one folder that predict, evaluate and serve load as one classifier "
        "whose probabilities are the weighted mean of the members'. The members must have the same labels in the "
        "same order, all single-label or all multi-label, and the same tokenizer. With --average-weights, the "
        "weights of models of one architecture are averaged into one plain model folder instead.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, model folders or adapter folders (two or more)")
    p.add_argument("--output", required=True, help="new or empty folder for the ensemble")
    add_overwrite_option(p, "an earlier ensemble in --output")
    p.add_argument(
        "--weights",
        help="comma-separated weight per member, in the order given (default equal; normalised to sum to 1)",
    )
    p.add_argument(
        "--average-weights",
        action="store_true",
        help="average the models' weights into one model (same architecture) instead of their probabilities",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.deploy.ensemble import average_weights, build_ensemble, parse_weights

    weights = parse_weights(args.weights, len(args.runs)) if args.weights is not None else None
    make = average_weights if args.average_weights else build_ensemble
    result = make(args.runs, args.output, weights=weights, overwrite=args.overwrite)
    kind = "multi-label" if result.multi_label else "single-label"
    what = "weights averaged" if args.average_weights else "probabilities averaged"
    print(f"{len(result.members)} members, {what}, {len(result.labels)} labels ({kind}):")
    for member, weight in zip(result.members, result.weights, strict=True):
        print(f"  {weight:.4g}  {member}")
    print(f"{'averaged model' if args.average_weights else 'ensemble'}: {result.output}")
    return 0
