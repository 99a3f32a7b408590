"""Ensembles and SWA on SST-2: accuracy and calibration (ECE) of three runs, their ensemble, and one SWA run.

    python bench/ensemble.py                      # 2,000 training texts, 1 epoch, seeds 0, 1, 2 and SWA on seed 0
    python bench/ensemble.py --resume             # runs already trained with the same setting are kept
    python bench/ensemble.py --jobs 2             # train two runs at a time
    python bench/ensemble.py --table-only         # the table of bench/results/ensemble.json

Every run trains the bundled MiniLM by `adaptext train` (its own process) on the same `--train-size` SST-2 training
texts (sampled with seed 0; 90% train, 10% validation) with the same learning rate and epochs; the members differ
only in `seed`, and the SWA run is the seed-0 run with `train.swa_start` / `train.swa_every` added. `adaptext
ensemble` averages the three members' probabilities (equal weights). The SST-2 dev set (872 texts) is every run's
test split, so a run's own metrics.json scores it on dev; the ensemble is scored on it by `adaptext evaluate`
(the same metrics: accuracy, ECE, log loss). Runs fit a softmax temperature on
validation by default (`calibrate: true`), and the ensemble averages the members' calibrated probabilities; the
`raw` columns are the same models without any temperature (members at T=1, the ensemble the mean of those).
Results go to bench/results/ensemble.json.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The SST-2 files and the `adaptext train` call are robust_training.py's: the same runs, the same settings.
from robust_training import adaptext, prepare, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ensemble.json"


def scores(metrics_file: Path) -> dict[str, Any]:
    """Accuracy, ECE, log loss and macro-F1 of a metrics.json (a run's or an evaluation's)."""
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    metrics = metrics.get("metrics", metrics)
    return {key: metrics.get(key) for key in ("accuracy", "ece", "loss", "macro_f1")}


def evaluate(model: Path, files: dict[str, Path], output: Path) -> dict[str, Any]:
    """`adaptext evaluate` on the dev set: accuracy, ECE, log loss and macro-F1 of its metrics.json."""
    seconds = adaptext("evaluate", str(model), "--data", str(files["test"]), "--output", str(output),
                       "--errors", "0", "--overwrite")  # fmt: skip
    return scores(output / "metrics.json") | {"eval_seconds": seconds}


def raw_scores(members: list[Path], others: list[Path], files: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Accuracy and ECE on dev without temperature scaling: each member and other run at T=1, and the ensemble (the
    members' mean at T=1)."""
    import numpy as np
    import pandas as pd

    from adaptext.evaluation.metrics import expected_calibration_error
    from adaptext.inference.predictor import Predictor

    dev = pd.read_csv(files["test"], keep_default_na=False)
    probs = []
    for folder in [*members, *others]:
        predictor = Predictor.from_dir(folder)
        predictor.temperature = 1.0  # the model's own probabilities, before calibration
        probs.append(predictor.predict_proba(list(dev["text"])))
        labels = np.array([predictor.labels.index(str(label)) for label in dev["label"]])
    out = {}
    named = [*zip([f.name for f in [*members, *others]], probs, strict=True)]
    for name, p in [*named, ("ensemble", np.mean(probs[: len(members)], axis=0))]:
        out[name] = {
            "accuracy": float((p.argmax(axis=1) == labels).mean()),
            "ece": float(expected_calibration_error(p, labels)),
        }
    return out


def setting(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two results comparable: a run trained under another setting is trained again."""
    keys = ("train_size", "epochs", "learning_rate", "seeds", "swa_start", "swa_every")
    return {key: getattr(args, key) for key in keys}


def table(results: dict[str, Any]) -> str:
    """Markdown: dev accuracy, ECE and log loss of each member, their mean, the ensemble, and SWA vs its twin."""
    cells = results.get("cells", {})

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        "| model | dev accuracy % | ECE % | log loss | raw accuracy % | raw ECE % | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cell in cells.items():
        raw = results.get("raw", {}).get(name, {})
        lines.append(
            f"| {name} | {pct(cell.get('accuracy'))} | {pct(cell.get('ece'))} | {num(cell.get('loss'))} | "
            f"{pct(raw.get('accuracy'))} | {pct(raw.get('ece'))} | {cell.get('train_seconds', 0):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=2000, help="SST-2 training texts (90%% train, 10%% val)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seeds", default="0,1,2", help="the members' seeds; the SWA run uses the first")
    parser.add_argument("--swa-start", type=float, default=0.5)
    parser.add_argument("--swa-every", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-ensemble"))
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--resume", action="store_true", help="keep runs already trained with the same setting")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()

    results: dict[str, Any] = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    if args.table_only:
        print(table(results))
        return
    if not (args.resume and results.get("setting") == setting(args)):
        results = {"setting": setting(args), "cells": {}}
    files = prepare(args.work / "data", args.train_size)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    swa = [f"train.swa_start={args.swa_start}", f"train.swa_every={args.swa_every}"]
    runs = {f"seed{seed}": (seed, []) for seed in seeds} | {f"swa-seed{seeds[0]}": (seeds[0], swa)}

    def record(name: str, cell: dict[str, Any]) -> None:
        results["cells"][name] = cell
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"{name}: {json.dumps(cell)}", flush=True)

    # With --resume, a run folder that finished (its metrics.json) under the same setting is kept.
    todo = {
        name: run for name, run in runs.items() if not (args.resume and (args.work / name / "metrics.json").is_file())
    }
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(train, files, args.work / name, args, *run) for name, run in todo.items()}
        for name, future in futures.items():
            print(f"{name}: trained in {future.result():.0f} s", flush=True)
    for name, (seed, extra) in runs.items():
        stats = json.loads((args.work / name / "run_stats.json").read_text(encoding="utf-8"))
        cell = {"seed": seed, "overrides": extra, "train_seconds": stats["train_seconds"]}
        record(name, cell | scores(args.work / name / "metrics.json"))
    members = [args.work / f"seed{seed}" for seed in seeds]
    seconds = adaptext("ensemble", *map(str, members), "--output", str(args.work / "ensemble"), "--overwrite")
    cell = {"members": [m.name for m in members], "build_seconds": seconds}
    record("ensemble", cell | evaluate(args.work / "ensemble", files, args.work / "ensemble-eval"))
    member_cells = [results["cells"][m.name] for m in members]
    results["member_mean"] = {
        key: sum(c[key] for c in member_cells) / len(member_cells) for key in ("accuracy", "ece", "loss")
    }
    results["raw"] = raw_scores(members, [args.work / f"swa-seed{seeds[0]}"], files)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print("member mean:", json.dumps(results["member_mean"]))


if __name__ == "__main__":
    main()
