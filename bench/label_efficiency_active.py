"""Active learning against random selection: accuracy after each round of 50 labels, SST-2 and BANKING77.

    python bench/label_efficiency_active.py                          # both data sets, seeds 0 1, all strategies
    python bench/label_efficiency_active.py --datasets sst2 --seeds 0 --rounds 2   # a smoke run
    python bench/label_efficiency_active.py --resume                 # skip (data set, seed) runs already saved

For each data set and seed s: 8 labelled examples per class are drawn from the training file (pandas, seed s), and
a pool of --pool-size other training texts (seed s) stands for the unlabelled data. Round 0 trains adaptext's
few-shot strategy (`strategy: fewshot`, `fewshot.encoder: contrastive` as when the results were measured,
`fewshot.steps` = --steps contrastive steps, no calibration) on the labelled set. Then, for each selection strategy,
5 rounds: `adaptext.apps.select.select_pool` (the code behind `adaptext select`) picks --per-round texts of the pool
file, whose label column holds the labels revealed so far; their labels are revealed from the data set, and the
model is retrained from the bundled model on everything
labelled. Accuracy on the test set after each round (0..5).

Test sets: SST-2 dev.csv (872 rows, all of them); BANKING77 has one file, so a stratified --test-size rows of it
(seed 1234) are held out and never enter the labelled set or the pool.

Target (issue 16): "the best strategy reaches random selection's final accuracy with <= 60% of its labels", read as
the labels selection ADDS: random's round 5 (250 added) must be matched by the strategy's round 3 (150 added).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "label_efficiency_active.json"
STRATEGIES = ["entropy", "margin", "diverse", "random"]
SPLIT_SEED = 1234
TARGET_SHARE = 0.6  # of random's added labels
# Contrastive steps per training. One step leaves the bundled encoder nearly as it is, and the run is mostly the
# logistic-regression head on its embeddings: measured here (8 per class, seed 0, 500 test rows) BANKING77 gave 78.8%
# in 19 s with 1 step and 78.2% in 86 s with 30; on SST-2 20 steps took 39 s a round on the shared CPU, too slow for
# 2 data sets x 2 seeds x 21 trainings in the time there was.
DEFAULT_STEPS = {"sst2": 1, "banking77": 1}
# The head's inverse L2 strength (`fewshot.head_c`; its default was 1 when this was measured, 10 since). On
# BANKING77 (77 classes) the default of 1 is so strong that
# the class frequencies of the labelled set outweigh the embeddings: on the frozen encoder's embeddings (seed 0),
# C=1 gave 80.2% on the 616 balanced labels and 77.4% after adding 250 random pool labels, C=10 82.4% and 85.7%.
# A learner that gets worse with more random labels would flatter every selection strategy, so BANKING77 uses 10.
DEFAULT_HEAD_C = {"sst2": 1.0, "banking77": 10.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this part (also `bench/label_efficiency.py --part active`)."""
    parser.add_argument("--datasets", nargs="+", default=["sst2", "banking77"], choices=["sst2", "banking77"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=50, help="labels added per round")
    parser.add_argument("--start-per-class", type=int, default=8, help="labelled examples per class at round 0")
    parser.add_argument("--pool-size", type=int, default=2000, help="unlabelled pool texts per seed")
    parser.add_argument("--test-size", type=int, default=1000, help="at most this many test rows")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"few-shot contrastive steps per training (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--head-c", type=float, default=None, help=f"few-shot head's inverse L2 strength (default {DEFAULT_HEAD_C})"
    )
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--resume", action="store_true", help="keep the (data set, seed) runs already in --output")


