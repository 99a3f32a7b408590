"""Self-training on top of few-shot (issue 16): `strategy=fewshot` with N labelled examples per class, alone and with
`self_training` on the unlabelled rest of the training set, on SST-2 and BANKING77.

    python bench/label_efficiency_self_training.py                        # sst2+banking77, N 8 16, seeds 0 1 2
    python bench/label_efficiency_self_training.py --datasets sst2 --shots 8 --seeds 0 1 2 3 4
    python bench/label_efficiency_self_training.py --resume               # skip the runs already in the JSON
    python bench/label_efficiency.py --part self_training ...             # the same, through the issue's script

For every (data set, N, seed) one CSV of N examples per class is drawn from the training pool with
`adaptext.data.splits.sample_per_class` (as `adaptext sample --per-class N --seed s` draws it); it is the training
AND the validation data (no labels beyond the N per class, as in bench/fewshot.py). The unlabelled pool is the rest
of the training pool, labels dropped, cut to --pool-size texts (seeded by s); the test set is cut to --test-size by a
stratified draw (seed 1234). One self-training run (`self_training.rounds=--rounds`, all other settings at their
defaults unless --threshold / --per-class are given) is trained per case. Its round 0 is exactly the few-shot run
alone (same data, config and seed; `self_training.keep_round_models` keeps that model), so "few-shot" below is the
round-0 model scored on the test set; --check-baseline also trains the plain few-shot run (rounds 0) for the first
case and checks that both score the same. The pool's true labels give each round's pseudo-label accuracy.

Data (under --data-root, default ../shared/datasets):
  sst2        train.csv (67,349 phrases) -> dev.csv (872, all of it)
  banking77   no test file: a stratified 20% of train.csv (seed 1234) is held out as the test set (cut to
              --test-size) and the samples and the pool come from the other 80% only (as bench/fewshot.py)

Torch runs on one thread (the machine's cores are shared); every finished case is saved to --output at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "label_efficiency_self_training.json"
DATASETS = ["sst2", "banking77"]
SPLIT_SEED = 1234


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this part (also those of `bench/label_efficiency.py --part self_training`)."""
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16], help="labelled examples per class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pool-size", type=int, default=4000, help="unlabelled texts (seeded cut of the rest)")
    parser.add_argument("--test-size", type=int, default=1000, help="test texts (stratified cut, seed 1234)")
    parser.add_argument("--rounds", type=int, default=2, help="self_training.rounds")
    parser.add_argument("--threshold", type=float, default=None, help="self_training.threshold (default: config's)")
    parser.add_argument("--per-class", default=None, help="self_training.per_class (default: config's)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--check-baseline", action="store_true", help="also train plain few-shot for the first case")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    parser.add_argument("--resume", action="store_true", help="keep the cases already in --output")


# ---------------------------------------------------------------------------------------------------- data


def load_dataset(name: str, data_root: Path, test_size: int) -> tuple[Any, Any]:
    """(training pool, test set) of `name` as data frames with `text` and `label`."""
    import pandas as pd

    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples, read_table
    from adaptext.data.splits import stratified_split

    source = data_root / name
    if not (source / "train.csv").is_file():
        sys.exit(f"no {name}/train.csv under {data_root}; pass --data-root")
    train = read_table(source / "train.csv")
    if name == "sst2":
        test = read_table(source / "dev.csv")
    else:
        kept, held = stratified_split(load_examples(source / "train.csv", DataConfig()), 0.2, seed=SPLIT_SEED)
        train, test = train.iloc[kept], train.iloc[held]
    train, test = train.reset_index(drop=True), test.reset_index(drop=True)
    if len(test) > test_size:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "test.csv"
            test.to_csv(path, index=False)
            _, held = stratified_split(load_examples(path, DataConfig()), test_size / len(test), seed=SPLIT_SEED)
        test = test.iloc[held].reset_index(drop=True)
    return pd.DataFrame(train[["text", "label"]]), pd.DataFrame(test[["text", "label"]])


