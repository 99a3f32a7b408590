"""Robust training on SST-2: clean accuracy, flip rates and attack success of each `robust.*` option.

    python bench/robust_training.py                              # every method, 4,000 training texts, 1 epoch
    python bench/robust_training.py --resume                     # finished cells are kept
    python bench/robust_training.py --methods plain,fgm --train-size 2000 --epochs 1
    python bench/robust_training.py --table-only                 # the table of bench/results/robust_training.json

Every method trains the bundled MiniLM by `adaptext train` (its own process) on the same `--train-size` SST-2
training texts (sampled with seed 0; 90% train, 10% validation) with the same seed, learning rate and epochs; only
its `robust.*` keys differ (see METHODS). The SST-2 dev set (872 texts) is the run's test split: its accuracy is the
run's test accuracy. `adaptext robustness RUN --data DEV` then measures, on the first `--robustness-limit` dev texts,
the flip rate under the label-preserving perturbations and the word-substitution attack's success rate. The
`ensemble` cell averages the probabilities of three plain runs (seeds 0, 1, 2) with `adaptext ensemble` and is
scored the same way (its dev accuracy by `adaptext evaluate`). Results go to bench/results/robust_training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "sst2"
RESULTS = ROOT / "bench" / "results" / "robust_training.json"

# Each method's `robust.*` overrides; everything else is the same for all.
METHODS: dict[str, list[str]] = {
    "plain": [],
    "fgm": ["robust.adversarial=fgm"],
    "pgd": ["robust.adversarial=pgd"],
    # The default epsilon (1.0) and two smaller ones: the adversarial methods' one strength setting.
    "fgm_eps0.1": ["robust.adversarial=fgm", "robust.epsilon=0.1"],
    "fgm_eps0.3": ["robust.adversarial=fgm", "robust.epsilon=0.3"],
    "pgd_eps0.1": ["robust.adversarial=pgd", "robust.epsilon=0.1"],
    "pgd_eps0.3": ["robust.adversarial=pgd", "robust.epsilon=0.3"],
    "rdrop": ["robust.rdrop=1.0"],
    "label_smoothing": ["robust.label_smoothing=0.1"],
    "augment_char_noise": ["robust.augment.method=char_noise"],
    "augment_neighbours": ["robust.augment.method=neighbours"],
    "ensemble": [],  # three plain runs, seeds 0, 1, 2
}
ENSEMBLE_SEEDS = (0, 1, 2)


def prepare(folder: Path, train_size: int) -> dict[str, Path]:
    """train / validation CSVs from `train_size` SST-2 training texts (seed 0), and dev as the test file."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.csv" for name in ("train", "validation", "test")}
    train = pd.read_csv(DATA / "train.csv", keep_default_na=False)
    train = train.sample(n=min(train_size, len(train)), random_state=0)
    split = int(0.9 * len(train))
    train.iloc[:split].to_csv(files["train"], index=False)
    train.iloc[split:].to_csv(files["validation"], index=False)
    pd.read_csv(DATA / "dev.csv", keep_default_na=False).to_csv(files["test"], index=False)
    return files


def adaptext(*args: str) -> float:
    """Run one `adaptext` command with this interpreter; returns its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adaptext", "-q", *args], check=True)
    return time.perf_counter() - start


def train(files: dict[str, Path], run_dir: Path, args: argparse.Namespace, seed: int, robust: list[str]) -> float:
    """`adaptext train` with the benchmark's settings and `robust`; returns the wall time."""
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(
        f"output_dir: {run_dir}\nseed: {seed}\ndata:\n  train: {files['train']}\n  validation: {files['validation']}\n"
        f"  test: {files['test']}\ntrain:\n  epochs: {args.epochs}\n  learning_rate: {args.learning_rate}\n"
        "  report_errors: 0\n",
        encoding="utf-8",
    )
    return adaptext("train", str(config), *robust, "--overwrite")


