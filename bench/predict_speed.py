"""Prediction speed: `adaptext.Predictor.predict` against a batched `transformers.pipeline`, same model folder.

Both classify the same texts (default: 5,000 from SST-2 dev + train) with the same batch size; the order
alternates between repeats. Labels must agree: the script reports how many differ.

    python bench/predict_speed.py --model-dir runs/sst2            # a run or model folder saved by adaptext
    python bench/predict_speed.py                                   # no folder: trains a small SST-2 model first
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"


def _texts(data_dir: Path, n: int) -> list[str]:
    import pandas as pd

    frames = [pd.read_csv(data_dir / name, keep_default_na=False) for name in ("dev.csv", "train.csv")]
    texts = pd.concat(frames).text.tolist()
    return texts[:n]


def _train_small_model(data_dir: Path, folder: Path) -> Path:
    from adaptext.core.config import load_config
    from adaptext.strategies import train

    config = load_config(
        None,
        [
            "model.name=minilm",
            f"data.train={data_dir / 'train.csv'}",
            f"data.validation={data_dir / 'dev.csv'}",
            f"output_dir={folder / 'run'}",
            "train.max_steps=60",
        ],
    )
    return train(config).model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="run or model folder; default: train a small SST-2 model first")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--n", type=int, default=5000, help="number of texts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    if not (data_dir / "dev.csv").is_file():
        sys.exit(f"no SST-2 data at {data_dir}; pass --data-dir")

    import torch
    from transformers import pipeline

    from adaptext.core.info import find_model_dir
    from adaptext.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = find_model_dir(args.model_dir) if args.model_dir else _train_small_model(data_dir, Path(tmp))
        texts = _texts(data_dir, args.n)
        predictor = Predictor.from_dir(model_dir, batch_size=args.batch_size)
        classify = pipeline("text-classification", model=str(model_dir), device=-1)
        max_length = predictor.max_length

        def run_adaptext() -> list[str]:
            return [p.label for p in predictor.predict(texts)]

        def run_pipeline() -> list[str]:
            with torch.inference_mode():
                out = classify(texts, batch_size=args.batch_size, truncation=True, max_length=max_length)
            return [o["label"] for o in out]

        contenders = {"adaptext": run_adaptext, "pipeline": run_pipeline}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        labels: dict[str, list[str]] = {}
        run_adaptext()  # warm-up: first calls pay for thread pools and allocator growth
        run_pipeline()
        for repeat in range(args.repeats):
            order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
            for name in order:
                start = time.perf_counter()
                labels[name] = contenders[name]()
                times[name].append(time.perf_counter() - start)
                print(f"[{repeat + 1}/{args.repeats}] {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    differ = sum(a != b for a, b in zip(labels["adaptext"], labels["pipeline"], strict=True))
    ours = statistics.mean(times["adaptext"])
    print(f"{len(texts)} texts, batch {args.batch_size}, max_length {max_length}, {args.repeats} repeat(s)")
    print("| contender | texts/s | mean s | adaptext speed-up |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        mean = statistics.mean(values)
        print(f"| {name} | {len(texts) / mean:.1f} | {mean:.2f} | {mean / ours:.2f}x |")
    print(f"labels that differ: {differ} of {len(texts)}")


if __name__ == "__main__":
    main()
