"""`adaptext robustness RUN --data FILE --output DIR`: flip rates under label-preserving perturbations and an attack."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from adaptext.cli.options import add_column_options, add_overwrite_option, column_overrides

# As in adaptext.data.perturb.DEFAULT_PERTURBATIONS, spelled here so that `--help` imports nothing heavy.
DEFAULT_PERTURBATIONS = "typos,case,punctuation,whitespace,contractions,names,numbers"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "robustness", help="flip rates under label-preserving perturbations and a word-substitution attack"
    )
    p.add_argument("model", help="run folder or model folder")
    p.add_argument("--data", required=True, help="labelled CSV/TSV/JSONL/Parquet file")
    p.add_argument("--output", required=True, help="new or empty folder for robustness.json and robustness.html")
    p.add_argument(
        "--perturbations",
        default=DEFAULT_PERTURBATIONS,
        help=f"comma-separated perturbations to apply (default: {DEFAULT_PERTURBATIONS}; "
        "also char_noise, word_swap, word_delete)",
    )
    p.add_argument(
        "--attack-words",
        type=int,
        default=3,
        help="words the substitution attack may change per text (default: 3; 0: no attack)",
    )
    p.add_argument(
        "--attack-queries", type=int, default=100, help="texts the attack may send to the model per text (default: 100)"
    )
    p.add_argument(
        "--attack-embeddings",
        help="model whose input embeddings give the attack's substitutes: a pretrained name or folder (minilm) or "
        "a run folder (default: the attacked model's own; needed for an ONNX export)",
    )
    p.add_argument("--limit", type=int, help="only the first N rows of --data")
    p.add_argument("--worst", type=int, default=5, help="worst examples kept per perturbation (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations and the attack (default: 0)")
    add_overwrite_option(p, "an earlier robustness or evaluation report in --output")
    add_column_options(p, with_label=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.core.errors import AdaptextError
    from adaptext.robustness import AttackSettings, RobustnessSettings, robustness_file

    names = tuple(name.strip() for name in args.perturbations.split(",") if name.strip())
    for option, value in (("--attack-words", args.attack_words), ("--attack-queries", args.attack_queries)):
        if value < 0:
            raise AdaptextError(f"{option} must be 0 or more, got {value}")
    if args.limit is not None and args.limit < 1:
        raise AdaptextError(f"--limit must be 1 or more, got {args.limit}")
    settings = RobustnessSettings(
        perturbations=names,
        seed=args.seed,
        attack=AttackSettings(
            max_words=args.attack_words,
            max_queries=args.attack_queries,
            seed=args.seed,
            embeddings=args.attack_embeddings,
        ),
        worst=args.worst,
        limit=args.limit,
    )
    start = time.perf_counter()
    report = robustness_file(
        args.model, args.data, args.output, column_overrides(args), settings, overwrite=args.overwrite
    )

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(f"{report.n} texts: clean accuracy {report.clean_accuracy:.4f}, flip rate {shown(report.flip_rate)}")
    for name, score in report.perturbations.items():
        print(
            f"  {name}: {score.changed} changed, flip rate {shown(score.flip_rate)}, "
            f"accuracy {shown(score.clean_accuracy_on_changed)} -> {shown(score.accuracy)}"
        )
    attack = report.attack
    if attack.attacked:
        words = "n/a" if attack.mean_words_changed is None else f"{attack.mean_words_changed:.2f}"
        print(
            f"attack on {attack.attacked} texts: success rate {shown(attack.success_rate)}, accuracy under attack "
            f"{shown(attack.accuracy_under_attack)}, {words} words changed, {attack.mean_queries:.1f} queries per text"
        )
    print(f"report: {Path(args.output) / 'robustness.html'} ({time.perf_counter() - start:.0f} s)")
    return 0
