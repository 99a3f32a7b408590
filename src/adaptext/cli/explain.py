"""`adaptext explain MODEL --data FILE --output DIR`: which words made the model decide, for each text."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptext.cli.options import add_column_options, add_overwrite_option, column_overrides


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("explain", help="word attributions of a saved model's decisions, with an HTML page")
    p.add_argument("model", help="run folder, model folder, adapter folder or ONNX export")
    p.add_argument("--data", required=True, help="CSV/TSV/JSONL/Parquet file with the texts (labels optional)")
    p.add_argument("--output", required=True, help="new or empty folder for explanations.jsonl/.html")
    p.add_argument(
        "--method",
        nargs="+",
        default=["default"],
        metavar="METHOD",
        help="ig (integrated gradients), occlusion, shap (needs adaptext[explain]), any registered method, all that "
        "apply, or default (ig where the model allows, else occlusion)",
    )
    p.add_argument(
        "--target",
        default="predicted",
        help="the label to explain: predicted (default), true (the data's label) or a label name",
    )
    p.add_argument("--limit", type=int, default=None, help="explain only the first N texts")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline of the faithfulness scores")
    add_overwrite_option(p, "an earlier explanation in --output")
    add_column_options(p, with_label=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.explain.explainer import explain_file

    columns = column_overrides(args)
    summary = explain_file(
        args.model,
        args.data,
        args.output,
        methods=args.method,
        target=args.target,
        columns=columns,
        limit=args.limit,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    random = summary["random"]
    print(
        f"{summary['n_texts']} texts; random baseline: comprehensiveness {random['comprehensiveness']:.3f}, "
        f"sufficiency {random['sufficiency']:.3f}"
    )
    for name, numbers in summary["methods"].items():
        print(
            f"{name}: comprehensiveness {numbers['comprehensiveness']:.3f}, sufficiency {numbers['sufficiency']:.3f}, "
            f"{numbers['seconds_per_text']:.3f} s per text"
        )
    for name, reason in summary["not_applicable"].items():
        print(f"{name}: not applicable: {reason}")
    print(f"page: {Path(args.output) / 'explanations.html'}")
    return 0