def _splits(name: str, data_root: Path, test_size: int) -> tuple[Any, Any]:
    """(train frame, test frame) of `name`, with a `pool_id` column numbering the training rows."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    train = pd.read_csv(data_root / name / "train.csv", dtype=str, keep_default_na=False)
    if name == "sst2":
        test = pd.read_csv(data_root / name / "dev.csv", dtype=str, keep_default_na=False)
    else:
        train, test = train_test_split(train, test_size=test_size, stratify=train["label"], random_state=SPLIT_SEED)
    if len(test) > test_size:
        test, _ = train_test_split(test, train_size=test_size, stratify=test["label"], random_state=SPLIT_SEED)
    train = train[["text", "label"]].reset_index(drop=True)
    train.insert(0, "pool_id", range(len(train)))
    return train, test[["text", "label"]].reset_index(drop=True)


def _train(
    args: argparse.Namespace, name: str, labelled: Any, test_file: Path, folder: Path, seed: int
) -> tuple[Path, float]:
    """Few-shot training on `labelled` (also its validation set: nothing is selected on it); test accuracy."""
    from adaptext import load_config, train

    folder.mkdir(parents=True, exist_ok=True)
    labelled[["text", "label"]].to_csv(folder / "labelled.csv", index=False)
    config = load_config(
        None,
        [
            "strategy=fewshot",
            f"model.name={args.model}",
            f"data.train={folder / 'labelled.csv'}",
            f"data.validation={folder / 'labelled.csv'}",
            f"data.test={test_file}",
            f"data.max_length={args.max_length}",
            "fewshot.encoder=contrastive",  # its step counts and results are the contrastive phase's
            f"fewshot.steps={args.steps or DEFAULT_STEPS[name]}",
            f"fewshot.head_c={args.head_c or DEFAULT_HEAD_C[name]}",
            "fewshot.calibrate=false",
            "tracking.backend=none",
            f"output_dir={folder / 'run'}",
            f"seed={seed}",
        ],
    )
    result = train(config, overwrite=True)
    return result.run_dir, float(result.metrics["accuracy"])


def _one_seed(args: argparse.Namespace, name: str, seed: int, work: Path) -> dict[str, Any]:
    """Every strategy's accuracy per round for one data set and seed."""
    import pandas as pd

    from adaptext.apps.select import select_pool
    from adaptext.inference.predictor import Predictor

    train, test = _splits(name, args.data_root, args.test_size)
    test_file = work / "test.csv"
    test.to_csv(test_file, index=False)
    start = train.groupby("label", group_keys=False).sample(args.start_per_class, random_state=seed)
    rest = train.drop(start.index)
    pool = rest.sample(min(args.pool_size, len(rest)), random_state=seed).reset_index(drop=True)
    started = time.perf_counter()
    run0, acc0 = _train(args, name, start, test_file, work / "round0", seed)
    logging.info("%s seed %d round 0: %d labels, accuracy %.4f", name, seed, len(start), acc0)
    curves: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    copied: dict[str, str] = {}
    for strategy in args.strategies:
        if strategy == "margin" and "entropy" in curves and train["label"].nunique() == 2:
            # On two labels the margin 1 - |p1 - p2| and the entropy order the pool alike: the same picks.
            curves[strategy], copied[strategy] = curves["entropy"], "entropy"
            continue
        t0 = time.perf_counter()
        labelled, revealed, model_dir, accuracies = start, pool.iloc[0:0], run0, [acc0]
        for r in range(1, args.rounds + 1):
            folder = work / f"{strategy}{r}"
            folder.mkdir(parents=True, exist_ok=True)
            known = dict(zip(revealed["pool_id"], revealed["label"], strict=True))
            shown = pool.assign(label=[known.get(i, "") for i in pool["pool_id"]])
            shown.to_csv(folder / "pool.csv", index=False)
            predictor = Predictor.from_dir(model_dir)
            select_pool(predictor, folder / "pool.csv", folder / "picked.csv", n=args.per_round, strategy=strategy,
                        seed=seed * 1000 + r)  # fmt: skip
            picked = pd.read_csv(folder / "picked.csv", dtype={"pool_id": int})["pool_id"]
            if picked.duplicated().any() or picked.isin(revealed["pool_id"]).any():
                raise RuntimeError(f"{strategy} round {r}: a pool row was picked twice")
            revealed = pd.concat([revealed, pool[pool["pool_id"].isin(picked)]])
            labelled = pd.concat([start, revealed])
            model_dir, accuracy = _train(args, name, labelled, test_file, folder, seed)
            accuracies.append(accuracy)
            if model_dir != run0:
                shutil.rmtree(work / f"{strategy}{r - 1}" / "run", ignore_errors=True)
            logging.info("%s seed %d %s round %d: %d labels, accuracy %.4f", name, seed, strategy, r, len(labelled),
                         accuracy)  # fmt: skip
        curves[strategy] = accuracies
        seconds[strategy] = round(time.perf_counter() - t0, 1)
    return {
        "dataset": name,
        "seed": seed,
        "start_labels": len(start),
        "steps": args.steps or DEFAULT_STEPS[name],
        "head_c": args.head_c or DEFAULT_HEAD_C[name],
        "classes": int(train["label"].nunique()),
        "pool": len(pool),
        "test": len(test),
        "accuracy": curves,
        "seconds": seconds,
        "same_picks_as": copied,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: list[dict[str, Any]], per_round: int, rounds: int) -> dict[str, Any]:
    """Per data set: mean ± std accuracy per strategy and round, and the target's verdict."""
    summary: dict[str, Any] = {}
    for name in sorted({r["dataset"] for r in records}):
        mine = [r for r in records if r["dataset"] == name]
        strategies = list(mine[0]["accuracy"])
        table = {
            s: [list(_mean_std([r["accuracy"][s][k] for r in mine])) for k in range(rounds + 1)] for s in strategies
        }
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine], "start_labels": mine[0]["start_labels"],
                                 "curves": table}  # fmt: skip
        if "random" in table:
            goal = table["random"][rounds][0]
            allowed = int(TARGET_SHARE * rounds)
            reach: dict[str, Any] = {}
            for s in strategies:
                if s == "random":
                    continue
                first = next((k for k in range(rounds + 1) if table[s][k][0] >= goal), None)
                paired = [r["accuracy"][s][allowed] - r["accuracy"]["random"][rounds] for r in mine]
                diff = _mean_std(paired)
                reach[s] = {
                    "first_round_reaching_random_final": first,
                    "labels_added": None if first is None else first * per_round,
                    "share_of_random_added": None if first is None else first / rounds,
                    "share_of_random_total": None
                    if first is None
                    else (mine[0]["start_labels"] + first * per_round) / (mine[0]["start_labels"] + rounds * per_round),
                    f"round{allowed}_minus_random_round{rounds}": [round(diff[0], 4), round(diff[1], 4)],
                }
            best = max(reach, key=lambda s: (reach[s]["first_round_reaching_random_final"] is not None,
                                             -(reach[s]["first_round_reaching_random_final"] or 0),
                                             table[s][rounds][0]))  # fmt: skip
            met = reach[best]["first_round_reaching_random_final"] is not None and (
                reach[best]["first_round_reaching_random_final"] <= allowed
            )
            entry |= {"random_final": goal, "reach": reach, "best": best, "target_met": met}
        summary[name] = entry
    return summary


