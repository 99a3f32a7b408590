"""Size, speed and agreement of a model as PyTorch, ONNX fp32 and ONNX int8, on the same texts in one run.

    python bench/export_speed.py runs/quickstart --output exports/quickstart

Exports the run twice with `adaptext export` (fp32, then `--quantize int8`; each verifies itself), then times
`Predictor.predict_logits` on each backend over the run's validation split, batched (64, longest first) and one
text at a time, taking turns between backends over `--repeats` rounds. Reports size on disk, texts/s, label
agreement with PyTorch and accuracy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder (its validation split is the test data)")
    parser.add_argument("--output", required=True, help="prefix for the export folders (-fp32, -int8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=200, help="texts timed one at a time")
    args = parser.parse_args()

    from adaptext.core.config import load_config
    from adaptext.core.info import find_model_dir
    from adaptext.data.labels import label_targets
    from adaptext.data.splits import load_splits
    from adaptext.deploy.export import export_onnx
    from adaptext.inference.predictor import Predictor

    run = Path(args.run)
    folders = {"PyTorch": find_model_dir(run)}
    for quantize, suffix in ((None, "fp32"), ("int8", "int8")):
        target = Path(f"{args.output}-{suffix}")
        check = export_onnx(run, target, quantize=quantize)
        print(f"export {suffix}: {check.describe()}")
        folders[f"ONNX {suffix}"] = target
    validation = load_splits(load_config(run / "config.yaml")).validation
    predictors = {name: Predictor.from_dir(folder, device="cpu") for name, folder in folders.items()}
    reference = predictors["PyTorch"]
    targets = label_targets(validation, reference.labels, reference.task)
    batched: dict[str, list[float]] = {name: [] for name in predictors}
    single: dict[str, list[float]] = {name: [] for name in predictors}
    logits = {}
    for round_ in range(args.repeats):
        order = list(predictors) if round_ % 2 == 0 else list(reversed(predictors))
        for name in order:
            start = time.perf_counter()
            logits[name] = predictors[name].predict_logits(validation.texts, validation.pairs)
            batched[name].append(len(validation) / (time.perf_counter() - start))
            start = time.perf_counter()
            for text in validation.texts[: args.single]:
                predictors[name].predict_logits([text])
            single[name].append(args.single / (time.perf_counter() - start))
    print(f"\n{len(validation)} validation texts of {run}, median of {args.repeats} rounds\n")
    print(
        "| backend | size MB | texts/s batched | vs PyTorch | texts/s one by one | vs PyTorch | "
        "labels = PyTorch | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base_b, base_s = statistics.median(batched["PyTorch"]), statistics.median(single["PyTorch"])
    for name, folder in folders.items():
        size = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".safetensors")) / 2**20
        b, s = statistics.median(batched[name]), statistics.median(single[name])
        agree = float((logits[name].argmax(1) == logits["PyTorch"].argmax(1)).mean())
        accuracy = float((logits[name].argmax(1) == targets).mean())
        print(
            f"| {name} | {size:.1f} | {b:.0f} | {b / base_b:.2f}x | {s:.0f} | {s / base_s:.2f}x | "
            f"{agree:.2%} | {accuracy:.4f} |"
        )


if __name__ == "__main__":
    main()
