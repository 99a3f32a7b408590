"""Which features the continual router reads: LDA on the frozen encoder's hidden states, one layer or several.

For CLINC150 (in-scope, 150 intents) and BANKING77 (77 intents; a stratified 20% of train.csv, seed 1234, is the test
set, as in bench/continual.py), the bundled MiniLM embeds every text once, keeping the mean over the unpadded tokens
of each hidden state (0: the embedding layer, 6: the last). Linear discriminant analysis over all intents
(`adaptext.modeling.lda.ClassStatistics`, the statistics `slda` and the `adapters` router keep) is then fitted on a
set of layers, concatenated, for each shrinkage, and scored on the test texts; then, on every layer, fitted on 8, 20
and 50 examples per class and on all, for fixed shrinkages and the data-driven OAS one. This is the final head of a
class-incremental run of either method (its statistics add up exactly, so the order of tasks does not matter).

With `--routed RUN` (a finished `adaptext continual` plan with `continual.method: adapters` on CLINC150), the
experts of its model score the test texts, and the ways of combining router and experts are compared: the router
alone, each expert weighed by its task's router probability (mixture), and the router's route probability times the
expert's (product, what `RoutedClassifier` does).

    python bench/router_features.py
    python bench/router_features.py --routed /tmp/adaptext-continual/clinc150-adapters-o0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import log_softmax, logsumexp
from transformers import AutoModel, AutoTokenizer

from adaptext.continual import ContinualPlan, load_plan
from adaptext.continual.metrics import summarise
from adaptext.core.config import DataConfig
from adaptext.data.io import load_examples, read_table
from adaptext.data.splits import load_splits, stratified_split
from adaptext.inference.predictor import Predictor
from adaptext.modeling.hub import resolve_model_name
from adaptext.modeling.lda import (
    SHRINKAGES as CV_CANDIDATES,
)
from adaptext.modeling.lda import (
    ClassStatistics,
    best_shrinkage,
    held_out_correct,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "router_features.json"
SPLIT_SEED = 1234
LAYER_SETS = {"last": [6], "5": [5], "5-6": [5, 6], "4-6": [4, 5, 6], "3-6": [3, 4, 5, 6], "all (0-6)": list(range(7))}
SHRINKAGES = (0.01, 0.1, 0.3)
SIZE_SHRINKAGES: tuple[float | str, ...] = (1e-4, 1e-3, 0.01, 0.1, "oas", "cv")  # every layer, per-class sample sizes
INCREMENTAL_TOP_K = (1, 2)  # --incremental: the experts that score each text
# --incremental's router shrinkages: fixed values, OAS, and cross-validated at each task on its own examples (cv) or on
# every task's so far (cv-sum: each task's held-out counts added up)
INCREMENTAL_SHRINKAGES: tuple[float | str, ...] = (1e-4, 1e-3, 0.01, 0.1, "oas", "cv", "cv-sum")
SIZES = (8, 20, 50, 0)  # examples per class drawn from the training texts (seed 0); 0: all of them


def load(name: str, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if name == "banking77":
        path = root / "banking77" / "train.csv"
        frame = read_table(path)
        kept, held = stratified_split(load_examples(path, DataConfig()), 0.2, seed=SPLIT_SEED)
        return frame.iloc[kept], frame.iloc[held]
    train, test = read_table(root / name / "train.csv"), read_table(root / name / "test.csv")
    return train[train["label"] != "oos"], test[test["label"] != "oos"]


@torch.inference_mode()
def hidden_means(texts: list[str], max_length: int = 64, batch_size: int = 128) -> np.ndarray:
    """(texts, hidden states, width): the masked mean of every hidden state of the bundled model."""
    path = resolve_model_name("minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    order = np.argsort([-len(t) for t in texts])
    out: np.ndarray | None = None
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        states = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        means = torch.stack([(h * mask).sum(1) / mask.sum(1) for h in states], 1).numpy()
        if out is None:
            out = np.zeros((len(texts), *means.shape[1:]), dtype=np.float32)
        out[idx] = means
        print(f"\r  embedded {min(start + batch_size, len(texts))}/{len(texts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    assert out is not None
    return out


def lda_scores(
    train: np.ndarray, targets: np.ndarray, test: np.ndarray, classes: int, shrinkage: float | str
) -> np.ndarray:
    stats = ClassStatistics.empty(classes, train.shape[1]).update(train, targets, classes)
    if shrinkage == "cv":
        shrinkage = best_shrinkage(held_out_correct(stats, train, targets))
        print(f"  cross-validated shrinkage: {shrinkage}", file=sys.stderr, flush=True)
    weights, bias = stats.head(oas_shrinkage(stats) if shrinkage == "oas" else float(shrinkage))
    return test.astype(np.float64) @ weights.T + bias


def oas_shrinkage(stats: ClassStatistics) -> float:
    """The oracle approximating shrinkage (Chen et al., 2010) of the pooled within-class covariance, from the
    running statistics alone: the data-driven choice the fixed values are compared with."""
    means = stats.sums / stats.counts[:, None]
    n = stats.counts.sum() - len(stats.counts)
    covariance = (stats.gram - (means * stats.counts[:, None]).T @ means) / n
    dim = covariance.shape[0]
    trace, trace_sq = np.trace(covariance), np.sum(covariance * covariance)
    numerator = (1 - 2 / dim) * trace_sq + trace**2
    return float(min(1.0, numerator / ((n + 1 - 2 / dim) * (trace_sq - trace**2 / dim))))


def by_size(
    name: str, x_train: np.ndarray, targets: np.ndarray, x_test: np.ndarray, truth: np.ndarray, classes: int
) -> list[dict[str, Any]]:
    """Every layer's features, LDA fitted on a per-class sample of each size, for each shrinkage."""
    rows = []
    for size in SIZES:
        rng = np.random.default_rng(0)
        keep = np.arange(len(targets))
        if size:
            keep = np.concatenate(
                [
                    rng.choice(np.flatnonzero(targets == c), min(size, int((targets == c).sum())), replace=False)
                    for c in range(classes)
                ]
            )
        row: dict[str, Any] = {"dataset": name, "per class": size or "all", "texts": len(keep)}
        for shrinkage in SIZE_SHRINKAGES:
            scores = lda_scores(x_train[keep], targets[keep], x_test, classes, shrinkage)
            row[f"shrinkage {shrinkage}"] = round(100 * float(np.mean(scores.argmax(1) == truth)), 2)
        rows.append(row)
        print(row, flush=True)
    return rows


