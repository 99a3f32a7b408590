"""Text-pair ranking on BANKING77: a fine-tuned cross-encoder against the untuned sentence-embedding similarity.

    python bench/rank.py                      # every training-pool text a query x 5 pairs, 4 test queries per intent
    python bench/rank.py --table-only         # the table of bench/results/rank.json

The pair task: every BANKING77 text is a query or an item; an item is relevant to a query when both have the same
intent. Each intent's texts are split (seed 0) into a training pool (75%) and a test pool (25%); training pairs use
only training-pool texts, test queries and their candidate items only test-pool texts, so no test text is seen in
training. Hard negatives come from the intents nearest to the query's own (cosine of intent centroids of the
untuned MiniLM's mean-pooled embeddings over the training pool).

- Test: `--test-queries` queries per intent; each gets `--positives` other texts of its intent (relevant) and
  `--hard` texts of its 3 nearest intents plus `--easy` texts of random other intents (not relevant), in a random
  order. Both methods score exactly these candidates.
- Training: `--train-queries` queries from the training pool, each paired with 2 texts of its intent (label 1), 2 of
  its nearest intents and 1 of a random other intent (label 0). `adaptext train` fine-tunes the bundled MiniLM on
  the pairs (`data.text_pair_column`) with the product's defaults (epochs, learning rate, pooling, early best
  checkpoint on validation macro-F1 of a 10% stratified split).
- Baseline: the untuned bundled MiniLM's mean-pooled embeddings, cosine of query and item.

NDCG@10, MRR and recall@10 are per query, averaged (`adaptext.evaluation.ranking`); the cross-encoder's pair score is
the probability of label `1` (`adaptext.inference.scoring`). Results go to bench/results/rank.json.
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

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "banking77" / "train.csv"
RESULTS = ROOT / "bench" / "results" / "rank.json"
NEAREST_INTENTS = 3


def adaptext(*args: str) -> float:
    """Run one `adaptext` command with this interpreter; returns its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adaptext", "-q", *args], check=True)
    return time.perf_counter() - start


def embed_untuned(texts: list[str], batch_size: int = 128) -> np.ndarray:
    """L2-normalised mean-pooled embeddings of the bundled MiniLM, untouched (n, 384)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from adaptext.modeling.hub import resolve_model_name

    path = resolve_model_name("minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")  # fmt: skip
            states = model(**batch).last_hidden_state  # (batch, seq, hidden)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start : start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def build_task(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write train.csv (pairs) and test.csv (query_id, item_id, pairs, label); return the texts' embeddings too."""
    rng = np.random.default_rng(0)
    frame = pd.read_csv(DATA, keep_default_na=False)
    texts, intents = frame["text"].tolist(), frame["label"].tolist()
    by_intent: dict[str, list[int]] = {}
    for i, intent in enumerate(intents):
        by_intent.setdefault(intent, []).append(i)
    train_pool: dict[str, list[int]] = {}
    test_pool: dict[str, list[int]] = {}
    for intent, rows in sorted(by_intent.items()):
        rows = list(rng.permutation(rows))
        cut = len(rows) // 4
        test_pool[intent], train_pool[intent] = [int(r) for r in rows[:cut]], [int(r) for r in rows[cut:]]
    start = time.perf_counter()
    embeddings = embed_untuned(texts)
    embed_seconds = time.perf_counter() - start
    names = sorted(by_intent)
    centroids = np.stack([embeddings[train_pool[name]].mean(axis=0) for name in names])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    similarity = centroids @ centroids.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = {name: [names[j] for j in np.argsort(-similarity[i])[:NEAREST_INTENTS]] for i, name in enumerate(names)}

    def draw(pool: dict[str, list[int]], intents_from: list[str], n: int, exclude: set[int]) -> list[int]:
        candidates = [r for name in intents_from for r in pool[name] if r not in exclude]
        return [int(r) for r in rng.choice(candidates, size=min(n, len(candidates)), replace=False)]

    def others(name: str) -> list[str]:
        return [other for other in names if other != name]

    test_rows = []
    for name in names:
        queries = draw(test_pool, [name], args.test_queries, set())
        for q in queries:
            relevant = draw(test_pool, [name], args.positives, {q})
            hard = draw(test_pool, nearest[name], args.hard, set())
            easy = draw(test_pool, [o for o in others(name) if o not in nearest[name]], args.easy, set())
            items = [(r, 1) for r in relevant] + [(r, 0) for r in hard + easy]
            for k in rng.permutation(len(items)):
                item, label = items[int(k)]
                test_rows.append({"query_id": f"q{q}", "item_id": f"i{item}", "query": texts[q], "item": texts[item],
                                  "label": label})  # fmt: skip
    train_rows = []
    pool = [r for name in names for r in train_pool[name]]
    size = len(pool) if args.train_queries == "all" else args.train_queries
    queries = rng.choice(pool, size=size, replace=False)
    for q in (int(r) for r in queries):
        name = intents[q]
        items = [(r, 1) for r in draw(train_pool, [name], 2, {q})]
        items += [(r, 0) for r in draw(train_pool, nearest[name], 2, set())]
        items += [(r, 0) for r in draw(train_pool, [o for o in others(name) if o not in nearest[name]], 1, set())]
        train_rows += [{"query": texts[q], "item": texts[r], "label": label} for r, label in items]
    work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train_rows).to_csv(work / "train.csv", index=False)
    test = pd.DataFrame(test_rows)
    test.to_csv(work / "test.csv", index=False)
    test_rows_used = set(test["query_id"].str[1:].astype(int)) | set(test["item_id"].str[1:].astype(int))
    train_texts = {row["query"] for row in train_rows} | {row["item"] for row in train_rows}
    leaked = sum(texts[i] in train_texts for i in test_rows_used)  # exact duplicate texts across the pools
    return {
        "embeddings": embeddings,
        "test": test,
        "train_pairs": len(train_rows),
        "test_pairs": len(test),
        "test_queries": int(test["query_id"].nunique()),
        "test_texts_in_training": leaked,
        "embed_seconds": round(embed_seconds, 1),
    }


