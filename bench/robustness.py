"""Out-of-scope detection and calibration of adaptext's defaults, on data held aside from training.

    python bench/robustness.py                                   # every task below
    python bench/robustness.py --tasks clinc150 --resume         # one task; finished tasks are kept
    python bench/robustness.py --table-only                      # print the tables of bench/results/robustness.json

Tasks (the model and the data are set, nothing else; every run also fits `calibrate` and `ood.method=knn`):

- `clinc150`: the 150 intents' train and dev texts (no out-of-scope text in training or validation); tested on the
  4,500 in-scope and 1,000 out-of-scope test texts. Every OOD score (msp, energy, mahalanobis, knn) is fitted on the
  same trained model, threshold from in-scope validation at `ood.in_scope_recall` 0.95.
- `banking77-open-S`: the TEXTOIR open-intent protocol with 75% of the intents known (58 of 77, drawn with seed S):
  BANKING77 ships no test file here, so a stratified 20% of its training file (seed 0) is the test set, in which
  the 19 unknown intents are out of scope; training and validation use the known intents of the other 80%.
- `banking77`: all 77 intents, the same 80/20 split; ECE before and after temperature scaling on the 20%.
- `sst2`: `--sst2-train` training texts (seed 0) of SST-2; ECE before and after on dev (872).

Each model is trained by `adaptext train` in its own process; results go to bench/results/robustness.json.
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
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results" / "robustness.json"
METHODS = ("msp", "energy", "mahalanobis", "knn")
OOS = "oos"


def prepare(task: str, data_root: Path, folder: Path, sst2_train: int) -> dict[str, Path]:
    """Write the task's train / validation / test CSV files into `folder` (test keeps out-of-scope rows as `oos`)."""
    import numpy as np
    import pandas as pd

    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples
    from adaptext.data.splits import stratified_split

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.csv" for name in ("train", "validation", "test")}
    if task == "clinc150":
        source = data_root / "clinc150"
        for name, split in (("train", "train"), ("validation", "dev")):
            frame = pd.read_csv(source / f"{split}.csv", keep_default_na=False)
            frame[frame.label != OOS][["text", "label"]].to_csv(files[name], index=False)
        pd.read_csv(source / "test.csv", keep_default_na=False)[["text", "label"]].to_csv(files["test"], index=False)
    elif task.startswith("banking77"):
        source = data_root / "banking77" / "train.csv"
        kept, held = stratified_split(load_examples(source, DataConfig()), 0.2, seed=0)
        frame = pd.read_csv(source, keep_default_na=False)
        train, test = frame.iloc[kept], frame.iloc[held].copy()
        if task.startswith("banking77-open-"):
            seed = int(task.rsplit("-", 1)[1])
            intents = sorted(frame.label.unique())
            known = set(np.random.default_rng(seed).choice(intents, round(0.75 * len(intents)), replace=False))
            train = train[train.label.isin(known)]
            test.loc[~test.label.isin(known), "label"] = OOS
        # validation: a stratified 10% of the training part (seed 0), as `data.validation_fraction` would take
        train_examples = load_examples_frame(train, folder / "all_train.csv")
        fit, check = stratified_split(train_examples, 0.1, seed=0)
        train.iloc[fit].to_csv(files["train"], index=False)
        train.iloc[check].to_csv(files["validation"], index=False)
        test.to_csv(files["test"], index=False)
    elif task == "sst2":
        source = data_root / "sst2"
        train = pd.read_csv(source / "train.csv", keep_default_na=False)
        train = train.sample(n=min(sst2_train, len(train)), random_state=0)
        split = int(0.9 * len(train))
        train.iloc[:split].to_csv(files["train"], index=False)
        train.iloc[split:].to_csv(files["validation"], index=False)
        pd.read_csv(source / "dev.csv", keep_default_na=False).to_csv(files["test"], index=False)
    else:
        raise SystemExit(f"unknown task {task!r}")
    return files


def load_examples_frame(frame: Any, path: Path) -> Any:
    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples

    frame.to_csv(path, index=False)
    return load_examples(path, DataConfig())


