"""Accuracy of adaptext's defaults (and of chosen overrides) on SST-2 and BANKING77, with wall times.

    python bench/accuracy.py sst2                                   # full SST-2 train, evaluated on dev
    python bench/accuracy.py banking77                              # 80% of BANKING77 train, 20% held out
    python bench/accuracy.py sst2 --train-size 4000 --sweep train.learning_rate=5e-5,1e-4,2e-4,4e-4 train.epochs=1

Only the model and the data are set unless overrides are given: the point is what a user gets without tuning.
BANKING77 has no shipped test split, so a stratified 20% of its training file (seed 0) is held out and used as
validation; SST-2 uses its dev split.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _files(dataset: str, data_root: Path, train_size: int | None, folder: Path) -> dict[str, Path]:
    import pandas as pd

    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples
    from adaptext.data.splits import stratified_split

    if dataset == "sst2":
        train = pd.read_csv(data_root / "sst2" / "train.csv", keep_default_na=False)
        validation_path = data_root / "sst2" / "dev.csv"
    else:
        source = data_root / "banking77" / "train.csv"
        data = load_examples(source, DataConfig())
        kept, held = stratified_split(data, 0.2, seed=0)
        frame = pd.read_csv(source, keep_default_na=False)
        train = frame.iloc[kept]
        validation_path = folder / "heldout.csv"
        frame.iloc[held].to_csv(validation_path, index=False)
    if train_size is not None and train_size < len(train):
        train = train.sample(n=train_size, random_state=0)
    train_path = folder / "train.csv"
    train.to_csv(train_path, index=False)
    return {"train": train_path, "validation": validation_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["sst2", "banking77"])
    parser.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding sst2/ and banking77/")
    parser.add_argument("--train-size", type=int, help="subsample the training data (seed 0)")
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=[],
        metavar="key=v1,v2",
        help="overrides; comma-separated values are swept (all combinations)",
    )
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()

    from adaptext.core.config import load_config
    from adaptext.strategies import train

    data_root = Path(args.data_root)
    if not (data_root / args.dataset).is_dir():
        sys.exit(f"no {args.dataset} under {data_root}; pass --data-root")
    keys = [item.split("=", 1)[0] for item in args.sweep]
    values = [item.split("=", 1)[1].split(",") for item in args.sweep]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(args.dataset, data_root, args.train_size, Path(tmp))
        for combo in itertools.product(*values) if values else [()]:
            overrides = [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
            config = load_config(
                None,
                [
                    f"model.name={args.model}",
                    f"data.train={files['train']}",
                    f"data.validation={files['validation']}",
                    f"output_dir={tmp}/run",
                    *overrides,
                ],
            )
            start = time.perf_counter()
            result = train(config, overwrite=True)
            wall = time.perf_counter() - start
            best = max(r.get("eval_accuracy", 0.0) for r in result.history)
            rows.append(
                (" ".join(overrides) or "(defaults)", result.metrics["accuracy"], best, result.global_step, wall)
            )
            print(f"{rows[-1][0]}: accuracy {rows[-1][1]:.4f} in {wall:.0f} s", file=sys.stderr, flush=True)
    train_rows = args.train_size or "all"
    print(f"{args.dataset}, model {args.model}, training rows: {train_rows}")
    print("| settings | accuracy (saved model) | best epoch accuracy | steps | wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, accuracy, best, steps, wall in rows:
        print(f"| {name} | {accuracy:.4f} | {best:.4f} | {steps} | {wall:.0f} |")


if __name__ == "__main__":
    main()
