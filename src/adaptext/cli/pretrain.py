"""`adaptext pretrain CONFIG [key.path=value ...]`: continued pre-training on unlabelled text into a run folder."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_config_arguments
from adaptext.core.config import load_config
from adaptext.core.console import DEBUG_LOG, keep_debug_log


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pretrain",
        help="continue pre-training a model on unlabelled text (domain adaptation)",
        description="Continue pre-training model.name on the texts of data.train (a table's text column, or a .txt "
        "file with one text a line) by pretrain.method (mlm, simcse, tsdae, auto). The run folder's model/ is an "
        "encoder any strategy takes as model.name (the run folder works too).",
    )
    add_config_arguments(p, "YAML config file: model, data.train, train.*, pretrain.*", "pretrain.method=mlm")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.pretraining.run import LOSS_PNG, pretrain  # torch is imported only once a command runs

    config = load_config(args.config, args.overrides)
    result = pretrain(config, resume=args.resume, overwrite=args.overwrite)
    keep_debug_log(result.run_dir / DEBUG_LOG, append=args.resume)
    print(f"run folder:  {result.run_dir}")
    print(f"model:       {result.model_dir}  ({result.method}, {result.steps} steps, {result.seconds:.0f} s)")
    print(f"held-out loss {result.loss_before:.4f} -> {result.loss_after:.4f} on {result.held_out} texts")
    print(f"loss curve:  {result.run_dir / LOSS_PNG}")
    print(f"use it:      model.name={result.run_dir}")
    return 0