def train(files: dict[str, Path], run_dir: Path) -> float:
    """Train with the defaults (and a knn detector) by `adaptext train`; returns the wall time."""
    config = run_dir.parent / "config.yaml"
    config.write_text(
        f"output_dir: {run_dir}\ndata:\n  train: {files['train']}\n  validation: {files['validation']}\n"
        "ood:\n  method: knn\ntrain:\n  report_errors: 0\n"
    )
    command = [sys.executable, "-m", "adaptext", "train", str(config), "--overwrite"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def measure(task: str, files: dict[str, Path], run_dir: Path) -> dict[str, Any]:
    """Every OOD score fitted on the trained model and scored on the test file; ECE before and after scaling."""
    import numpy as np

    from adaptext.core.config import DataConfig, OodSection
    from adaptext.core.task import SINGLE_LABEL
    from adaptext.data.io import load_examples
    from adaptext.evaluation.detectors import fit_detector
    from adaptext.evaluation.metrics import compute_ood_metrics, expected_calibration_error
    from adaptext.inference.predictor import Predictor

    fold_recorded_temperature(run_dir / "model")
    predictor = Predictor.from_dir(run_dir, batch_size=128)
    cfg = DataConfig()
    train_data, validation = load_examples(files["train"], cfg), load_examples(files["validation"], cfg)
    test = load_examples(files["test"], cfg)
    labels = [str(label) for label in test.labels or []]
    k = len(predictor.labels)
    index = {name: i for i, name in enumerate(predictor.labels)}
    targets = np.array([index.get(label, k) for label in labels])
    inside = targets < k
    logits, probs, features = predictor.predict_with_features(test.texts)  # logits: calibrated (folded)
    temperature = float((predictor.info.calibration or {}).get("temperature", 1.0))
    raw = logits * temperature
    result: dict[str, Any] = {
        "temperature": temperature,
        "n_test": len(labels),
        "n_test_oos": int((~inside).sum()),
        "ece_before": expected_calibration_error(SINGLE_LABEL.scores(raw[inside]), targets[inside]),
        "ece_after": expected_calibration_error(SINGLE_LABEL.scores(raw[inside] / temperature), targets[inside]),
        "accuracy_in_scope_no_detector": float((probs[inside].argmax(axis=1) == targets[inside]).mean()),
    }
    # Vector scaling (Guo et al., 2017): a scale and a bias per label on top of the temperature, fitted on validation
    # by the same negative log-likelihood. It folds into the output layer as the temperature does, but may move labels.
    validation_logits = predictor.predict_logits(validation.texts)
    validation_targets = np.array([index[str(label)] for label in validation.labels or []])
    scale, shift = vector_scaling(validation_logits, validation_targets)
    scaled = logits[inside] * scale + shift
    result["ece_after_vector_scaling"] = expected_calibration_error(SINGLE_LABEL.scores(scaled), targets[inside])
    result["accuracy_in_scope_vector_scaling"] = float((scaled.argmax(axis=1) == targets[inside]).mean())
    # A diagnostic, not a method: the lowest test ECE any single temperature reaches (fitted on the test set itself).
    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 400))
    eces = [expected_calibration_error(SINGLE_LABEL.scores(raw[inside] / t), targets[inside]) for t in grid]
    result["ece_best_temperature_on_test"] = float(min(eces))
    result["best_temperature_on_test"] = float(grid[int(np.argmin(eces))])
    if (~inside).any():
        result["ood"] = {}
        for method in METHODS:
            start = time.perf_counter()
            detector = fit_detector(predictor, train_data, validation, OodSection(method=method))
            scores = detector.scores(logits, probs, features)
            report = compute_ood_metrics(
                probs, targets, detector.out_of_scope(scores), scores, predictor.labels, detector.label
            )
            result["ood"][method] = report.metrics | {"fit_seconds": time.perf_counter() - start}
    return result


