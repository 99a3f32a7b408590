"""`adaptext distill RUN --output DIR [--unlabelled FILE] [--dim D]`: a static-embedding student of a classifier."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from adaptext.cli.options import add_overwrite_option

if TYPE_CHECKING:
    from adaptext.distill import StudentSettings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("distill", help="distil a trained classifier into a static-embedding student, many times faster")
    p.add_argument("model", help="the teacher: a run folder (its training texts are used) or any model folder")
    p.add_argument("--output", required=True, help="new or empty folder for the student and its distill.html report")
    p.add_argument(
        "--unlabelled",
        default=None,
        help="more texts for the teacher to label: CSV/TSV/JSONL/Parquet with a text column, or .txt, one per line",
    )
    p.add_argument("--text-column", default=None, help="the --unlabelled file's text column (default: the teacher's)")
    add_student_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation, the head and the batch order")
    add_overwrite_option(p, "an earlier student in --output")
    p.set_defaults(func=run)


def add_student_options(p: argparse.ArgumentParser) -> None:
    """The command-line options of `StudentSettings` (all but its seed, batch size and learning rate);
    bench/distill.py takes them too."""
    p.add_argument("--dim", type=int, default=256, help="width of the token embeddings (default 256)")
    p.add_argument(
        "--hidden", type=int, default=512, help="width of the head's hidden layer, 0 for a linear head (default 512)"
    )
    p.add_argument("--epochs", type=int, default=10, help="passes over the distillation texts (default 10)")
    p.add_argument(
        "--context",
        type=int,
        default=3,
        help="preceding tokens that scale each token's embedding, so word order such as negation counts; 0 for a "
        "plain bag of tokens (default 3)",
    )
    p.add_argument(
        "--pooling",
        choices=["mean+max", "mean"],
        default="mean+max",
        help="what the head reads: the tokens' mean and elementwise maximum side by side (default), or the mean",
    )
    p.add_argument(
        "--augment",
        type=int,
        default=2,
        help="changed copies of each training text for the teacher to label (default 2)",
    )
    p.add_argument(
        "--loss",
        choices=["kl", "mse"],
        default="kl",
        help="kl: the KL divergence of the soft labels at --temperature (default); mse: the squared difference of the "
        "logits (docs/distill.md)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature with --loss kl (default 1)")
    p.add_argument(
        "--label-weight",
        type=float,
        default=0.0,
        help="weight of the training labels' own loss on the run's training texts, added to the teacher's (default 0)",
    )
    p.add_argument(
        "--init",
        choices=["teacher", "embeddings", "random"],
        default="embeddings",
        help="the first embedding table: embeddings (the teacher's input word embeddings, default), teacher "
        "(model2vec's, from the teacher's encoder: as accurate here, and a minute or two slower) or random",
    )


def run(args: argparse.Namespace) -> int:
    from adaptext.distill import distill_model

    summary = distill_model(
        args.model,
        args.output,
        unlabelled=args.unlabelled,
        text_column=args.text_column,
        settings=settings_from(args),
        overwrite=args.overwrite,
    )
    texts, seconds = summary["texts"]["distilled_on"], summary["seconds"]["total_s"]
    print(f"student of {summary['teacher']}: distilled on {texts} texts in {seconds:.0f} s")
    for split, agreement in summary["agreement"].items():
        accuracy = summary["accuracy"][split]
        speed = summary["texts_per_second"][split]
        print(
            f"{split}: accuracy teacher {accuracy['teacher']:.4f}, student {accuracy['student']:.4f}; "
            f"agreement {agreement:.4f}; texts/s teacher {speed['teacher']:.0f}, student {speed['student']:.0f}"
        )
    print(f"report: {Path(args.output) / 'distill.html'}")
    return 0


def settings_from(args: argparse.Namespace) -> StudentSettings:
    """The student's settings the command line asks for; its defaults are `StudentSettings`' (a test holds them
    equal)."""
    from adaptext.distill import StudentSettings

    return StudentSettings(
        dim=args.dim,
        hidden=args.hidden,
        context=args.context,
        pooling=args.pooling,
        epochs=args.epochs,
        augment=args.augment,
        loss=args.loss,
        temperature=args.temperature,
        label_weight=args.label_weight,
        init=args.init,
        seed=args.seed,
    )
