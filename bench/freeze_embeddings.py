"""One setting changed from adaptext's defaults, against the defaults: accuracy, memory and time, paired.

The change is `--change KEY=VALUE`, by default frozen word embeddings (`train.freeze_embeddings=true`); also
measured with `--change train.attention_dropout=0`.

Every run is adaptext's full fine-tuning with its defaults (bundled MiniLM, learning rate `auto`, batch 32,
calibration, the best checkpoint on validation) except a fixed number of epochs, so that several seeds of
several data sets fit the machine; the two variants of one seed see the same data, initialisation and order.
Each run is a process of its own (clean peak memory); the variants alternate which goes first.

    python bench/freeze_embeddings.py                                   # 4 data sets x 3 seeds, 3 epochs
    python bench/freeze_embeddings.py --datasets sst2 --seeds 0 --json out.json
    python bench/freeze_embeddings.py --change train.attention_dropout=0 --json out.json

Data (read from ../shared/datasets by path; "test" is never used to choose anything):
  sst2        train: a sample of the training file; validation: 1,000 more of it; test: dev (872)
  banking77   a stratified 2,000-text test split of the training file (seed 0); train and validation
              (1,000) sampled from the rest
  fpb         Financial PhraseBank: train and validation (600) from train.csv; test: test.csv
  clinc150    the 150 in-scope intents: train sampled from train.csv, validation from dev.csv (1,000),
              test: test.csv (4,500)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = ["sst2", "banking77", "fpb", "clinc150"]
VARIANTS = ("default", "changed")
OLD_NAMES = {"trained": "default", "frozen": "changed"}  # the rows of the first runs, freeze_embeddings only


def _splits(dataset: str, root: Path, train_size: int, seed: int, folder: Path) -> dict[str, Path]:
    """Write train / validation / test CSV files (columns text, label) for one seed into `folder`."""
    import pandas as pd

    def read(path: Path) -> pd.DataFrame:
        return pd.read_csv(path, keep_default_na=False)[["text", "label"]]

    if dataset == "sst2":
        pool, test = read(root / "sst2" / "train.csv"), read(root / "sst2" / "dev.csv")
        validation = pool.sample(n=1000, random_state=seed)
        pool = pool.drop(validation.index)
    elif dataset == "banking77":
        frame = read(root / "banking77" / "train.csv")
        test = frame.groupby("label", group_keys=False).sample(frac=0.2, random_state=0).head(2000)
        pool = frame.drop(test.index)
        validation = pool.sample(n=1000, random_state=seed)
        pool = pool.drop(validation.index)
    elif dataset == "fpb":
        pool, test = read(root / "financial_phrasebank" / "train.csv"), read(root / "financial_phrasebank" / "test.csv")
        validation = pool.sample(n=600, random_state=seed)
        pool = pool.drop(validation.index)
    elif dataset == "clinc150":

        def in_scope(name: str) -> pd.DataFrame:
            frame = read(root / "clinc150" / name)
            return frame[frame.label != "oos"]

        pool, test = in_scope("train.csv"), in_scope("test.csv")
        validation = in_scope("dev.csv").sample(n=1000, random_state=seed)
    else:
        raise ValueError(dataset)
    train = pool.sample(n=min(train_size, len(pool)), random_state=seed)
    paths = {"train": folder / "train.csv", "validation": folder / "validation.csv", "test": folder / "test.csv"}
    for name, frame in (("train", train), ("validation", validation), ("test", test)):
        frame.to_csv(paths[name], index=False)
    return paths


def worker(args: argparse.Namespace) -> None:
    from adaptext.core.config import load_config
    from adaptext.strategies import train

    with tempfile.TemporaryDirectory() as tmp:
        paths = _splits(args.dataset, Path(args.data_root), args.train_size, args.seed, Path(tmp))
        config = load_config(
            None,
            [
                f"model.name={args.model}",
                f"data.train={paths['train']}",
                f"data.validation={paths['validation']}",
                f"data.test={paths['test']}",
                f"data.max_length={args.max_length}",
                f"output_dir={tmp}/run",
                f"train.epochs={args.epochs}",
                *([args.change] if args.variant == "changed" else []),
                "train.report_errors=0",
                f"seed={args.seed}",
            ],
        )
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
        train_s = float(result.stats.get("train_seconds", float("nan")))
    row = {
        "dataset": args.dataset,
        "variant": args.variant,
        "change": args.change,
        "seed": args.seed,
        "test_accuracy": result.metrics["accuracy"],
        "test_macro_f1": result.metrics["macro_f1"],
        "steps": result.global_step,
        "wall_s": wall,
        "train_s": train_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(row), flush=True)


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict[str, Any]], change: str) -> str:
    """Per data set: each variant's test accuracy and macro-F1 (mean ± sd over seeds, in points), the paired
    difference changed - default, and the medians of peak memory and training time."""
    lines = [
        f"| data set | seeds | accuracy default | accuracy {change} | difference | macro-F1 default | "
        f"macro-F1 {change} | difference | peak MB default / changed | train s default / changed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by = {(r["variant"], r["seed"]): r for r in rows if r["dataset"] == dataset}
        seeds = sorted({s for v, s in by if ("default", s) in by and ("changed", s) in by})
        if not seeds:
            continue
        cells = [dataset, str(len(seeds))]
        for metric in ("test_accuracy", "test_macro_f1"):
            default = [100 * by["default", s][metric] for s in seeds]
            changed = [100 * by["changed", s][metric] for s in seeds]
            cells += [
                _mean_sd(default),
                _mean_sd(changed),
                _mean_sd([c - d for c, d in zip(changed, default, strict=True)]),
            ]
        for key in ("peak_rss_mb", "train_s"):
            medians = [statistics.median(by[v, s][key] for s in seeds) for v in VARIANTS]
            cells.append(" / ".join(f"{m:.0f}" for m in medians))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA))
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--change", default="train.freeze_embeddings=true", help="KEY=VALUE against the defaults")
    parser.add_argument("--json", help="write the rows here (and read them back first: finished runs are kept)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows: list[dict[str, Any]] = []
    if args.json and Path(args.json).is_file():
        rows = json.loads(Path(args.json).read_text())["rows"]
        for row in rows:
            row["variant"] = OLD_NAMES.get(row["variant"], row["variant"])
        # The defaults' rows serve any change; a changed row only its own.
        other = {r.get("change", "train.freeze_embeddings=true") for r in rows if r["variant"] == "changed"}
        if other - {args.change}:
            sys.exit(f"{args.json} has rows of another change ({', '.join(sorted(other))}); give another --json")
    done = {(r["dataset"], r["variant"], r["seed"]) for r in rows}
    jobs = [(d, s) for s in args.seeds for d in args.datasets]
    for index, (dataset, seed) in enumerate(jobs):
        order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            if (dataset, variant, seed) in done:
                continue
            print(f"[{index + 1}/{len(jobs)}] {dataset} seed {seed} {variant} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", "--dataset", dataset, "--variant", variant]
            cmd += ["--seed", str(seed), "--data-root", args.data_root, "--model", args.model]
            cmd += ["--train-size", str(args.train_size), "--epochs", str(args.epochs)]
            cmd += ["--max-length", str(args.max_length), "--change", args.change]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not result:
                sys.exit(f"{dataset} seed {seed} {variant} failed:\n{out.stderr[-3000:]}")
            row = json.loads(result[-1][len("RESULT ") :])
            rows.append(row)
            print(
                f"  test accuracy {row['test_accuracy']:.4f}, macro-F1 {row['test_macro_f1']:.4f}, "
                f"peak {row['peak_rss_mb']:.0f} MB, train {row['train_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            if args.json:
                settings = {k: getattr(args, k) for k in ("train_size", "epochs", "max_length", "model", "change")}
                Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(
        f"{args.train_size} training examples, {args.epochs} epochs, max_length {args.max_length}, model "
        f"{args.model}, seeds {args.seeds}; test accuracy and macro-F1 in points"
    )
    print(table(rows, args.change))


if __name__ == "__main__":
    main()
