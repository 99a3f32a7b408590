"""`adaptext continual PLAN.yaml [key=value ...]`: a sequence of tasks trained one after another, with the accuracy
matrix that shows what each method keeps."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_run_mode_options
from adaptext.core.console import DEBUG_LOG, keep_debug_log


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "continual",
        help="train a sequence of tasks one after another and measure what is forgotten",
        description="Train the plan's tasks in order with continual.method; write the accuracy matrix "
        "(continual_metrics.json), its heatmap, the report, and the model after the last task.",
    )
    p.add_argument("plan", help="YAML plan: output_dir, seed, base, continual, tasks (docs/continual.md)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="plan overrides, e.g. continual.method=ewc")
    add_run_mode_options(
        p,
        resume="continue an interrupted plan from its first unfinished task",
        overwrite="replace an earlier plan's output folder",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.continual import load_plan, run_plan

    plan = load_plan(args.plan, args.overrides)
    result = run_plan(plan, resume=args.resume, overwrite=args.overwrite)
    keep_debug_log(result.run_dir / DEBUG_LOG, append=args.resume)
    metrics = result.metrics
    bwt = metrics.get("backward_transfer")
    print(f"run folder:  {result.run_dir}  ({metrics['method']}, {len(metrics['tasks'])} tasks)")
    print(
        f"final accuracy {metrics['final_accuracy']:.4f}, average accuracy {metrics['average_accuracy']:.4f}, "
        f"backward transfer {'n/a' if bwt is None else f'{bwt:+.4f}'}"
    )
    print(f"report:      {result.run_dir / 'report.html'}")
    return 0