def markdown(summary: dict[str, Any], per_round: int, rounds: int) -> str:
    """The tables of `summary`: accuracy % per round (mean ± std over seeds), and the target per strategy."""
    lines: list[str] = []
    for name, entry in summary.items():
        start = entry["start_labels"]
        lines += [f"### {name} (start {start} labels, seeds {entry['seeds']})", ""]
        header = "| strategy | " + " | ".join(f"r{k} ({start + k * per_round})" for k in range(rounds + 1)) + " |"
        lines += [header, "|---|" + "---:|" * (rounds + 1)]
        for s, row in entry["curves"].items():
            lines.append(f"| {s} | " + " | ".join(f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in row) + " |")
        if "reach" in entry:
            allowed = int(TARGET_SHARE * rounds)
            lines += ["", f"random's final (round {rounds}) accuracy: {100 * entry['random_final']:.1f}%", "",
                      f"| strategy | first round at random's final | labels added (share of random's) | "
                      f"total labels (share) | round {allowed} − random round {rounds}, points (paired) |",
                      "|---|---:|---:|---:|---:|"]  # fmt: skip
            for s, r in entry["reach"].items():
                first = r["first_round_reaching_random_final"]
                added, total = "not reached", "—"
                if first is not None:
                    added = f"{r['labels_added']} ({100 * r['share_of_random_added']:.0f}%)"
                    total = f"{start + first * per_round} ({100 * r['share_of_random_total']:.0f}%)"
                d = r[f"round{allowed}_minus_random_round{rounds}"]
                lines.append(f"| {s} | {'—' if first is None else first} | {added} | {total} | "
                             f"{100 * d[0]:+.1f} ± {100 * d[1]:.1f} |")  # fmt: skip
            lines += ["", f"target (best strategy, {entry['best']}): {'met' if entry['target_met'] else 'NOT met'}"]
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], per_round: int, path: Path) -> None:
    """Learning curves (accuracy against labels), one panel per data set, the band is ± one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], summary.items(), strict=True):
        for s, row in entry["curves"].items():
            x = [entry["start_labels"] + k * per_round for k in range(len(row))]
            mean = [100 * m for m, _ in row]
            std = [100 * d for _, d in row]
            ax.plot(x, mean, marker="o", label=s, linestyle="--" if s == "random" else "-")
            ax.fill_between(x, [m - d for m, d in zip(mean, std, strict=True)],
                            [m + d for m, d in zip(mean, std, strict=True)], alpha=0.15)  # fmt: skip
        ax.set_title(f"{name} (seeds {entry['seeds']})")
        ax.set_xlabel("labelled examples")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark, write `args.output` (JSON) and its PNG beside it, and return the results."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("adaptext", "transformers", "accelerate", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    records: list[dict[str, Any]] = []
    if args.resume and args.output.exists():
        records = json.loads(args.output.read_text(encoding="utf-8"))["records"]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("resume", "output", "func", "part")}  # fmt: skip
    for seed in args.seeds:  # seed by seed, so a stopped run still has every data set's first seeds
        for name in args.datasets:
            if any(r["dataset"] == name and r["seed"] == seed for r in records):
                continue
            with tempfile.TemporaryDirectory(prefix=f"active-{name}-{seed}-") as work:
                records.append(_one_seed(args, name, seed, Path(work)))
            results = _results(records, settings, args)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1), encoding="utf-8")
    results = _results(records, settings, args)
    args.output.write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot(results["summary"], args.per_round, args.output.with_suffix(".png"))
    print(results["markdown"])
    return results


def _results(records: list[dict[str, Any]], settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    summary = summarise(records, args.per_round, args.rounds)
    return {"settings": settings, "summary": summary, "markdown": markdown(summary, args.per_round, args.rounds),
            "records": records}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())
    sys.exit(0)
