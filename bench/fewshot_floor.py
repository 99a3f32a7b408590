"""Where few-shot stands against the frozen-embedding floor (issue 19): the head's regularisation on the frozen and on
the contrastively trained encoder, and linear probing then fine-tuning (LP-FT, Kumar et al. 2022).

For each data set, N per class and seed, the sample is drawn exactly as `bench/fewshot.py` draws it (same pool, same
evaluation set, `sample_per_class`), and:

  frozen     the bundled MiniLM untouched, mean-pooled (`prepare_encoder`, what few-shot trains from): logistic
             regression fitted on the sample's embeddings for each C in --cs (`fit_head`, which scales the
             embeddings to unit median norm as SetFit's are), scored on the evaluation set; with the
             cross-validated accuracy of the same head on the sample (stratified, min(4, N) folds), the only
             score a true few-shot run could choose C by
  trained    `strategy: fewshot` with the contrastive recipe (`fewshot.encoder: contrastive`, whatever the number of
             labels; validation = the sample, as in bench/fewshot.py), then the same heads on its trained encoder's
             embeddings; `default` is the saved model's own score
  lpft       the frozen head with C = --lpft-c written into the model, then every weight fine-tuned end to end with
             cross-entropy (AdamW, --lpft-lr, 10% warm-up then linear decay, batch 32, bf16 autocast where the CPU
             has it), scored after each epoch in --lpft-report

    python bench/fewshot_floor.py --datasets banking77 sst2 financial_phrasebank --shots 8 --seeds 0
    python bench/fewshot_floor.py --table-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import prepare_dataset, write_sample

from adaptext.core.config import DataConfig, load_config
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.examples import TextData
from adaptext.data.io import load_examples
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import embed, encode_texts, prepare_encoder
from adaptext.modeling.hub import load_tokenizer
from adaptext.strategies import train
from adaptext.strategies.fewshot import fit_head

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fewshot_floor.json"
MAX_LENGTH = 64


def head_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    sample: TextData,
    evaluation: TextData,
    targets: np.ndarray,
    truth: np.ndarray,
) -> dict[str, Any]:
    """For each C: the evaluation accuracy and the sample's cross-validated accuracy of the LR head on `model`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model.eval()
    train_x = embed(model, encode_texts(tokenizer, sample, MAX_LENGTH), pad_token_id=tokenizer.pad_token_id or 0)
    eval_x = embed(model, encode_texts(tokenizer, evaluation, MAX_LENGTH), pad_token_id=tokenizer.pad_token_id or 0)
    scale = float(np.median(np.linalg.norm(train_x, axis=1)))
    train_x, eval_x = train_x / scale, eval_x / scale
    folds = StratifiedKFold(min(4, int(np.bincount(targets).min())), shuffle=True, random_state=0)
    scores = {}
    for c in ARGS.cs:
        head = LogisticRegression(C=c, max_iter=2000).fit(train_x, targets)
        cv = cross_val_score(LogisticRegression(C=c, max_iter=2000), train_x, targets, cv=folds).mean()
        scores[f"C={c:g}"] = {"accuracy": pct(head.predict(eval_x) == truth), "cv": pct(cv)}
    return scores


def accuracy(model: torch.nn.Module, tokenizer: Any, evaluation: TextData, truth: np.ndarray) -> float:
    model.eval()
    logits = logits_of(model, tokenizer, evaluation)
    return pct(logits.argmax(1) == truth)


@torch.inference_mode()
def logits_of(model: torch.nn.Module, tokenizer: Any, data: TextData, batch: int = 128) -> np.ndarray:
    out = []
    for start in range(0, len(data), batch):
        inputs = tokenizer(
            data.texts[start : start + batch], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt"
        )
        out.append(model(**inputs).logits.float().numpy())
    return np.concatenate(out)


