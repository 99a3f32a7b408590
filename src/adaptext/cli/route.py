"""`adaptext route CONFIG --input FILE --output FILE [--evaluate]`: answer, answer from the FAQ, or hand over."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_overwrite_option
from adaptext.core.outputs import expand


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "route",
        help="route texts with an intent model: answer, answer from an FAQ, or hand over to a person",
        description="Route every row of --input as the router config says (model run, answers file, handoff rule, "
        "optional FAQ) and write the rows with intent, confidence, action (answer | faq | handoff), answer, score "
        "and reason. With --evaluate, the file's labels score the routes: automation, wrong-answer and handoff "
        "rates in OUTPUT_STEM.evaluation.json and the threshold curve in OUTPUT_STEM.curve.png.",
    )
    p.add_argument("config", help="router config (YAML): model, answers, handoff, faq, evaluate")
    p.add_argument("--input", required=True, help="CSV/TSV/JSONL/Parquet file with a text column")
    p.add_argument("--output", required=True, help="output .csv, .tsv, .jsonl or .parquet")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="score the routes against the input's label column (evaluate.label_column; evaluate.ood_label marks "
        "out-of-scope rows)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    add_overwrite_option(p, "an existing --output file (and its evaluation files), never an input")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.apps.router.config import load_route_config
    from adaptext.apps.router.files import route_file
    from adaptext.core.errors import AdaptextError

    if args.batch_size < 1:
        raise AdaptextError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = load_route_config(args.config)
    output, input_path = expand(args.output), expand(args.input)
    result = route_file(
        config, input_path, output, evaluate=args.evaluate, overwrite=args.overwrite, batch_size=args.batch_size
    )
    counts = ", ".join(f"{action} {count}" for action, count in result.actions.items())
    print(f"{result.rows} rows routed to {output} ({counts})")
    if result.report is not None:
        m = result.report.metrics
        print(
            f"answered correctly {100 * m['automation_rate']:.1f}% of all texts "
            f"({100 * m['in_scope_automation']:.1f}% of in-scope), wrong answers {100 * m['wrong_answer_rate']:.1f}%, "
            f"FAQ {100 * m['faq_rate']:.1f}%, handoff {100 * m['handoff_rate']:.1f}% at min_confidence "
            f"{m['min_confidence']:.2f}"
            + (
                f" (rates over all texts for traffic with {100 * m['out_of_scope_share']:g}% out of scope)"
                if m["out_of_scope_share_configured"]
                else ""
            )
        )
        best = result.report.suggested
        limit = f"{100 * result.report.max_wrong_rate:g}%"
        level = m["wrong_rate_confidence"]
        if level is not None:
            limit += f" with {100 * level:g}% confidence"
        if best is None:
            print(f"no min_confidence keeps wrong answers within {limit}")
        else:
            print(
                f"lowest min_confidence with wrong answers within {limit}: {best['min_confidence']:.4f} "
                f"(answers {100 * best['in_scope_automation']:.1f}% of in-scope texts correctly)"
            )
        print(f"report: {result.report_json}; curve: {result.curve_png}")
    return 0
