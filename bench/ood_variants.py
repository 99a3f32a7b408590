"""Other out-of-scope scores on the runs `bench/robustness.py` trained: which features and which score separate the
unknown intents best?

    python bench/robustness.py --tasks banking77-open-0,banking77-open-1,banking77-open-2   # the runs, if missing
    python bench/ood_variants.py --tasks banking77-open-0,banking77-open-1,banking77-open-2 \
        --json bench/results/ood_variants.json

Each task's finished run (in `--work`, as bench/robustness.py leaves it) scores its train, validation and test texts
once; the scores below are then fitted on the training texts, thresholded on the in-scope validation texts at 95%
in-scope recall (adaptext's rule) and measured on the test file by `compute_ood_metrics` (out-of-scope as one more
class), as bench/robustness.py measures adaptext's own scores:

- `mahalanobis (head input)`: adaptext's `auto`: class means and a shared covariance of the output layer's input;
- `energy`: minus the log-sum-exp of the logits;
- `mahalanobis, last layer mean` / `before the pooling layer`: the token mean of the last hidden state (the pooling
  layer's output), or of the encoder's last layer before it;
- `mahalanobis, mean of all layers`: the token means of every hidden state, averaged (Chen et al., 2022, "Avg-Avg");
  `concatenated`: side by side; `per-layer z-sum`: one Mahalanobis distance per layer, standardised on validation
  and summed;
- `relative mahalanobis`: minus the distance to one Gaussian of all training texts (Ren et al., 2021);
- `mahalanobis + energy`: both standardised on validation and summed;
- `vim D`: virtual-logit matching (Wang et al., 2022) with a principal space of D of the head input's dimensions;
- `knn k`: adaptext's knn score at k neighbours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
Scores = tuple[np.ndarray, np.ndarray]  # (validation scores, test scores), higher: further out of scope


def features(run: Path, files: dict[str, Path]) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The run's predictor, and per split, from one pass over its texts: logits, probabilities, the head input and
    every hidden state's token mean (texts, states, width)."""
    from adaptext.core.config import DataConfig
    from adaptext.data.batching import Encoded, map_batches, tokenize
    from adaptext.data.io import load_examples
    from adaptext.inference.ood import FeatureTap
    from adaptext.inference.predictor import Predictor

    predictor = Predictor.from_dir(run, batch_size=128)
    splits = {name: load_examples(path, DataConfig()) for name, path in files.items()}
    layer = predictor.feature_layer()
    if layer is None:
        raise SystemExit(f"{run}: the model has no output layer whose input could be read")
    tap = FeatureTap(layer)

    def outputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        result = predictor.model(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        means = [(h * mask).sum(1) / mask.sum(1) for h in result.hidden_states]
        head = torch.from_numpy(tap.pop())
        return torch.cat([*means, head, result.logits.float()], 1)  # (batch, states * width + hidden + labels)

    out = {}
    pad = predictor.tokenizer.pad_token_id or 0
    classes, hidden = len(predictor.labels), layer.in_features
    for name, data in splits.items():
        encoded = Encoded(features=tokenize(predictor.tokenizer, data.texts, None, predictor.max_length))
        with torch.inference_mode():
            rows = map_batches(encoded, outputs, pad_token_id=pad, device=torch.device("cpu"), batch_size=128)
        means, head, logits = np.split(rows, [rows.shape[1] - hidden - classes, rows.shape[1] - classes], axis=1)
        out[name] = {
            "logits": logits,
            "probs": predictor.task.scores(logits / predictor.temperature),
            "head": head,
            "layers": means.reshape(len(means), -1, hidden),
        }
        print(f"  {name}: {len(data)} texts embedded", file=sys.stderr, flush=True)
    tap.close()
    return predictor, out, splits


def variants(
    data: dict[str, dict[str, np.ndarray]],
    train_targets: np.ndarray,
    classes: int,
    weight: np.ndarray,
    bias: np.ndarray,
) -> dict[str, Callable[[], Scores]]:
    from adaptext.inference.ood import class_statistics, energy, knn_distance, mahalanobis_distance, normalised

    def of(split: str, key: str, layer: int | None = None, how: str = "") -> np.ndarray:
        value = data[split][key]
        if how == "mean":
            return value.mean(1)
        if how == "concat":
            return value.reshape(len(value), -1)
        return value if layer is None else value[:, layer]

    def mahalanobis(get: Callable[[str], np.ndarray]) -> Scores:
        means, precision = class_statistics(get("train"), train_targets, classes)
        validation = mahalanobis_distance(get("validation"), means, precision)
        return validation, mahalanobis_distance(get("test"), means, precision)

    def standardised(scores: Scores) -> Scores:
        centre, spread = scores[0].mean(), scores[0].std()
        return (scores[0] - centre) / spread, (scores[1] - centre) / spread

    def per_layer_sum() -> Scores:
        layers = data["train"]["layers"].shape[1]
        parts = [standardised(mahalanobis(lambda s, i=i: of(s, "layers", i))) for i in range(layers)]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)  # type: ignore[return-value]

    def relative() -> Scores:
        head = {s: of(s, "head") for s in data}
        background = np.zeros(len(head["train"]), dtype=int)
        centre, precision = class_statistics(head["train"], background, 1)
        own = mahalanobis(lambda s: head[s])
        return (
            own[0] - mahalanobis_distance(head["validation"], centre, precision),
            own[1] - mahalanobis_distance(head["test"], centre, precision),
        )

    def summed(a: Scores, b: Scores) -> Scores:
        sa, sb = standardised(a), standardised(b)
        return sa[0] + sb[0], sa[1] + sb[1]

    def vim(dim: int) -> Scores:
        head = {s: of(s, "head").astype(np.float64) for s in data}
        origin = -np.linalg.pinv(weight) @ bias
        _, _, basis = np.linalg.svd(head["train"] - origin, full_matrices=False)
        residual_space = basis[dim:].T

        def residual(x: np.ndarray) -> np.ndarray:
            return np.linalg.norm((x - origin) @ residual_space, axis=1)

        alpha = (head["train"] @ weight.T + bias).max(1).mean() / residual(head["train"]).mean()

        def score(split: str) -> np.ndarray:
            logits = head[split] @ weight.T + bias
            top = logits.max(1)
            return alpha * residual(head[split]) - (top + np.log(np.exp(logits - top[:, None]).sum(1)))

        return score("validation"), score("test")

    def knn(k: int) -> Scores:
        bank = normalised(of("train", "head")).astype(np.float32)
        return knn_distance(of("validation", "head"), bank, k), knn_distance(of("test", "head"), bank, k)

    last = data["train"]["layers"].shape[1] - 1
    found: dict[str, Callable[[], Scores]] = {
        "mahalanobis (head input)": lambda: mahalanobis(lambda s: of(s, "head")),
        "energy": lambda: (energy(of("validation", "logits")), energy(of("test", "logits"))),
        "mahalanobis, last layer mean": lambda: mahalanobis(lambda s: of(s, "layers", last)),
        "mahalanobis, before the pooling layer": lambda: mahalanobis(lambda s: of(s, "layers", last - 1)),
        "mahalanobis, mean of all layers": lambda: mahalanobis(lambda s: of(s, "layers", how="mean")),
        "mahalanobis, all layers concatenated": lambda: mahalanobis(lambda s: of(s, "layers", how="concat")),
        "mahalanobis, per-layer z-sum": per_layer_sum,
        "relative mahalanobis": relative,
        "mahalanobis + energy": lambda: summed(found["mahalanobis (head input)"](), found["energy"]()),
    }
    for dim in (64, 128, 192):
        found[f"vim D={dim}"] = lambda dim=dim: vim(dim)
    for k in (1, 5, 10, 50):
        found[f"knn k={k}"] = lambda k=k: knn(k)
    return found


