"""Learning from fewer labels (issue 16): domain-adaptive pre-training, active learning and self-training.

    python bench/label_efficiency.py --part domain          # pretraining methods, then few-shot / fine-tuning
    python bench/label_efficiency.py --part active          # bench/label_efficiency_active.py
    python bench/label_efficiency.py --part self_training   # bench/label_efficiency_self_training.py

Part `domain`, for each data set (Financial PhraseBank, BANKING77, SST-2; pools and evaluation sets exactly as
bench/fewshot.py draws them, evaluation cut to --eval-size by a stratified draw):
1. The pool's texts with their labels dropped (at most --pretrain-texts, a seeded draw) continue MiniLM's
   pre-training with `adaptext pretrain` by each of --methods, defaults otherwise (one epoch); its seconds and
   held-out loss before and after are recorded.
2. Method choice (cheap, every method): the frozen encoder's mean-pooled embeddings of 16 examples per class with
   a logistic-regression head, on --seeds draws, for the bundled model and each adapted one.
3. The issue's measure, for the bundled model and the adapted model of --full-methods: `strategy: fewshot` on 16
   per class and `strategy: finetune` on 500 examples (stratified draw), all defaults, on the same --seeds draws;
   the paired differences (adapted minus bundled) with their standard deviation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fewshot import DEFAULT_DATA, prepare_dataset, write_sample

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("domain", "active", "self_training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["financial_phrasebank", "banking77", "sst2"])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-label-efficiency"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=["simcse", "tsdae", "mlm"])
    parser.add_argument("--full-methods", nargs="*", default=None, help="default: pretrain.method auto's choice")
    parser.add_argument("--full", nargs="*", default=["fewshot16", "finetune500"])
    parser.add_argument("--pretrain-texts", type=int, default=10000)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def pretrain_run(name: str, info: dict[str, Any], method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Continue MiniLM's pre-training on the pool's texts by `method` (reused when its run folder is complete)."""
    from adaptext.core.config import load_config
    from adaptext.data.io import read_table, write_table
    from adaptext.pretraining.run import PRETRAIN_JSON, pretrain

    folder = args.work / name / f"pretrain-{method}"
    if (folder / PRETRAIN_JSON).is_file():
        return json.loads((folder / PRETRAIN_JSON).read_text()) | {"run": str(folder)}
    texts = args.work / name / "unlabelled.csv"
    if not texts.is_file():
        pool = read_table(info["pool"])[["text"]]
        if len(pool) > args.pretrain_texts:
            pool = pool.sample(n=args.pretrain_texts, random_state=0)
        write_table(pool.reset_index(drop=True), texts)
    config = load_config(
        None,
        [
            f"output_dir={folder}",
            f"data.train={texts}",
            f"data.max_length={args.max_length}",
            f"pretrain.method={method}",
            "tracking.backend=none",
        ],
    )
    start = time.perf_counter()
    result = pretrain(config, overwrite=True)
    record = result.to_dict() | {"wall_seconds": round(time.perf_counter() - start, 1), "run": str(folder)}
    print(
        f"  {name} {method}: held-out loss {result.loss_before:.4f} -> {result.loss_after:.4f}, "
        f"{result.steps} steps, {result.seconds:.0f} s",
        flush=True,
    )
    return record


def frozen_probe(model: str, samples: list[Path], eval_path: Path, max_length: int) -> list[float]:
    """Accuracy of a logistic-regression head on the frozen encoder's mean-pooled embeddings, one per sample."""
    from sklearn.linear_model import LogisticRegression

    from adaptext.core.config import DataConfig
    from adaptext.core.task import SINGLE_LABEL
    from adaptext.data.io import load_examples
    from adaptext.modeling.build import build_model
    from adaptext.modeling.embedding import embed, encode_texts, prepare_encoder
    from adaptext.modeling.hub import load_tokenizer

    tokenizer = load_tokenizer(model)
    evaluation = load_examples(eval_path, DataConfig())
    labels = sorted(set(map(str, evaluation.labels or [])))
    classifier = build_model(model, labels, SINGLE_LABEL)
    prepare_encoder(classifier)  # the mean-pooled embedding few-shot trains

    def vectors(data: Any) -> np.ndarray:
        encoded = encode_texts(tokenizer, data, max_length)
        x = embed(classifier, encoded, pad_token_id=tokenizer.pad_token_id or 0)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x_eval = vectors(evaluation)
    accuracies = []
    for sample in samples:
        data = load_examples(sample, DataConfig())
        head = LogisticRegression(max_iter=2000).fit(vectors(data), list(map(str, data.labels or [])))
        accuracies.append(float(np.mean(head.predict(x_eval) == np.array(list(map(str, evaluation.labels or []))))))
    return accuracies


def train_accuracy(
    model: str, strategy: str, sample: Path, eval_path: Path, seed: int, folder: Path, max_length: int
) -> float:
    """Test accuracy of `strategy` with all defaults, the sample as training (and validation) data."""
    from adaptext.core.config import load_config
    from adaptext.strategies import train

    config = load_config(
        None,
        [
            f"strategy={strategy}",
            f"model.name={model}",
            f"output_dir={folder}",
            f"seed={seed}",
            f"data.max_length={max_length}",
            f"data.train={sample}",
            f"data.validation={sample}",
            f"data.test={eval_path}",
            "tracking.backend=none",
            "train.report_errors=0",
        ],
    )
    result = train(config, overwrite=True)
    assert result.eval_split == "test"
    return float(result.metrics["accuracy"])


