"""`adaptext merge RUN --output DIR`: an adapter folded into its base model, checked against the unmerged one."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_overwrite_option


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "merge",
        help="fold a run's adapter into its base model, checked against the unmerged model",
        description="Merge a LoRA-style adapter into the base weights and save a plain transformers model folder. "
        "Fails without writing anything when the merged logits differ from the adapter model's.",
    )
    p.add_argument("run", help="run folder or adapter folder")
    p.add_argument("--output", required=True, help="new or empty folder for the merged model")
    add_overwrite_option(p, "an earlier merged model in --output")
    p.add_argument("--data", help="file of texts to check on (default: the run's validation split)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |logit difference|, times the largest |logit| when that is over 1 (default 1e-4)",
    )
    p.add_argument("--sample", type=int, default=256, help="examples to check on (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.deploy.merge import merge_adapter

    check = merge_adapter(
        args.run, args.output, data=args.data, tolerance=args.tolerance, sample=args.sample, overwrite=args.overwrite
    )
    print(f"merge check passed on {check.describe()}")
    print(f"merged model: {args.output}")
    return 0
