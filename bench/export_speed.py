"""Size, speed and agreement of models as PyTorch, ONNX fp32 and ONNX int8, on the same texts in one run.

    python bench/export_speed.py runs/quickstart --output exports/quickstart
    python bench/export_speed.py runs/quickstart runs/sst2-weak runs/fewshot --output exports/bench \\
        --json bench/results/export_speed.json

For each run: exports it twice with `adaptext export` (fp32, then `--quantize int8`; each verifies itself and is
refused when its check fails: the int8 check needs >= 99% of the labels unchanged and at most 1 point of accuracy
lost on the run's validation sample), then times `Predictor.predict_logits` on each backend over the run's
validation split (at most `--texts` texts), batched (64, longest first) and one text at a time, taking turns
between backends over `--repeats` rounds. Reports size on disk, texts/s, label agreement with PyTorch and accuracy,
and int8's speed against fp32 ONNX. `--reuse` times the exports already at the prefix instead of exporting again;
`--compare NAME=FOLDER ...` times other model folders (an int8 export of earlier code, say) in the same rounds:

    python bench/export_speed.py runs/fewshot --output exports/bench --reuse --compare "int8 before=old/int8"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(
    run: Path, output: str, repeats: int, single_n: int, max_texts: int, reuse: bool, compare: dict[str, Path]
) -> dict[str, Any]:
    from adaptext.core.config import load_config
    from adaptext.core.errors import AdaptextError
    from adaptext.core.info import find_model_dir
    from adaptext.data.labels import label_targets
    from adaptext.data.splits import load_splits
    from adaptext.deploy.export import export_onnx
    from adaptext.inference.predictor import Predictor

    folders = {"PyTorch": find_model_dir(run)}
    checks: dict[str, Any] = {}
    for quantize, suffix in ((None, "fp32"), ("int8", "int8")):
        target = Path(f"{output}-{run.name}-{suffix}")
        metadata = target / "adaptext.json"
        if reuse and metadata.is_file():
            check = json.loads(metadata.read_text(encoding="utf-8"))["export_check"]
            message = f"reused {target}: labels agree on {check['label_agreement']:.2%}, "
            message += f"{len(check['fp32_nodes'])} matrix products kept in fp32"
            print(f"{run.name} export {suffix}: {message}")
            checks[suffix] = {"passed": True, "message": message, "label_agreement": check["label_agreement"]}
            folders[f"ONNX {suffix}"] = target
            continue
        try:
            check = export_onnx(run, target, quantize=quantize, overwrite=True)
        except AdaptextError as error:
            print(f"{run.name} export {suffix}: REFUSED: {error}")
            checks[suffix] = {"passed": False, "message": str(error)}
            continue
        print(f"{run.name} export {suffix}: {check.describe()}")
        checks[suffix] = {"passed": True, "message": check.describe(), "label_agreement": check.label_agreement}
        folders[f"ONNX {suffix}"] = target
    folders |= compare
    validation = load_splits(load_config(run / "config.yaml")).validation
    texts, pairs = validation.texts[:max_texts], validation.pairs[:max_texts] if validation.pairs else None
    predictors = {name: Predictor.from_dir(folder, device="cpu") for name, folder in folders.items()}
    reference = predictors["PyTorch"]
    targets = label_targets(validation, reference.labels, reference.task)[:max_texts]
    batched: dict[str, list[float]] = {name: [] for name in predictors}
    single: dict[str, list[float]] = {name: [] for name in predictors}
    logits = {}
    for round_ in range(repeats):
        order = list(predictors) if round_ % 2 == 0 else list(reversed(predictors))
        for name in order:
            start = time.perf_counter()
            logits[name] = predictors[name].predict_logits(texts, pairs)
            batched[name].append(len(texts) / (time.perf_counter() - start))
            start = time.perf_counter()
            for text in texts[:single_n]:
                predictors[name].predict_logits([text])
            single[name].append(single_n / (time.perf_counter() - start))
    rows = {}
    for name, folder in folders.items():
        rows[name] = {
            "size_mb": sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".safetensors")) / 2**20,
            "batched_texts_per_s": statistics.median(batched[name]),
            "single_texts_per_s": statistics.median(single[name]),
            "label_agreement": float((logits[name].argmax(1) == logits["PyTorch"].argmax(1)).mean()),
            "accuracy": float((logits[name].argmax(1) == targets).mean()),
        }
    return {"run": str(run), "texts": len(texts), "repeats": repeats, "checks": checks, "backends": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (their validation split is the test data)")
    parser.add_argument("--output", required=True, help="prefix for the export folders (-RUN-fp32, -RUN-int8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=200, help="texts timed one at a time")
    parser.add_argument("--texts", type=int, default=1000, help="at most this many validation texts timed")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--reuse", action="store_true", help="time the export folders already at the prefix")
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="NAME=FOLDER",
        help="other model folders (an earlier export, say) timed in the same rounds; one run only",
    )
    args = parser.parse_args()
    if any("=" not in item for item in args.compare):
        parser.error("--compare takes NAME=FOLDER items")
    compare = {name: Path(folder) for name, _, folder in (item.partition("=") for item in args.compare)}
    if compare and len(args.runs) > 1:
        parser.error("--compare needs exactly one run")

    results = [
        measure(run, args.output, args.repeats, args.single, args.texts, args.reuse, compare) for run in args.runs
    ]
    for result in results:
        rows = result["backends"]
        print(f"\n{result['run']}: {result['texts']} validation texts, median of {result['repeats']} rounds\n")
        print(
            "| backend | size MB | texts/s batched | vs PyTorch | texts/s one by one | vs PyTorch | "
            "labels = PyTorch | accuracy |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base_b, base_s = rows["PyTorch"]["batched_texts_per_s"], rows["PyTorch"]["single_texts_per_s"]
        for name, row in rows.items():
            b, s = row["batched_texts_per_s"], row["single_texts_per_s"]
            print(
                f"| {name} | {row['size_mb']:.1f} | {b:.0f} | {b / base_b:.2f}x | {s:.0f} | {s / base_s:.2f}x | "
                f"{row['label_agreement']:.2%} | {row['accuracy']:.4f} |"
            )
    print("\n| run | int8 check | int8 / fp32 ONNX batched | int8 / fp32 ONNX one by one |")
    print("|---|---|---:|---:|")
    for result in results:
        rows, check = result["backends"], result["checks"]["int8"]
        verdict = ("passed: " if check["passed"] else "refused: ") + check["message"]
        if "ONNX int8" in rows and "ONNX fp32" in rows:
            ratio_b = rows["ONNX int8"]["batched_texts_per_s"] / rows["ONNX fp32"]["batched_texts_per_s"]
            ratio_s = rows["ONNX int8"]["single_texts_per_s"] / rows["ONNX fp32"]["single_texts_per_s"]
            print(f"| {Path(result['run']).name} | {verdict} | {ratio_b:.2f}x | {ratio_s:.2f}x |")
        else:
            print(f"| {Path(result['run']).name} | {verdict} | - | - |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