def write_total_sample(info: dict[str, Any], name: str, total: int, seed: int, folder: Path) -> Path:
    """A stratified draw of `total` examples from the pool."""
    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples, write_table
    from adaptext.data.splits import stratified_split

    pool = load_examples(info["pool"], DataConfig())
    _, chosen = stratified_split(pool, total / len(pool), seed=seed)
    path = folder / f"{name}-total{total}-s{seed}.csv"
    assert pool.frame is not None
    write_table(pool.frame.iloc[chosen], path)
    return path


def paired(base: list[float], adapted: list[float]) -> dict[str, float]:
    diff = 100 * (np.array(adapted) - np.array(base))
    return {"mean": float(diff.mean()), "std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0}


def run_domain(args: argparse.Namespace) -> dict[str, Any]:
    from adaptext.pretraining.run import AUTO_ENCODER_METHOD

    out_path = RESULTS / "label_efficiency_domain.json"
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    full_methods = args.full_methods if args.full_methods is not None else [AUTO_ENCODER_METHOD]
    for name in args.datasets:
        folder = args.work / name
        folder.mkdir(parents=True, exist_ok=True)
        info = prepare_dataset(name, args.data_root, args.eval_size, folder)
        entry = results.setdefault(name, {"pretrain": {}, "probe16": {}, "fewshot16": {}, "finetune500": {}})
        entry["eval_size"] = info["eval_size"]
        models = {"bundled": "minilm"}
        for method in args.methods:
            record = pretrain_run(name, info, method, args)
            entry["pretrain"][method] = record
            models[method] = record["run"]
        samples16 = [write_sample(info, name, 16, seed, folder)[0] for seed in args.seeds]
        for label, model in models.items():
            if label not in entry["probe16"]:
                entry["probe16"][label] = frozen_probe(model, samples16, info["eval"], args.max_length)
                print(f"  {name} probe16 {label}: {100 * np.mean(entry['probe16'][label]):.2f}", flush=True)
        save(results, out_path, name)
        for kind in args.full:
            strategy = "fewshot" if kind == "fewshot16" else "finetune"
            # seed by seed, each model in turn: a run cut short still leaves paired results
            for seed, sample16 in zip(args.seeds, samples16, strict=True):
                for label in ["bundled", *full_methods]:
                    accuracies = entry[kind].setdefault(label, {})
                    if str(seed) in accuracies:
                        continue
                    sample = sample16 if kind == "fewshot16" else write_total_sample(info, name, 500, seed, folder)
                    accuracies[str(seed)] = train_accuracy(
                        models[label],
                        strategy,
                        sample,
                        info["eval"],
                        seed,
                        folder / f"run-{kind}-{label}",
                        args.max_length,
                    )
                    print(f"  {name} {kind} {label} seed {seed}: {100 * accuracies[str(seed)]:.2f}", flush=True)
                    save(results, out_path, name)
    print(domain_tables(results, args.seeds))
    return results


def save(results: dict[str, Any], path: Path, name: str) -> None:
    """Write data set `name`'s entry into the results file, keeping the other data sets' entries as they are there
    now (runs of different data sets may write the file at the same time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored[name] = results[name]
    results.update(stored)
    path.write_text(json.dumps(stored, indent=1) + "\n")


def domain_tables(results: dict[str, Any], seeds: list[int]) -> str:
    lines = [
        "| data set | method | pretrain s | held-out loss before → after | probe 16/class (mean) | Δ vs bundled |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        base = entry["probe16"].get("bundled")
        if base:
            lines.append(f"| {name} | bundled | – | – | {100 * np.mean(base):.2f} | – |")
        for method, record in entry["pretrain"].items():
            probe = entry["probe16"].get(method)
            if not probe or not base:
                continue
            d = paired(base, probe)
            lines.append(
                f"| {name} | {method} | {record['seconds']:.0f} | "
                f"{record['loss_before']:.4f} → {record['loss_after']:.4f} | {100 * np.mean(probe):.2f} | "
                f"{d['mean']:+.2f} ± {d['std']:.2f} |"
            )
    lines += [
        "",
        "| data set | measure | adapted by | bundled | adapted | paired Δ (mean ± sd) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        for kind in ("fewshot16", "finetune500"):
            base = entry.get(kind, {}).get("bundled", {})
            for label, accuracies in entry.get(kind, {}).items():
                if label == "bundled":
                    continue
                common = [s for s in map(str, seeds) if s in base and s in accuracies]
                if not common:
                    continue
                b, a = [base[s] for s in common], [accuracies[s] for s in common]
                d = paired(b, a)
                lines.append(
                    f"| {name} | {kind} | {label} | {100 * np.mean(b):.2f} | {100 * np.mean(a):.2f} | "
                    f"{d['mean']:+.2f} ± {d['std']:.2f} | {len(common)} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, required=True)
    known, _ = parser.parse_known_args()
    if known.part == "domain":
        add_arguments(parser)
        args = parser.parse_args()
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run_domain(args)
        return
    module = __import__(f"label_efficiency_{known.part}")
    module.add_arguments(parser)
    args = parser.parse_args()
    module.run(args)


if __name__ == "__main__":
    main()