def write_case(train: Any, test: Any, shots: int, seed: int, pool_size: int, folder: Path) -> dict[str, Any]:
    """The labelled sample, the unlabelled pool (with its true labels kept aside) and the test set as files."""
    import numpy as np

    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples
    from adaptext.data.splits import sample_per_class

    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "all.csv", index=False)
    chosen, _ = sample_per_class(load_examples(folder / "all.csv", DataConfig()), shots, seed)
    sample = train.iloc[chosen]
    rest = train.drop(index=train.index[chosen])
    rng = np.random.default_rng(seed)
    pool = rest.iloc[np.sort(rng.permutation(len(rest))[:pool_size])]
    paths = {"train": folder / "train.csv", "pool": folder / "pool.csv", "test": folder / "test.csv"}
    sample.to_csv(paths["train"], index=False)
    pool[["text"]].to_csv(paths["pool"], index=False)
    test.to_csv(paths["test"], index=False)
    gold = dict(zip(pool["text"].astype(str), pool["label"].astype(str), strict=True))
    return {"paths": paths, "gold": gold, "train_examples": len(sample), "pool_examples": len(pool)}


# ---------------------------------------------------------------------------------------------------- runs


def run_case(args: argparse.Namespace, case: dict[str, Any], seed: int, folder: Path, rounds: int) -> dict[str, Any]:
    """One few-shot run with `rounds` self-training rounds; its test scores per round and pseudo-label accuracy."""
    import csv

    from adaptext import load_config
    from adaptext.evaluation.metrics import evaluate_data
    from adaptext.inference.predictor import Predictor
    from adaptext.strategies import train

    paths = case["paths"]
    overrides = [
        "strategy=fewshot",
        f"data.train={paths['train']}",
        f"data.validation={paths['train']}",
        f"data.test={paths['test']}",
        f"data.max_length={args.max_length}",
        f"output_dir={folder}",
        f"seed={seed}",
        "tracking.backend=none",
        "train.report_errors=0",
    ]
    if rounds:
        overrides += [f"data.unlabelled={paths['pool']}", f"self_training.rounds={rounds}"]
        overrides += ["self_training.keep_round_models=true"]
        if args.threshold is not None:
            overrides.append(f"self_training.threshold={args.threshold}")
        if args.per_class is not None:
            overrides.append(f"self_training.per_class={args.per_class}")
    config = load_config(None, overrides)
    started = time.perf_counter()
    result = train(config, overwrite=True)
    record: dict[str, Any] = {
        "accuracy": result.metrics["accuracy"],
        "macro_f1": result.metrics["macro_f1"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": result.stats["train_seconds"],
    }
    if not rounds:
        return record
    from adaptext.data.splits import load_splits

    test = load_splits(config).test
    assert test is not None
    round_zero = Predictor.from_dir(folder / "self_training" / "round_0" / "model")
    baseline = evaluate_data(round_zero, test)
    record["baseline_accuracy"] = baseline.metrics["accuracy"]
    record["baseline_macro_f1"] = baseline.metrics["macro_f1"]
    rounds_record = json.loads((folder / "self_training.json").read_text(encoding="utf-8"))["rounds"]
    with (folder / "pseudo_labels.csv").open(encoding="utf-8", newline="") as handle:
        pseudo = list(csv.DictReader(handle))
    for entry in rounds_record:
        rows = [row for row in pseudo if row["round"] == str(entry["round"])]
        correct = sum(case["gold"].get(row["text"]) == row["label"] for row in rows)
        entry["pseudo_label_accuracy"] = correct / len(rows) if rows else None
    record["rounds"] = [
        {k: r[k] for k in ("round", "pseudo_labelled", "added", "candidates", "pseudo_label_accuracy")}
        for r in rounds_record
    ]
    record["pseudo_labels"] = len(pseudo)
    return record


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (data set, N): few-shot and self-training accuracy (mean, sample std over seeds) and the paired gain."""

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else float("nan")

    rows = []
    for key in sorted({(r["dataset"], r["shots"]) for r in runs}):
        group = [r for r in runs if (r["dataset"], r["shots"]) == key]
        base = [100 * r["baseline_accuracy"] for r in group]
        self_trained = [100 * r["accuracy"] for r in group]
        gains = [s - b for s, b in zip(self_trained, base, strict=True)]
        pseudo = [
            rd["pseudo_label_accuracy"]
            for r in group
            for rd in r["rounds"]
            if rd.get("pseudo_label_accuracy") is not None
        ]
        rows.append(
            {
                "dataset": key[0],
                "shots": key[1],
                "seeds": [r["seed"] for r in group],
                "fewshot_mean": statistics.mean(base),
                "fewshot_std": spread(base),
                "self_training_mean": statistics.mean(self_trained),
                "self_training_std": spread(self_trained),
                "gain_mean": statistics.mean(gains),
                "gain_std": spread(gains),
                "gains": gains,
                "pseudo_labels_mean": statistics.mean(r["pseudo_labels"] for r in group),
                "pseudo_label_accuracy_mean": 100 * statistics.mean(pseudo) if pseudo else float("nan"),
            }
        )
    return rows


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | N/class | seeds | few-shot | + self-training | paired gain | pseudo-labels | pseudo-label acc. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['shots']} | {len(s['seeds'])} | {s['fewshot_mean']:.1f} ± {s['fewshot_std']:.1f} "
            f"| {s['self_training_mean']:.1f} ± {s['self_training_std']:.1f} "
            f"| {s['gain_mean']:+.1f} ± {s['gain_std']:.1f} | {s['pseudo_labels_mean']:.0f} "
            f"| {s['pseudo_label_accuracy_mean']:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        rows = sorted((s for s in summary if s["dataset"] == name), key=lambda s: s["shots"])
        shots = [s["shots"] for s in rows]
        for key, label in (("fewshot", "few-shot"), ("self_training", "few-shot + self-training")):
            ax.errorbar(
                shots,
                [s[f"{key}_mean"] for s in rows],
                yerr=[0 if s[f"{key}_std"] != s[f"{key}_std"] else s[f"{key}_std"] for s in rows],
                marker="o",
                capsize=4,
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_xlabel("labelled examples per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every (data set, N, seed) case not already in --output (with --resume); write the JSON and PNG."""
    import torch

    torch.set_num_threads(1)
    settings = {
        "rounds": args.rounds,
        "threshold": args.threshold,
        "per_class": args.per_class,
        "pool_size": args.pool_size,
        "test_size": args.test_size,
        "max_length": args.max_length,
    }
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    if args.resume and args.output.is_file():
        saved = json.loads(args.output.read_text(encoding="utf-8"))
        runs = [r for r in saved.get("runs", []) if r["settings"] == settings]
        checks = saved.get("baseline_checks", [])
    done = {(r["dataset"], r["shots"], r["seed"]) for r in runs}

    def save() -> dict[str, Any]:
        summary = summarise(runs) if runs else []
        payload = {"settings": settings, "runs": runs, "baseline_checks": checks, "summary": summary}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        if summary:
            plot(summary, args.output.with_suffix(".png"))
        return payload

    with tempfile.TemporaryDirectory(prefix="selftrain-bench-") as scratch:
        work = args.work_dir or Path(scratch)
        for name in args.datasets:
            train_pool, test = load_dataset(name, args.data_root, args.test_size)
            for shots in args.shots:
                for seed in args.seeds:
                    if (name, shots, seed) in done:
                        continue
                    folder = Path(work) / f"{name}-n{shots}-s{seed}"
                    case = write_case(train_pool, test, shots, seed, args.pool_size, folder / "data")
                    print(f"[{time.strftime('%H:%M:%S')}] {name} N={shots} seed={seed}: ", end="", flush=True)
                    record = run_case(args, case, seed, folder / "run", args.rounds)
                    record |= {
                        "dataset": name,
                        "shots": shots,
                        "seed": seed,
                        "train_examples": case["train_examples"],
                        "pool_examples": case["pool_examples"],
                        "test_examples": len(test),
                        "settings": settings,
                    }
                    print(
                        f"few-shot {100 * record['baseline_accuracy']:.1f}, self-training "
                        f"{100 * record['accuracy']:.1f} ({record['pseudo_labels']} pseudo-labels, "
                        f"{record['wall_seconds']:.0f} s)",
                        flush=True,
                    )
                    runs.append(record)
                    if args.check_baseline and not checks:
                        plain = run_case(args, case, seed, folder / "plain", 0)
                        checks.append(
                            {
                                "dataset": name,
                                "shots": shots,
                                "seed": seed,
                                "plain_fewshot_accuracy": plain["accuracy"],
                                "round0_accuracy": record["baseline_accuracy"],
                                "identical": abs(plain["accuracy"] - record["baseline_accuracy"]) < 1e-12,
                            }
                        )
                        print(f"  baseline check: {checks[-1]}", flush=True)
                    save()
    payload = save()
    print(table(payload["summary"]))
    return payload


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())