def lpft(
    labels: list[str],
    tokenizer: Any,
    sample: TextData,
    evaluation: TextData,
    targets: np.ndarray,
    truth: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """The frozen head, then end-to-end cross-entropy fine-tuning; the evaluation accuracy after the listed epochs."""
    model = build_model("minilm", labels, SINGLE_LABEL)
    prepare_encoder(model)
    model.eval()
    encoded = encode_texts(tokenizer, sample, MAX_LENGTH)
    fit_head(model, embed(model, encoded, pad_token_id=tokenizer.pad_token_id or 0), targets, ARGS.lpft_c, seed)
    record: dict[str, Any] = {"epoch 0": accuracy(model, tokenizer, evaluation, truth)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ARGS.lpft_lr, weight_decay=0.01)
    per_epoch = -(-len(sample) // 32)
    total = per_epoch * max(ARGS.lpft_report)
    warmup = max(1, int(0.1 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (total - s) / total)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for epoch in range(1, max(ARGS.lpft_report) + 1):
        model.train()
        order = rng.permutation(len(sample))
        for begin in range(0, len(sample), 32):
            batch = order[begin : begin + 32]
            inputs = tokenizer(
                [sample.texts[i] for i in batch],
                truncation=True,
                max_length=MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(**inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(targets[batch]))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        if epoch in ARGS.lpft_report:
            record[f"epoch {epoch}"] = accuracy(model, tokenizer, evaluation, truth)
            print(f"  lpft epoch {epoch}: {record[f'epoch {epoch}']}", file=sys.stderr, flush=True)
    record["train_seconds"] = round(time.perf_counter() - start, 1)
    return record


def pct(value: Any) -> float:
    return round(100 * float(np.mean(value)), 2)


def one(name: str, shots: int, seed: int, folder: Path) -> dict[str, Any]:
    info = prepare_dataset(name, ARGS.data_root, ARGS.eval_size, folder)
    path, size, _ = write_sample(info, name, shots, seed, folder)
    sample, evaluation = load_examples(path, DataConfig()), load_examples(Path(info["eval"]), DataConfig())
    labels = info["labels"]
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index[str(y)] for y in sample.labels or []])
    truth = np.array([index[str(y)] for y in evaluation.labels or []])
    tokenizer = load_tokenizer("minilm")
    record: dict[str, Any] = {"dataset": name, "shots": shots, "seed": seed, "examples": size, "eval": len(truth)}
    frozen = build_model("minilm", labels, SINGLE_LABEL)
    prepare_encoder(frozen)
    record["frozen"] = head_scores(frozen, tokenizer, sample, evaluation, targets, truth)
    del frozen
    run = folder / f"run-{name}-{shots}-{seed}"
    overrides = [
        "strategy=fewshot",
        "fewshot.encoder=contrastive",  # the phase this script measures heads after
        "model.name=minilm",
        f"output_dir={run}",
        f"seed={seed}",
        f"data.max_length={MAX_LENGTH}",
        f"data.train={path}",
        f"data.validation={path}",
        f"data.test={info['eval']}",
    ]
    result = train(load_config(None, overrides), overwrite=True)
    trained = Predictor.from_dir(result.model_dir).model
    record["trained"] = {
        "default": pct(result.metrics["accuracy"]),
        "train_seconds": result.stats["train_seconds"],
        **head_scores(trained, tokenizer, sample, evaluation, targets, truth),
    }
    del trained
    record["lpft"] = lpft(labels, tokenizer, sample, evaluation, targets, truth, seed)
    print(json.dumps(record), flush=True)
    return record


def table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        row: dict[str, Any] = {"dataset": r["dataset"], "N": r["shots"], "seed": r["seed"]}
        for c in ARGS.cs:
            key = f"C={c:g}"
            row[f"frozen {key} (cv)"] = f"{r['frozen'][key]['accuracy']} ({r['frozen'][key]['cv']})"
        row["few-shot default"] = r["trained"]["default"]
        for c in ARGS.cs:
            key = f"C={c:g}"
            row[f"trained {key}"] = r["trained"][key]["accuracy"]
        row.update({f"lpft {k}": v for k, v in r["lpft"].items() if k.startswith("epoch")})
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["banking77", "sst2", "financial_phrasebank"])
    parser.add_argument("--shots", nargs="+", type=int, default=[8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cs", nargs="+", type=float, default=[1.0, 10.0, 100.0])
    parser.add_argument("--lpft-c", type=float, default=10.0)
    parser.add_argument("--lpft-lr", type=float, default=5e-5)
    parser.add_argument("--lpft-report", nargs="+", type=int, default=[2, 5, 10])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-fewshot-floor"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table-only", action="store_true")
    global ARGS
    ARGS = parser.parse_args()
    if ARGS.table_only:
        print(table(json.loads(ARGS.results.read_text(encoding="utf-8"))))
        return
    ARGS.work.mkdir(parents=True, exist_ok=True)
    records = []
    for name in ARGS.datasets:
        for shots in ARGS.shots:
            for seed in ARGS.seeds:
                records.append(one(name, shots, seed, ARGS.work))
                ARGS.results.parent.mkdir(parents=True, exist_ok=True)
                ARGS.results.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    print(table(records))


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
