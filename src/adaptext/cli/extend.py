"""`adaptext extend RUN --data NEW --output NEW_RUN [key=value ...]`: continue a trained run on new data, which may
bring new labels, without forgetting the old ones."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_run_mode_options
from adaptext.core.console import DEBUG_LOG, keep_debug_log


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "extend",
        help="continue a trained run on new data that may bring new labels, keeping the old ones",
        description="Grow the run's head for the new labels and train on the new data, keeping what the model knew "
        "by continual.method (default replay). The output is an ordinary run folder; its report compares the old "
        "and new labels before and after.",
    )
    p.add_argument("run", help="the run folder (or its model folder) to continue")
    p.add_argument("--data", required=True, help="the new training file (CSV/TSV/JSONL/Parquet)")
    p.add_argument("--output", required=True, help="new or empty folder for the continued run")
    p.add_argument("--validation", default=None, help="validation file for the new data (default: a split of --data)")
    p.add_argument("--test", default=None, help="test file for the new data")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. continual.method=lwf")
    add_run_mode_options(
        p, resume="continue an interrupted extend in --output", overwrite="replace an earlier run in --output"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.continual import extend, extend_config, previous_run
    from adaptext.core.config import parse_overrides

    previous = previous_run(args.run)
    overrides = parse_overrides(
        [
            f"data.train={args.data}",
            f"output_dir={args.output}",
            *([f"data.validation={args.validation}"] if args.validation else []),
            *([f"data.test={args.test}"] if args.test else []),
            *args.overrides,
        ]
    )
    config = extend_config(previous, overrides)
    result = extend(args.run, config, overwrite=args.overwrite, resume=args.resume)
    keep_debug_log(result.run_dir / DEBUG_LOG, append=args.resume)
    print(f"run folder:  {result.run_dir}")
    print(f"model:       {result.model_dir}  (continual.method {config.continual.method})")
    print(f"{result.eval_split} accuracy {result.metrics['accuracy']:.4f}, macro_f1 {result.metrics['macro_f1']:.4f}")
    print(f"report:      {result.run_dir / 'report.html'}")
    return 0
