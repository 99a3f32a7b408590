"""Faithfulness and time of each attribution method on SST-2 and BANKING77 (issue 15).

    python bench/explain.py                            # trains both models (cached in --work), explains 200 texts each
    python bench/explain.py --texts 50 --datasets sst2 # a smaller run
    python bench/explain.py --ig-steps 16 --shap-evals 256 --output bench/results/explain-variants.json

The models are what a user gets from `adaptext train` with the bundled model and these settings (nothing tuned
for explanation): SST-2 fine-tuned on 8,000 training sentences (seed 0) for one epoch; BANKING77 on a stratified 80%
of its training file (seed 0, as bench/accuracy.py) for three epochs. The explained texts are 200 SST-2 dev
sentences and 200 BANKING77 held-out queries (seeded draws), the label explained is the predicted one.

For every method: comprehensiveness and sufficiency (DeYoung et al., 2020; top 1/5/10/20/50% of words) next to
random attributions drawn for the same texts, seconds per text (texts under 64 tokens; all methods batched as
`adaptext explain` runs them), and the agreement between methods. Results: bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results" / "explain.json"


def prepare(dataset: str, data_root: Path, work: Path) -> tuple[Path, Path]:
    """Train (once, cached in `work`) the dataset's model; return its run folder and the held-out file."""
    import pandas as pd

    from adaptext.core.config import DataConfig, load_config
    from adaptext.data.io import load_examples
    from adaptext.data.splits import stratified_split
    from adaptext.strategies import train

    folder = work / dataset
    folder.mkdir(parents=True, exist_ok=True)
    if dataset == "sst2":
        frame = pd.read_csv(data_root / "sst2" / "train.csv", keep_default_na=False).sample(n=8000, random_state=0)
        heldout = data_root / "sst2" / "dev.csv"
        overrides = ["train.epochs=1"]
    else:
        source = data_root / "banking77" / "train.csv"
        kept, held = stratified_split(load_examples(source, DataConfig()), 0.2, seed=0)
        full = pd.read_csv(source, keep_default_na=False)
        frame = full.iloc[kept]
        heldout = folder / "heldout.csv"
        full.iloc[held].to_csv(heldout, index=False)
        overrides = ["train.epochs=3"]
    run = folder / "run"
    if not (run / "model" / "config.json").is_file():
        frame.to_csv(folder / "train.csv", index=False)
        config = load_config(
            None,
            [
                "model.name=minilm",
                f"data.train={folder / 'train.csv'}",
                f"data.validation={heldout}",
                "data.max_length=64",
                f"output_dir={run}",
                "seed=0",
                "train.report_errors=0",
                *overrides,
            ],
        )
        print(f"[{dataset}] training the model to explain into {run}", file=sys.stderr)
        train(config, overwrite=True)
    return run, heldout


def measure(dataset: str, run: Path, heldout: Path, n_texts: int, methods: list[str], seed: int) -> dict[str, Any]:
    import pandas as pd

    from adaptext.explain.explainer import explain_texts, faithfulness_summary
    from adaptext.inference.predictor import Predictor

    predictor = Predictor.from_dir(run)
    frame = pd.read_csv(heldout, keep_default_na=False)
    lengths = [len(predictor.tokenizer(t)["input_ids"]) for t in frame.text]
    short = frame[[n < 64 for n in lengths]]
    texts = short.sample(n=min(n_texts, len(short)), random_state=seed).text.tolist()
    explain_texts(predictor, texts[:4], methods=methods)  # warm-up: first-call costs (shap's numba) are not per text
    started = time.perf_counter()
    result = explain_texts(predictor, texts, methods=methods, progress=True)
    explain_seconds = time.perf_counter() - started
    summary = faithfulness_summary(predictor, texts, result, seed=seed)
    accuracy = float((predictor.predict_proba(short.text.tolist()).argmax(1) == [
        predictor.labels.index(label) for label in short.label
    ]).mean())  # fmt: skip
    return {
        "dataset": dataset,
        "run": str(run),
        "texts": len(texts),
        "heldout_accuracy": accuracy,
        "explain_seconds": explain_seconds,
        "mean_words": sum(len(e.tokens) for e in next(iter(result.explanations.values()))) / len(texts),
    } | summary


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | method | comprehensiveness (× random) | sufficiency (× random) | s / text |",
        "|---|---|---:|---:|---:|",
    ]
    for result in results:
        random = result["random"]
        lines.append(
            f"| {result['dataset']} | random | {random['comprehensiveness']:.3f} | {random['sufficiency']:.3f} | |"
        )
        for name, m in result["methods"].items():
            comprehensiveness = f"{m['comprehensiveness']:.3f} ({m['comprehensiveness_vs_random']:.2f}×)"
            sufficiency = f"{m['sufficiency']:.3f} ({m['sufficiency_vs_random']:.2f}×)"
            lines.append(
                f"| {result['dataset']} | {name} | {comprehensiveness} | {sufficiency} | {m['seconds_per_text']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sst2", "banking77"], choices=["sst2", "banking77"])
    parser.add_argument("--methods", nargs="+", default=["ig", "occlusion", "shap"])
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-explain"), help="model cache")
    parser.add_argument("--ig-steps", type=int, help="integrated gradients' steps (default: adaptext's)")
    parser.add_argument("--shap-evals", type=int, help="SHAP's model evaluations per text (default: adaptext's)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from adaptext.explain.methods import EXPLAINERS, IntegratedGradients, Shap

    # A variant replaces the registered method for this process only, as a plug-in would.
    if args.ig_steps is not None:
        EXPLAINERS.add("ig", IntegratedGradients(steps=args.ig_steps), replace=True)
    if args.shap_evals is not None:
        EXPLAINERS.add("shap", Shap(max_evals=args.shap_evals), replace=True)

    results = []
    for dataset in args.datasets:
        run, heldout = prepare(dataset, args.data_root, args.work)
        results.append(measure(dataset, run, heldout, args.texts, args.methods, args.seed))
        print(table(results[-1:]), flush=True)
    record = {
        "command": "python bench/explain.py " + " ".join(sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "ig_steps": getattr(EXPLAINERS.get("ig"), "steps", None),
        "shap_evals": getattr(EXPLAINERS.get("shap"), "max_evals", None),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