def robustness(model: Path, files: dict[str, Path], output: Path, limit: int) -> dict[str, Any]:
    """`adaptext robustness` on the first `limit` dev texts: its robustness.json and wall time. Every model is
    attacked with the same substitutes, the bundled MiniLM's embedding neighbours (an ensemble has no embeddings of
    its own, and each fine-tuned model's would differ)."""
    seconds = adaptext("robustness", str(model), "--data", str(files["test"]), "--output", str(output),
                       "--limit", str(limit), "--attack-embeddings", "minilm", "--overwrite")  # fmt: skip
    report = json.loads((output / "robustness.json").read_text(encoding="utf-8"))
    attack = report.get("attack") or {}
    return {
        "robustness_n": report.get("n"),
        "robustness_clean_accuracy": report.get("clean_accuracy"),
        "flip_rate": report.get("flip_rate"),
        "flip_rates": {name: p.get("flip_rate") for name, p in (report.get("perturbations") or {}).items()},
        "attack_success_rate": attack.get("success_rate"),
        "attack_accuracy": attack.get("accuracy_under_attack"),
        "robustness_seconds": seconds,
    }


def accuracy_of(folder: Path) -> float:
    """The test accuracy of a run folder (its metrics.json) or of an evaluation folder."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return float(metrics.get("accuracy", metrics.get("metrics", {}).get("accuracy")))


def run_method(name: str, files: dict[str, Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or assemble) one method's model and measure it."""
    cell: dict[str, Any] = {"robust": METHODS[name]}
    if name == "ensemble":
        members, seconds = [], 0.0
        for seed in ENSEMBLE_SEEDS:
            run_dir = work / ("plain" if seed == args.seed else f"plain-seed{seed}")
            if not (run_dir / "metrics.json").is_file():
                seconds += train(files, run_dir, args, seed, [])
            members.append(str(run_dir))
        model = work / "ensemble"
        seconds += adaptext("ensemble", *members, "--output", str(model), "--overwrite")
        evaluation = work / "ensemble-eval"
        adaptext("evaluate", str(model), "--data", str(files["test"]), "--output", str(evaluation), "--overwrite")
        cell |= {"train_seconds": seconds, "dev_accuracy": accuracy_of(evaluation), "members": members}
    else:
        model = work / name
        cell["train_seconds"] = train(files, model, args, args.seed, METHODS[name])
        cell["dev_accuracy"] = accuracy_of(model)
    return cell | robustness(model, files, work / f"{name}-robustness", args.robustness_limit)


def setting(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two results comparable: a cell measured under another setting is measured again."""
    keys = ("train_size", "epochs", "learning_rate", "seed", "robustness_limit")
    return {key: getattr(args, key) for key in keys}


def table(results: dict[str, Any]) -> str:
    """Markdown: clean accuracy, flip rate and attack success per method, and each one's difference to plain."""
    cells = results.get("cells", {})
    plain = cells.get("plain", {})

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    def diff(cell: dict[str, Any], key: str) -> str:
        if cell.get(key) is None or plain.get(key) is None:
            return "n/a"
        return f"{100 * (cell[key] - plain[key]):+.1f}"

    lines = [
        "| method | dev accuracy % | Δ | flip rate % | Δ | attack success % | Δ | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cell in cells.items():
        lines.append(
            f"| {name} | {pct(cell.get('dev_accuracy'))} | {diff(cell, 'dev_accuracy')} | "
            f"{pct(cell.get('flip_rate'))} | {diff(cell, 'flip_rate')} | {pct(cell.get('attack_success_rate'))} | "
            f"{diff(cell, 'attack_success_rate')} | {cell.get('train_seconds', 0):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--train-size", type=int, default=4000, help="SST-2 training texts (90%% train, 10%% val)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--robustness-limit", type=int, default=300, help="dev texts `adaptext robustness` scores")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-robust-training"))
    parser.add_argument("--resume", action="store_true", help="keep cells already measured with the same setting")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()

    results: dict[str, Any] = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    if args.table_only:
        print(table(results))
        return
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; the methods are {', '.join(METHODS)}")
    if not (args.resume and results.get("setting") == setting(args)):
        results = {"setting": setting(args), "cells": {}}
    files = prepare(args.work / "data", args.train_size)
    for name in names:
        if args.resume and name in results["cells"]:
            print(f"{name}: kept from an earlier run", flush=True)
            continue
        start = time.perf_counter()
        cell = run_method(name, files, args.work, args)
        cell["wall_seconds"] = time.perf_counter() - start
        results["cells"][name] = cell
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"{name}: {json.dumps(cell)}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