def combinations(
    run: Path, x_train: np.ndarray, y_train: list[str], x_test: np.ndarray, test: pd.DataFrame
) -> list[dict[str, Any]]:
    """Router alone, mixture and product on the routed run's experts (labels in the run's expert order)."""
    info = json.loads((run / "model" / "adaptext.json").read_text(encoding="utf-8"))
    experts = info["routed"]["experts"]
    labels, task_of, log_expert = [], [], []
    for t, expert in enumerate(experts):
        predictor = Predictor.from_dir(run / "model" / expert["path"])
        labels += predictor.labels
        task_of += [t] * len(predictor.labels)
        log_expert.append(np.log(np.clip(predictor.predict_proba(test["text"].tolist()), 1e-12, 1.0)))
        print(f"\r  expert {t + 1}/{len(experts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    index = {name: i for i, name in enumerate(labels)}
    targets, truth = np.array([index[y] for y in y_train]), np.array([index[y] for y in test["label"]])
    tasks, owner = len(experts), np.array(task_of)
    log_e = np.concatenate(log_expert, 1)
    rows = []
    for shrinkage in (info["routed"]["shrinkage"],):
        routes = log_softmax(lda_scores(x_train, targets, x_test, len(labels), shrinkage), axis=1)
        log_task = np.stack([logsumexp(routes[:, owner == t], 1) for t in range(tasks)], 1)
        row: dict[str, Any] = {"shrinkage": shrinkage, "router alone": np.mean(routes.argmax(1) == truth)}
        for k in (1, 2, tasks):
            top = np.argsort(-log_task, 1)[:, :k]
            mask = np.full_like(log_task, -np.inf)
            np.put_along_axis(mask, top, 0.0, 1)
            chosen = log_task + mask
            chosen -= logsumexp(chosen, 1, keepdims=True)
            row[f"mixture top {k}"] = np.mean((chosen[:, owner] + log_e).argmax(1) == truth)
            row[f"product top {k}"] = np.mean((routes + log_e + mask[:, owner]).argmax(1) == truth)
        rows.append({k: round(100 * v, 2) if k != "shrinkage" else v for k, v in row.items()})
    return rows


def trained_on(plan: ContinualPlan, index: int) -> pd.DataFrame:
    """The texts and labels task `index` of `plan` trained on: its training file less the validation split a run
    carves from it when the task has no validation file (the task's config, as `run_plan` builds it)."""
    train = load_splits(plan.task_config(index, plan.output_dir)).train
    return pd.DataFrame({"text": train.texts, "label": train.labels})


def incremental(
    run: Path,
    top_ks: tuple[int, ...],
    shrinkages: tuple[float | str, ...],
    cache: dict[str, np.ndarray],
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """The accuracy matrix of a finished `adapters` plan, recomputed for other router settings.

    The plan's own experts score every task's test texts once; then, task by task, the router's statistics grow by
    the task's training texts (those the run trained on, `trained_on`) and the router + expert product
    (`RoutedClassifier`'s rule) is scored on every task seen, for each shrinkage and `top_k`. Row `shrinkage 0.01,
    top 2` is what the run itself did: its backward transfer is printed beside the run's own for the check."""
    plan = load_plan(run.with_suffix(".yaml"))
    untested = [task.name for task in plan.tasks if task.test is None]
    if untested:
        raise SystemExit(f"{run.with_suffix('.yaml')}: tasks without a test file: {', '.join(untested)}")
    tasks = [(trained_on(plan, i), read_table(Path(str(task.test)))) for i, task in enumerate(plan.tasks)]
    info = json.loads((run / "model" / "adaptext.json").read_text(encoding="utf-8"))
    missing = sorted({text for train, test in tasks for text in [*train["text"], *test["text"]]} - cache.keys())
    if missing:
        cache.update(zip(missing, hidden_means(missing).reshape(len(missing), -1), strict=True))
        if cache_dir is not None:
            np.save(cache_dir / "features.npy", np.stack(list(cache.values())))
            (cache_dir / "texts.json").write_text(json.dumps(list(cache)), encoding="utf-8")
    labels: list[str] = []
    log_experts = []  # per task: (all test texts, the task's labels) log-probabilities of its expert
    test_texts = [text for _, test in tasks for text in test["text"]]
    for t, expert in enumerate(info["routed"]["experts"]):
        predictor = Predictor.from_dir(run / "model" / expert["path"])
        labels += predictor.labels
        saved = cache_dir / f"{run.name}-expert{t}.npy" if cache_dir is not None else None
        if saved is not None and saved.is_file():
            log_experts.append(np.load(saved))
        else:
            log_experts.append(np.log(np.clip(predictor.predict_proba(test_texts), 1e-12, 1.0)))
            if saved is not None:
                np.save(saved, log_experts[-1])
        print(f"\r  {run.name}: expert {t + 1}/{len(tasks)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    index = {name: i for i, name in enumerate(labels)}
    owner = np.concatenate([np.full(e.shape[1], t) for t, e in enumerate(log_experts)])
    log_e = np.concatenate(log_experts, 1)
    x_test = np.stack([cache[text] for text in test_texts])
    truth = np.array([index[y] for _, test in tasks for y in test["label"]])
    test_task = np.concatenate([np.full(len(test), t) for t, (_, test) in enumerate(tasks)])
    recorded = json.loads((run / "continual_metrics.json").read_text(encoding="utf-8"))
    rows = []
    for shrinkage in shrinkages:
        matrices: dict[int, list[list[float | None]]] = {k: [] for k in top_ks}
        final: dict[int, float] = {}
        chosen: list[float] = []  # the shrinkage of each task's head
        tally = np.zeros(len(CV_CANDIDATES))  # cv-sum: held-out examples right per candidate, summed over tasks
        stats = ClassStatistics.empty(0, x_test.shape[1])
        for i, (train, _) in enumerate(tasks):
            x = np.stack([cache[text] for text in train["text"]])
            targets = np.array([index[y] for y in train["label"]])
            stats = stats.update(x, targets, int((owner <= i).sum()))
            if shrinkage in ("cv", "cv-sum"):
                counts = held_out_correct(stats, x, targets)
                tally = counts if shrinkage == "cv" else tally + counts
                chosen.append(best_shrinkage(tally))
            else:
                chosen.append(oas_shrinkage(stats) if shrinkage == "oas" else float(shrinkage))
            weights, bias = stats.head(chosen[-1])
            seen = test_task <= i
            routes = log_softmax(x_test[seen].astype(np.float64) @ weights.T + bias, axis=1)
            own = owner[owner <= i]
            log_task = np.stack([logsumexp(routes[:, own == t], 1) for t in range(i + 1)], 1)
            for k in top_ks:
                top = np.argsort(-log_task, 1)[:, : min(k, i + 1)]
                mask = np.full_like(log_task, -np.inf)
                np.put_along_axis(mask, top, 0.0, 1)
                hit = (routes + log_e[seen][:, owner <= i] + mask[:, own]).argmax(1) == truth[seen]
                row = [float(np.mean(hit[test_task[seen] == j])) for j in range(i + 1)]
                matrices[k].append(row + [None] * (len(tasks) - i - 1))
                final[k] = float(np.mean(hit))  # over every test text once the last task is in
        for k, matrix in matrices.items():
            summary = summarise(matrix)
            rows.append(
                {
                    "run": run.name,
                    "shrinkage": shrinkage,
                    "top_k": k,
                    "final accuracy": round(100 * final[k], 2),
                    "average accuracy": round(100 * summary["average_accuracy"], 2),
                    "backward transfer": round(100 * summary["backward_transfer"], 2),
                    "run's own backward transfer": round(100 * recorded["backward_transfer"], 2),
                    "run's own final accuracy": round(100 * recorded["final_accuracy"], 2),
                    "shrinkage by task": [float(f"{a:.3g}") for a in chosen],
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["clinc150", "banking77"])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--routed", type=Path, default=None, help="a finished CLINC150 adapters plan (its run folder)")
    parser.add_argument(
        "--incremental",
        type=Path,
        nargs="+",
        default=None,
        help="finished adapters plans (run folders, each beside its plan RUN.yaml): recompute their accuracy matrices "
        "for other router settings, instead of the tables above",
    )
    parser.add_argument(
        "--shrinkages",
        nargs="+",
        type=lambda v: v if v in ("oas", "cv", "cv-sum") else float(v),
        default=None,
        help="--incremental: the router shrinkages to compare (numbers, oas, cv, cv-sum)",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="--incremental: a folder keeping features and expert outputs"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table-only", action="store_true", help="print the tables of --results and stop")
    args = parser.parse_args()
    if args.table_only:
        print_tables(json.loads(args.results.read_text(encoding="utf-8")))
        return
    torch.manual_seed(0)
    if args.incremental:
        cache: dict[str, np.ndarray] = {}
        if args.cache is not None:
            args.cache.mkdir(parents=True, exist_ok=True)
            if (args.cache / "texts.json").is_file():
                texts = json.loads((args.cache / "texts.json").read_text(encoding="utf-8"))
                cache.update(zip(texts, np.load(args.cache / "features.npy"), strict=True))
        shrinkages = args.shrinkages or INCREMENTAL_SHRINKAGES
        rows = [
            row
            for run in args.incremental
            for row in incremental(run, INCREMENTAL_TOP_K, shrinkages, cache, args.cache)
        ]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"incremental": rows}, indent=1) + "\n", encoding="utf-8")
        print(pd.DataFrame(rows).to_markdown(index=False))
        return
    results: dict[str, Any] = {"layers": [], "sizes": [], "combinations": []}
    for name in args.datasets:
        train, test = load(name, args.data_root)
        print(f"== {name}: {len(train)} train, {len(test)} test texts", file=sys.stderr, flush=True)
        x_train, x_test = hidden_means(train["text"].tolist()), hidden_means(test["text"].tolist())
        labels = sorted(set(train["label"]))
        index = {label: i for i, label in enumerate(labels)}
        targets, truth = np.array([index[y] for y in train["label"]]), np.array([index[y] for y in test["label"]])
        for layers_name, layers in LAYER_SETS.items():
            row: dict[str, Any] = {"dataset": name, "layers": layers_name, "features": len(layers) * x_train.shape[2]}
            flat_train, flat_test = (
                x_train[:, layers].reshape(len(x_train), -1),
                x_test[:, layers].reshape(len(x_test), -1),
            )
            for shrinkage in SHRINKAGES:
                scores = lda_scores(flat_train, targets, flat_test, len(labels), shrinkage)
                row[f"shrinkage {shrinkage}"] = round(100 * float(np.mean(scores.argmax(1) == truth)), 2)
            results["layers"].append(row)
            print(row, flush=True)
        every = list(range(x_train.shape[1]))
        flat_train, flat_test = x_train[:, every].reshape(len(x_train), -1), x_test[:, every].reshape(len(x_test), -1)
        results["sizes"] += by_size(name, flat_train, targets, flat_test, truth, len(labels))
        if name == "clinc150" and args.routed is not None:
            results["combinations"] = combinations(args.routed, flat_train, train["label"].tolist(), flat_test, test)
            print(results["combinations"], flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print_tables(results)


def print_tables(results: dict[str, Any]) -> None:
    print(pd.DataFrame(results["layers"]).to_markdown(index=False))
    if results.get("sizes"):
        print(pd.DataFrame(results["sizes"]).to_markdown(index=False))
    if results["combinations"]:
        print(pd.DataFrame(results["combinations"]).to_markdown(index=False))


if __name__ == "__main__":
    main()