def measure(task: str, work: Path) -> dict[str, dict[str, float]]:
    from adaptext.evaluation.metrics import compute_ood_metrics
    from adaptext.inference.ood import output_layer

    folder = work / task
    files = {name: folder / "data" / f"{name}.csv" for name in ("train", "validation", "test")}
    run = folder / "run"
    if not (run / "run_stats.json").is_file():
        raise SystemExit(f"{run}: no finished run; train it with bench/robustness.py --tasks {task}")
    predictor, data, splits = features(run, files)
    classes = len(predictor.labels)
    index = {name: i for i, name in enumerate(predictor.labels)}

    def targets(split: str) -> np.ndarray:
        return np.array([index.get(str(label), classes) for label in splits[split].labels])

    layer = output_layer(predictor.model, classes)
    assert layer is not None
    weight = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy()
    test_targets = targets("test")
    rows: dict[str, dict[str, float]] = {}
    for name, scores in variants(data, targets("train"), classes, weight, bias).items():
        validation, test = scores()
        threshold = np.quantile(validation, 0.95, method="inverted_cdf")
        report = compute_ood_metrics(
            data["test"]["probs"], test_targets, test > threshold, test, predictor.labels, "unknown"
        )
        keys = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "ood_auroc", "ood_fpr95")
        rows[name] = {key: float(report.metrics[key]) for key in keys}
        print(f"{task} | {name} | {json.dumps({k: round(100 * v, 2) for k, v in rows[name].items()})}", flush=True)
    return rows


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    tasks = list(results)
    names = list(next(iter(results.values())))
    lines = [
        "| score | " + " | ".join(f"{t}: acc. (+OOS)" for t in tasks) + " | mean acc. (+OOS) | mean macro-F1 (+OOS) "
        "| mean AUROC | mean FPR95 |",
        "|---|" + "---:|" * (len(tasks) + 4),
    ]
    for name in names:
        cells = [100 * results[t][name]["accuracy"] for t in tasks]

        def mean(key: str, scale: float = 100.0, name: str = name) -> float:
            return scale * float(np.mean([results[t][name][key] for t in tasks]))

        lines.append(
            f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {mean('accuracy'):.2f} | "
            f"{mean('macro_f1'):.2f} | {mean('ood_auroc', 1.0):.4f} | {mean('ood_fpr95'):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="banking77-open-0,banking77-open-1,banking77-open-2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-robustness"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--table-only", action="store_true", help="print the table of --json and stop")
    args = parser.parse_args()
    if args.table_only:
        print(table(json.loads(args.json.read_text(encoding="utf-8"))))
        return
    results = {task: measure(task, args.work) for task in args.tasks.split(",")}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
