"""`adaptext audit DATA --output DIR [--model RUN]`: likely label errors, duplicates and leakage of a labelled file."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptext.cli.options import add_column_options, add_overwrite_option, column_overrides

# As in adaptext.audit.labels, spelled here so that `--help` imports no numpy.
RANKING_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
CLASSIFIERS = ("ensemble", "logistic", "knn")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="find likely label errors, duplicates and train/test leakage in a labelled file")
    p.add_argument("data", help="labelled CSV/TSV/JSONL/Parquet file to audit")
    p.add_argument("--output", required=True, help="new or empty folder for suspects.csv, duplicates.csv, audit.html")
    p.add_argument("--validation", help="validation file: checked for texts that are also in DATA (leakage)")
    p.add_argument("--test", help="test file: checked for texts that are also in DATA or --validation (leakage)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="run or model folder saved by adaptext whose encoder gives the embeddings")
    source.add_argument(
        "--encoder", default="minilm", help="pretrained model name or folder for the embeddings (default: minilm)"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for out-of-fold scores (default: 5)")
    p.add_argument(
        "--near-threshold",
        type=float,
        default=0.95,
        help="cosine similarity from which two texts count as near duplicates (default: 0.95)",
    )
    p.add_argument(
        "--ranking",
        choices=RANKING_METHODS,
        default="self_confidence",
        help="cleanlab label-quality score that orders the suspects (default: self_confidence)",
    )
    p.add_argument(
        "--classifier",
        choices=CLASSIFIERS,
        default="ensemble",
        help="out-of-fold classifier on the embeddings: logistic regression, k-nearest neighbours, or the average "
        "of both (default: ensemble)",
    )
    p.add_argument("--max-length", type=int, default=128, help="tokens per text for --encoder (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split (default: 0)")
    add_overwrite_option(p, "an earlier audit in --output")
    add_column_options(p, with_label=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.audit import AuditSettings, audit_files

    settings = AuditSettings(
        model=args.model,
        encoder=args.encoder,
        columns=column_overrides(args),
        folds=args.folds,
        near_threshold=args.near_threshold,
        method=args.ranking,
        classifier=args.classifier,
        seed=args.seed,
        max_length=args.max_length,
    )
    result = audit_files(
        args.data, args.output, validation=args.validation, test=args.test, settings=settings, overwrite=args.overwrite
    )
    counts = result.summary()
    leaked = ", ".join(f"{pair} {n}" for pair, n in counts["leakage"].items() if n) or "none"
    print(
        f"{counts['rows']} rows: {counts['suspects']} suspected label errors, "
        f"{counts['exact_duplicates']} exact and {counts['near_duplicates']} near duplicate pairs "
        f"({counts['conflicting_duplicates']} with different labels); leakage: {leaked}"
    )
    print(f"report: {Path(args.output) / 'audit.html'}")
    return 0