def setting(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("train_queries", "test_queries", "positives", "hard", "easy")
    return {key: getattr(args, key) for key in keys}


def table(results: dict[str, Any]) -> str:
    """Markdown: NDCG@10, MRR and recall@10 of each method, and the fine-tuned model's gain."""
    rows = results.get("methods", {})
    lines = ["| method | NDCG@10 | MRR | recall@10 | seconds |", "|---|---:|---:|---:|---:|"]
    for name, cell in rows.items():
        lines.append(
            f"| {name} | {100 * cell['ndcg@10']:.1f} | {100 * cell['mrr']:.1f} | {100 * cell['recall@10']:.1f} | "
            f"{cell.get('seconds', 0):.0f} |"
        )
    if len(rows) == 2:
        base, tuned = rows["untuned embedding cosine"], rows["fine-tuned cross-encoder"]
        lines.append(f"\nNDCG@10 gain: {100 * (tuned['ndcg@10'] - base['ndcg@10']):+.1f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--train-queries",
        type=lambda value: value if value == "all" else int(value),
        default="all",
        help="training queries (5 pairs each); all (the default): every training-pool text is a query once",
    )
    parser.add_argument("--test-queries", type=int, default=4, help="test queries per intent")
    parser.add_argument("--positives", type=int, default=5, help="relevant candidates per test query")
    parser.add_argument("--hard", type=int, default=10, help="candidates from the 3 nearest intents per test query")
    parser.add_argument("--easy", type=int, default=5, help="candidates from other intents per test query")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-rank"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default bench/results/rank.json)")
    args = parser.parse_args()
    if args.table_only:
        print(table(json.loads(args.out.read_text(encoding="utf-8"))))
        return

    from adaptext.evaluation.ranking import ranking_metrics
    from adaptext.inference.predictor import Predictor
    from adaptext.inference.scoring import pair_scores, pair_scoring

    task = build_task(args, args.work / "data")
    test = task["test"]
    print(f"{task['train_pairs']} training pairs, {task['test_pairs']} test pairs over {task['test_queries']} queries; "
          f"{task['test_texts_in_training']} test texts also in training", flush=True)  # fmt: skip
    embeddings = task["embeddings"]
    q_index = test["query_id"].str[1:].astype(int).to_numpy()
    i_index = test["item_id"].str[1:].astype(int).to_numpy()
    relevance = test["label"].to_numpy(dtype=float)
    groups = test["query_id"].tolist()
    cosine = (embeddings[q_index] * embeddings[i_index]).sum(axis=1)
    described = {key: value for key, value in task.items() if key not in ("embeddings", "test")}
    results: dict[str, Any] = {"setting": setting(args), "task": described}
    results["methods"] = {"untuned embedding cosine": ranking_metrics(cosine, relevance, groups, k=10)}
    results["methods"]["untuned embedding cosine"]["seconds"] = task["embed_seconds"]

    run = args.work / "run"
    config = args.work / "rank.yaml"
    config.write_text(
        f"output_dir: {run}\nseed: 0\nmodel:\n  name: minilm\ndata:\n  train: {args.work / 'data' / 'train.csv'}\n"
        "  text_column: query\n  text_pair_column: item\n  label_column: label\ntrain:\n  report_errors: 0\n",
        encoding="utf-8",
    )
    wall = adaptext("train", str(config), "--overwrite")
    stats = json.loads((run / "run_stats.json").read_text(encoding="utf-8"))
    predictor = Predictor.from_dir(run)
    scoring = pair_scoring(predictor)
    start = time.perf_counter()
    scores = pair_scores(predictor, test["query"].tolist(), test["item"].tolist(), scoring)
    score_seconds = time.perf_counter() - start
    tuned = ranking_metrics(scores, relevance, groups, k=10)
    tuned |= {"seconds": round(stats["train_seconds"] + score_seconds, 1), "train_seconds": stats["train_seconds"],
              "train_wall_seconds": round(wall, 1), "score_seconds": round(score_seconds, 1),
              "scored_by": scoring.describe()}  # fmt: skip
    results["methods"]["fine-tuned cross-encoder"] = tuned
    baseline = results["methods"]["untuned embedding cosine"]
    results["ndcg_gain_points"] = round(100 * (tuned["ndcg@10"] - baseline["ndcg@10"]), 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