def vector_scaling(logits: Any, targets: Any) -> tuple[Any, Any]:
    """Per-label scales (positive) and biases minimising the negative log-likelihood of softmax(logits * scale + bias)
    on `targets` (L-BFGS from the identity)."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    z = logits.astype(np.float64)
    n, k = z.shape
    onehot = np.eye(k)[targets]

    def loss(params: Any) -> tuple[float, Any]:
        scale, bias = np.exp(params[:k]), params[k:]
        out = z * scale + bias
        value = -float(log_softmax(out, axis=1)[np.arange(n), targets].mean())
        residual = (softmax(out, axis=1) - onehot) / n  # d loss / d out
        return value, np.concatenate([(residual * z).sum(0) * scale, residual.sum(0)])

    found = minimize(loss, np.zeros(2 * k), jac=True, method="L-BFGS-B")
    return np.exp(found.x[:k]), found.x[k:]


def fold_recorded_temperature(model_dir: Path) -> None:
    """Fold a temperature that a run of an earlier commit recorded without folding (the product folds it since)."""
    from adaptext.core.info import ModelInfo
    from adaptext.evaluation.calibration import fold_temperature
    from adaptext.inference.predictor import Predictor

    info = ModelInfo.read(model_dir)
    record = info.calibration
    if not record or record.get("folded"):
        return
    layer = Predictor.from_dir(model_dir).feature_layer()
    if layer is not None and fold_temperature(model_dir, layer, float(record["temperature"])):
        info.updated(calibration=record | {"folded": True}).write(model_dir)


def table(results: dict[str, Any]) -> str:
    lines = [
        "| task | score | in-scope acc. | OOS recall | OOS precision | AUROC | FPR95 | accuracy (+OOS) "
        "| macro-F1 (+OOS) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, result in results.items():
        for method, m in result.get("ood", {}).items():
            lines.append(
                f"| {task} | {method} | {100 * m['in_scope_accuracy']:.2f} | {100 * m['oos_recall']:.2f} | "
                f"{100 * m['oos_precision']:.2f} | {m['ood_auroc']:.4f} | {100 * m['ood_fpr95']:.2f} | "
                f"{100 * m['accuracy']:.2f} | {100 * m['macro_f1']:.2f} |"
            )
    seeds = [task for task in results if task.startswith("banking77-open-") and "ood" in results[task]]
    if len(seeds) > 1:
        keys = ("in_scope_accuracy", "oos_recall", "oos_precision", "ood_auroc", "ood_fpr95", "accuracy", "macro_f1")
        for method in METHODS:
            mean = {key: sum(results[t]["ood"][method][key] for t in seeds) / len(seeds) for key in keys}
            lines.append(
                f"| banking77-open, mean of {len(seeds)} seeds | {method} | {100 * mean['in_scope_accuracy']:.2f} | "
                f"{100 * mean['oos_recall']:.2f} | {100 * mean['oos_precision']:.2f} | {mean['ood_auroc']:.4f} | "
                f"{100 * mean['ood_fpr95']:.2f} | {100 * mean['accuracy']:.2f} | {100 * mean['macro_f1']:.2f} |"
            )
    lines += [
        "",
        "| task | test texts (in scope) | accuracy, no detector | temperature | ECE before | ECE after "
        "| floor: best T on test (its ECE) | ECE, vector scaling (accuracy) | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, r in results.items():
        lines.append(
            f"| {task} | {r['n_test'] - r['n_test_oos']} | {100 * r['accuracy_in_scope_no_detector']:.2f} | "
            f"{r['temperature']:.3g} | {100 * r['ece_before']:.2f}% | {100 * r['ece_after']:.2f}% | "
            f"{r.get('best_temperature_on_test', float('nan')):.3g} "
            f"({100 * r.get('ece_best_temperature_on_test', float('nan')):.2f}%) | "
            f"{100 * r.get('ece_after_vector_scaling', float('nan')):.2f}% "
            f"({100 * r.get('accuracy_in_scope_vector_scaling', float('nan')):.2f}) | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="clinc150,banking77-open-0,banking77,sst2")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA))
    parser.add_argument("--work", default="/tmp/adaptext-bench-robustness", help="run folders and data files")
    parser.add_argument("--sst2-train", type=int, default=20000, help="SST-2 training texts (seed 0)")
    parser.add_argument("--resume", action="store_true", help="keep the tasks already in the results file")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--reuse-runs", action="store_true", help="measure a task's finished run in --work again instead of retraining"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() and (args.resume or args.table_only) else {}
    if args.table_only:
        print(table(results))
        return
    for task in args.tasks.split(","):
        if task in results:
            print(f"{task}: kept from {out}", file=sys.stderr)
            continue
        folder = Path(args.work) / task
        files = prepare(task, Path(args.data_root), folder / "data", args.sst2_train)
        stats = folder / "run" / "run_stats.json"
        if args.reuse_runs and stats.is_file():
            seconds = float(json.loads(stats.read_text())["train_seconds"])
            print(f"{task}: measuring the finished run in {folder / 'run'}", file=sys.stderr)
        else:
            seconds = train(files, folder / "run")
        results[task] = measure(task, files, folder / "run") | {"train_seconds": seconds}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(table({task: results[task]}))
    print(table(results))


if __name__ == "__main__":
    main()
