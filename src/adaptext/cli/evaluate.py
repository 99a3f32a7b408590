"""`adaptext evaluate MODEL --data FILE --output DIR`: metrics and a report of a saved model on labelled data."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptext.cli.options import add_column_options, add_overwrite_option, column_overrides


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="evaluate a saved model on a labelled file")
    p.add_argument("model", help="run folder or model folder")
    p.add_argument("--data", required=True, help="labelled CSV/TSV/JSONL/Parquet file")
    p.add_argument("--output", required=True, help="new or empty folder for metrics.json, report.html and plots")
    p.add_argument(
        "--errors",
        type=int,
        default=20,
        help="misclassified examples shown in the report with the words that made the model decide (0: none)",
    )
    p.add_argument(
        "--ood-label",
        help="rows with this label are out of scope: scores the model's out-of-scope detector on them "
        "(in_scope_accuracy, oos_recall, oos_precision, ood_auroc, ood_fpr95 in metrics.json)",
    )
    p.add_argument(
        "--group-column",
        help="rows are (query, item) pairs and this column holds the query id: adds NDCG@10, MRR and recall@K per "
        "query, averaged (ndcg@10, mrr, recall@K in metrics.json; ranking.csv per query)",
    )
    p.add_argument(
        "--positive",
        help="with --group-column: the label whose probability is a pair's score (default: see docs/ranking.md)",
    )
    p.add_argument("--recall-k", type=int, default=10, help="with --group-column: K of recall@K (default 10)")
    add_overwrite_option(p, "an earlier evaluation report in --output")
    add_column_options(p, with_label=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.core.errors import AdaptextError
    from adaptext.evaluation.evaluate import evaluate_file
    from adaptext.training.lifecycle import headline

    if args.group_column is None and (args.positive is not None or args.recall_k != 10):
        raise AdaptextError("--positive and --recall-k rank pairs; give --group-column too")
    columns = column_overrides(args)
    report = evaluate_file(
        args.model,
        args.data,
        args.output,
        columns,
        overwrite=args.overwrite,
        errors=args.errors,
        ood_label=args.ood_label,
        group_column=args.group_column,
        positive=args.positive,
        recall_k=args.recall_k,
    )
    print(f"{report.n_examples} examples: {headline(report.metrics)}")
    if args.group_column is not None:
        m, k = report.metrics, args.recall_k
        print(
            f"ranking over {m['groups']:.0f} {args.group_column} groups: NDCG@10 {m['ndcg@10']:.4f}, "
            f"MRR {m['mrr']:.4f}, recall@{k} {m[f'recall@{k}']:.4f}"
        )
    if "oos_recall" in report.metrics:
        m = report.metrics
        print(
            f"in-scope accuracy {m['in_scope_accuracy']:.4f}, out-of-scope recall {m['oos_recall']:.4f}, "
            f"precision {m['oos_precision']:.4f}, AUROC {m.get('ood_auroc', float('nan')):.4f}, "
            f"FPR95 {m.get('ood_fpr95', float('nan')):.4f}"
        )
    print(f"report: {Path(args.output) / 'report.html'}")
    return 0
