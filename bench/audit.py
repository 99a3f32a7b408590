"""Label-error recovery of `adaptext audit`: SST-2 train with a seeded 5% of its labels flipped.

    python bench/audit.py                                 # all 67,349 rows, bundled MiniLM embeddings
    python bench/audit.py --rows 10000                    # a seeded subsample, for a quick run
    python bench/audit.py --model runs/sst2-noisy         # embeddings of a classifier trained on the noisy file

The training file (default ../shared/datasets/sst2/train.csv) is optionally cut to --rows by a seeded draw, then
--noise of its rows (seed --flip-seed) get the other label, and the noisy file is audited exactly as

    adaptext audit noisy.csv --output DIR [--model RUN] --ranking METHOD

would audit it (one `audit_files` call, timed per step). The audit never sees which rows were flipped. Every
cleanlab label-quality method is then scored on the same out-of-fold probabilities: the recall of the flipped rows
among the top 1, 2, 5, 10, 20% of the ranking, the precision of the top 5%, and the precision and recall of the
rows confident learning flags (`suspects.csv`). Results go to --output (JSON) and a PNG recovery curve beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "sst2" / "train.csv"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "audit.json"
FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20)
METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
CLASSIFIERS = ("ensemble", "logistic", "knn")


def noisy_file(data: Path, rows: int | None, noise: float, seed: int, folder: Path) -> tuple[Path, np.ndarray]:
    """Write the (subsampled) file with `noise` of its labels flipped to another label; return it and the flipped
    row positions (0-based)."""
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    if rows is not None and rows < len(frame):
        frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(frame), size=round(noise * len(frame)), replace=False))
    labels = sorted(frame["label"].unique())
    for position in flipped:
        others = [name for name in labels if name != frame.at[position, "label"]]
        frame.at[position, "label"] = others[int(rng.integers(len(others)))]
    path = folder / "noisy.csv"
    frame.to_csv(path, index=False)
    return path, flipped


def recovery(ranking: np.ndarray, flipped: np.ndarray) -> dict[str, Any]:
    """Recall of `flipped` in the top fractions of `ranking`, the precision of its top 5%, and the full curve."""
    hit = np.isin(ranking, flipped)
    found = np.cumsum(hit)
    n = len(ranking)
    out: dict[str, Any] = {
        f"recall_top_{round(f * 100)}pct": round(float(found[max(1, round(f * n)) - 1] / len(flipped)), 4)
        for f in FRACTIONS
    }
    top5 = max(1, round(0.05 * n))
    out["precision_top_5pct"] = round(float(found[top5 - 1] / top5), 4)
    steps = np.linspace(0, n, 101).astype(int)[1:]
    out["curve"] = [round(float(found[s - 1] / len(flipped)), 4) for s in steps]
    return out


def flagged_scores(suspect_rows: list[int], flipped: np.ndarray) -> dict[str, Any]:
    """Precision and recall of the flagged rows (suspects.csv; rows are 1-based) against the flipped ones."""
    positions = np.asarray(suspect_rows, dtype=np.int64) - 1
    hits = int(np.isin(positions, flipped).sum())
    return {
        "flagged": len(positions),
        "flagged_precision": round(hits / max(1, len(positions)), 4),
        "flagged_recall": round(hits / len(flipped), 4),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.linspace(0, 100, 101)[1:]
    for name, scores in results["methods"].items():
        if name.endswith("/" + results["ranking"]):  # one ranking per classifier; with two labels all coincide
            ax.plot(x, np.asarray(scores["curve"]) * 100, label=name)
    ax.plot(x, np.minimum(x / (results["noise"] * 100), 1) * 100, "k:", label="perfect")
    ax.plot(x, x, color="grey", linestyle="--", label="random")
    ax.axvline(5, color="red", linewidth=0.6)
    ax.set_xlim(0, 30)
    ax.set_xlabel("% of rows inspected, most suspicious first")
    ax.set_ylabel("% of flipped rows found")
    name = Path(results["data"]).parent.name
    ax.set_title(f"{name} train, {results['rows']} rows, {results['noise']:.0%} flipped ({results['features']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, help="seeded subsample of this many rows (default: all)")
    parser.add_argument("--noise", type=float, default=0.05, help="share of labels flipped (default: 0.05)")
    parser.add_argument("--flip-seed", type=int, default=0, help="seed of the subsample and the flips")
    parser.add_argument("--seed", type=int, default=0, help="seed of the audit's folds")
    parser.add_argument("--model", help="run or model folder whose encoder gives the embeddings")
    parser.add_argument("--encoder", default="minilm", help="pretrained encoder when no --model (default: minilm)")
    parser.add_argument("--ranking", default="self_confidence", choices=METHODS, help="the audit's own ranking")
    parser.add_argument("--classifier", default="ensemble", choices=CLASSIFIERS, help="the audit's own classifier")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    from cleanlab.rank import get_label_quality_scores

    from adaptext.audit import AuditSettings, audit_files
    from adaptext.audit.labels import out_of_fold_probabilities

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, flipped = noisy_file(args.data, args.rows, args.noise, args.flip_seed, folder)
        settings = AuditSettings(
            model=args.model, encoder=args.encoder, method=args.ranking, classifier=args.classifier, seed=args.seed
        )
        start = time.perf_counter()
        result = audit_files(path, folder / "audit", settings=settings)
        total = time.perf_counter() - start
        exact = sum(d.kind == "exact" for d in result.duplicates)
        near = len(result.duplicates) - exact
    given = result.targets
    methods, seconds = {}, {}
    for classifier in CLASSIFIERS:
        start = time.perf_counter()
        if classifier == args.classifier:
            probabilities = result.probabilities
        else:  # the same embeddings, folds and seed as the audit, another out-of-fold classifier
            probabilities = out_of_fold_probabilities(
                result.embeddings,
                given,
                len(result.labels),
                folds=result.settings["folds_used"],
                seed=args.seed,
                classifier=classifier,
            )
        seconds[classifier] = round(time.perf_counter() - start, 1)
        accuracy = float(np.mean(np.argmax(probabilities, 1) == given))
        for method in METHODS:
            quality = get_label_quality_scores(given, probabilities, method=method)
            ranking = np.lexsort((np.arange(len(quality)), quality))
            methods[f"{classifier}/{method}"] = recovery(ranking, flipped) | {
                "out_of_fold_accuracy_on_noisy_labels": round(accuracy, 4),
                "out_of_fold_seconds": seconds[classifier],
            }
    own = recovery(result.ranking, flipped)
    # The audit's own ranking is the one recomputed here.
    assert own["curve"] == methods[f"{args.classifier}/{args.ranking}"]["curve"]
    results = {
        "data": str(args.data),
        "rows": result.n_rows,
        "noise": args.noise,
        "flipped": len(flipped),
        "flip_seed": args.flip_seed,
        "features": args.model or args.encoder,
        "ranking": args.ranking,
        "settings": {k: v for k, v in result.settings.items() if k != "files"},
        "flagged": flagged_scores([s.row for s in result.suspects], flipped),
        "classifier": args.classifier,
        "duplicates": {"exact_pairs": exact, "near_pairs": near},
        "seconds": result.seconds | {"total": round(total, 1)},
        "methods": methods,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.output.with_suffix(".png"))
    for method, scores in methods.items():
        shown = ", ".join(f"{f:.0%} {scores[f'recall_top_{round(f * 100)}pct']:.3f}" for f in FRACTIONS)
        print(f"{method:40s} recall at top {shown}; precision@5% {scores['precision_top_5pct']:.3f}")
    print(json.dumps({k: results[k] for k in ("rows", "flagged", "seconds", "duplicates")}))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
