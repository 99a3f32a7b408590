"""`adaptext train CONFIG [key.path=value ...]`: a config in, an evaluated run folder out."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_config_arguments, launched_as_main
from adaptext.core.config import load_config
from adaptext.core.console import DEBUG_LOG, keep_debug_log


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model from a YAML config",
        description="Fine-tune, keep the best checkpoint, evaluate and write the run folder.",
    )
    add_config_arguments(p, "YAML config file (see configs/)", "train.epochs=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.strategies import train  # torch is imported only once a command runs

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    keep_debug_log(result.run_dir / DEBUG_LOG, append=args.resume)  # a resumed run adds to its log
    if not launched_as_main():
        return 0  # the main process of several prints the summary
    metrics = result.metrics
    print(f"run folder:  {result.run_dir}")
    if result.history:  # the model was chosen by validation during training
        print(
            f"model:       {result.model_dir}  (best {config.train.metric_for_best}="
            f"{result.best_metric:.4f} at step {result.best_step} of {result.global_step})"
        )
    else:
        print(f"model:       {result.model_dir}  ({config.strategy}, {result.stats.get('train_seconds', 0):.0f} s)")
    from adaptext.training.lifecycle import headline

    print(f"{result.eval_split} {headline(metrics)}")
    if config.self_training.rounds:
        from adaptext.training.self_training import PSEUDO_LABELS_FILE, read_records

        rounds = read_records(result.run_dir)
        added = ", ".join(str(r["added"]) for r in rounds[1:]) or "none"
        print(
            f"self-training: {len(rounds) - 1} round(s), pseudo-labels added per round: {added}  "
            f"({result.run_dir / PSEUDO_LABELS_FILE})"
        )
    print(f"report:      {result.run_dir / 'report.html'}")
    return 0
