"""Full fine-tuning against each parameter-efficient method, same data, same budget of examples, same seeds.

    python bench/peft_compare.py                       # SST-2 subset and BANKING77 held-out, 3 seeds, all methods
    python bench/peft_compare.py --datasets banking77 --methods none lora --seeds 0 \\
        --set lora:train.learning_rate=2e-3 --set lora:peft.options.r=16

Each run is its own `adaptext train` process, so its peak memory (RSS) is its own. Every method gets the same
training examples, epochs and batch size, and its own `learning_rate: auto` (adaptext's per-method default)
unless `--set METHOD:key=value` says otherwise. SST-2: a fixed random subset of train (seed 0), evaluated on dev.
BANKING77: a stratified 20% of its training file (seed 0) held out for evaluation, and a fixed subset of the
rest for training. Reported: accuracy and macro-F1 (mean ± std over seeds), trainable parameters, checkpoint
size, training samples/s and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
METHODS = ["none", "lora", "adalora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning"]
TRAIN_SIZE = {"sst2": 1000, "banking77": 2000}
EPOCHS = {"sst2": 3, "banking77": 3}


def write_files(dataset: str, data_root: Path, train_size: int, folder: Path) -> dict[str, Path]:
    import pandas as pd

    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples
    from adaptext.data.splits import stratified_split

    if dataset == "sst2":
        frame = pd.read_csv(data_root / "sst2" / "train.csv", keep_default_na=False)
        evaluation = pd.read_csv(data_root / "sst2" / "dev.csv", keep_default_na=False)
        train = frame.sample(n=min(train_size, len(frame)), random_state=0)
    else:
        source = data_root / "banking77" / "train.csv"
        kept, held = stratified_split(load_examples(source, DataConfig()), 0.2, seed=0)
        frame = pd.read_csv(source, keep_default_na=False)
        evaluation = frame.iloc[held]
        rest = frame.iloc[kept]
        train = rest.sample(n=min(train_size, len(rest)), random_state=0)
    paths = {"train": folder / f"{dataset}-train.csv", "validation": folder / f"{dataset}-eval.csv"}
    train.to_csv(paths["train"], index=False)
    evaluation.to_csv(paths["validation"], index=False)
    return paths


def run_one(
    dataset: str, method: str, seed: int, files: dict[str, Path], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    run_dir = out / f"{dataset}-{method}-{seed}"
    overrides = [
        f"model.name={args.model}",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        f"output_dir={run_dir}",
        f"seed={seed}",
        f"train.epochs={args.epochs or EPOCHS[dataset]}",
        f"train.batch_size={args.batch_size}",
        f"peft.method={method}",
    ]
    overrides += [item.split(":", 1)[1] for item in args.set if item.split(":", 1)[0] == method]
    config = out / "base.yaml"
    config.write_text("format_version: 1\n", encoding="utf-8")  # everything else is set by the overrides
    command = [sys.executable, "-m", "adaptext", "-q", "train", "--overwrite", str(config), *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{dataset} {method} seed {seed} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stats = json.loads((run_dir / "run_stats.json").read_text())
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["samples_per_second"] for r in log if "samples_per_second" in r]
    return {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "trainable": stats["trainable_parameters"],
        "total": stats["total_parameters"],
        "size_mb": stats["model_size_bytes"] / 2**20,
        "samples_per_s": statistics.median(speeds) if speeds else float("nan"),
        "peak_rss_mb": stats["peak_rss_mb"],
        "wall_s": wall,
        "overrides": [o for o in overrides if o.startswith(("train.learning", "peft.options"))],
    }


def summarise(rows: list[dict[str, Any]]) -> str:
    def mean_std(values: list[float]) -> str:
        if len(values) == 1:
            return f"{100 * values[0]:.2f}"
        return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"

    lines = [
        "| dataset | method | accuracy % | macro-F1 % | trainable params | trainable % | checkpoint MB "
        "| size vs full | train samples/s | peak RSS MB | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for dataset in datasets:
        full_size = next((r["size_mb"] for r in rows if r["dataset"] == dataset and r["method"] == "none"), None)
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == dataset):
            group = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            size = group[0]["size_mb"]
            lines.append(
                f"| {dataset} | {method} | {mean_std([r['accuracy'] for r in group])} "
                f"| {mean_std([r['macro_f1'] for r in group])} | {group[0]['trainable']:,} "
                f"| {100 * group[0]['trainable'] / group[0]['total']:.2f} | {size:.2f} "
                f"| {f'{100 * size / full_size:.1f}%' if full_size else 'n/a'} "
                f"| {statistics.mean(r['samples_per_s'] for r in group):.1f} "
                f"| {max(r['peak_rss_mb'] for r in group):.0f} | {len(group)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sst2", "banking77"], choices=["sst2", "banking77"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding sst2/ and banking77/")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train-size", type=int, help="training examples (default: sst2 1000, banking77 2000)")
    parser.add_argument("--epochs", type=float, help="epochs for every method (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:key=value", help="per-method override")
    parser.add_argument("--output", help="also write the per-run results as JSON lines here")
    args = parser.parse_args()

    data_root = Path(args.data_root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            if not (data_root / dataset).is_dir():
                sys.exit(f"no {dataset} under {data_root}; pass --data-root")
            files = write_files(dataset, data_root, args.train_size or TRAIN_SIZE[dataset], Path(tmp))
            for seed in args.seeds:  # seeds outermost: machine noise spreads over all methods alike
                for method in args.methods:
                    row = run_one(dataset, method, seed, files, args, Path(tmp))
                    rows.append(row)
                    print(
                        f"{dataset} {method} seed {seed}: accuracy {row['accuracy']:.4f}, "
                        f"{row['samples_per_s']:.1f} samples/s, {row['wall_s']:.0f} s",
                        flush=True,
                    )
                    if args.output:
                        with Path(args.output).open("a", encoding="utf-8") as handle:
                            handle.write(json.dumps(row) + "\n")
    print()
    print(summarise(rows))


if __name__ == "__main__":
    main()
