"""Training speed and accuracy: adaptext against the Hugging Face recipes people use, side by side.

Every contender fine-tunes the same model on the same SST-2 training subset with the same epochs, batch size
and learning rate, then predicts SST-2 dev. Each runs in its own process (clean peak memory, no shared
caches); the order alternates between repeats so machine noise falls on every contender alike.

    python bench/train_speed.py                                  # defaults: 4,000 examples, 1 epoch, 1 repeat
    python bench/train_speed.py --train-size 4000 --repeats 2 --json results.json
    python bench/train_speed.py --batch-size 16 --seeds 0 1 2       # one repeat per seed, order alternating

A seed sets the training subset, the initialisation of the head and the shuffling, the same for every contender.

Contenders:
  adaptext        adaptext.train with its defaults for precision and batching
  adaptext_frozen the same with train.freeze_embeddings=true (the word-embedding matrix is not trained)
  adaptext_attn0  adaptext with train.attention_dropout=0 (PyTorch's fused attention keeps no attention matrix)
  adaptext_allrows adaptext with train.embedding_rows=all (every word-embedding row trained, not only the used ones)
  trainer_fp32    transformers.Trainer + DataCollatorWithPadding (the documented recipe), fp32
  trainer_bf16    the same Trainer with bf16=True
  pad128_loop     the tutorial recipe: pad every text to 128 tokens, batch 16, AdamW, a plain loop
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# adaptext's contenders: the config overrides each adds to the defaults
ADAPTEXT = {
    "adaptext": [],
    "adaptext_frozen": ["train.freeze_embeddings=true"],
    "adaptext_attn0": ["train.attention_dropout=0"],
    "adaptext_allrows": ["train.embedding_rows=all"],
}
CONTENDERS = [*ADAPTEXT, "trainer_fp32", "trainer_bf16", "pad128_loop"]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"


def _load(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], list[str]]:
    import pandas as pd

    train = pd.read_csv(Path(args.data_dir) / "train.csv", keep_default_na=False)
    dev = pd.read_csv(Path(args.data_dir) / "dev.csv", keep_default_na=False)
    train = train.sample(n=min(args.train_size, len(train)), random_state=args.seed)
    return train.text.tolist(), train.label.tolist(), dev.text.tolist(), dev.label.tolist()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_adaptext(
    args: argparse.Namespace,
    data: tuple[list[str], ...],
    overrides: list[str],
) -> dict[str, Any]:
    import pandas as pd

    from adaptext.core.config import load_config
    from adaptext.strategies import train

    texts, labels, dev_texts, dev_labels = data
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame({"text": texts, "label": labels}).to_csv(f"{tmp}/train.csv", index=False)
        pd.DataFrame({"text": dev_texts, "label": dev_labels}).to_csv(f"{tmp}/dev.csv", index=False)
        config = load_config(
            None,
            [
                f"model.name={args.model}",
                f"data.train={tmp}/train.csv",
                f"data.validation={tmp}/dev.csv",
                f"output_dir={tmp}/run",
                f"train.epochs={args.epochs}",
                f"train.batch_size={args.batch_size}",
                f"train.learning_rate={args.learning_rate}",
                f"seed={args.seed}",
                "train.metric_for_best=accuracy",
                *overrides,
            ],
        )
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
        log = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
        tokens = _count_tokens(args, texts)
    return {"wall_s": wall, "dev_accuracy": result.metrics["accuracy"], "tokens": tokens, "log_records": len(log)}


def _count_tokens(args: argparse.Namespace, texts: list[str]) -> int:
    from adaptext.modeling.hub import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"])


def _run_trainer(args: argparse.Namespace, data: tuple[list[str], ...], bf16: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from adaptext.modeling.hub import load_tokenizer, resolve_model_name

    texts, labels, dev_texts, dev_labels = data
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    encoded = tokenizer(texts, truncation=True, max_length=128)
    train_set = [
        {"input_ids": ids, "attention_mask": mask, "labels": index[label]}
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels, strict=True)
    ]
    dev_enc = tokenizer(dev_texts, truncation=True, max_length=128)
    dev_set = [
        {"input_ids": ids, "attention_mask": m}
        for ids, m in zip(dev_enc["input_ids"], dev_enc["attention_mask"], strict=True)
    ]
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_name(args.model), num_labels=len(names), id2label=dict(enumerate(names)), label2id=index
    )
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.learning_rate,
            num_train_epochs=args.epochs,
            bf16=bf16,
            use_cpu=not torch.cuda.is_available(),
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=args.seed,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer)
        )
        trainer.train()
        logits = trainer.predict(dev_set).predictions
    wall = time.perf_counter() - start
    predicted = [names[i] for i in np.asarray(logits).argmax(axis=1)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, dev_labels, strict=True)]))
    tokens = sum(len(ids) for ids in encoded["input_ids"])
    return {"wall_s": wall, "dev_accuracy": accuracy, "tokens": tokens}


def _run_pad128(args: argparse.Namespace, data: tuple[list[str], ...]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from adaptext.modeling.hub import load_tokenizer, resolve_model_name

    texts, labels, dev_texts, dev_labels = data
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    enc = tokenizer(texts, truncation=True, padding="max_length", max_length=128, return_tensors="pt")
    targets = torch.tensor([index[label] for label in labels])
    dataset = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], targets)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_name(args.model), num_labels=len(names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    steps = int(len(loader) * args.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    model.train()
    step = 0
    while step < steps:
        for ids, mask, y in loader:
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step >= steps:
                break
    model.eval()
    dev = tokenizer(dev_texts, truncation=True, padding="max_length", max_length=128, return_tensors="pt")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev_texts), 64):
            logits = model(
                input_ids=dev["input_ids"][i : i + 64], attention_mask=dev["attention_mask"][i : i + 64]
            ).logits
            correct += sum(
                names[p] == t for p, t in zip(logits.argmax(-1).tolist(), dev_labels[i : i + 64], strict=True)
            )
    wall = time.perf_counter() - start
    tokens = int(enc["attention_mask"].sum())
    return {"wall_s": wall, "dev_accuracy": correct / len(dev_texts), "tokens": tokens}


def worker(args: argparse.Namespace) -> None:
    data = _load(args)
    if args.worker in ADAPTEXT:
        result = _run_adaptext(args, data, ADAPTEXT[args.worker])
    elif args.worker == "pad128_loop":
        result = _run_pad128(args, data)
    else:
        result = _run_trainer(args, data, bf16=args.worker == "trainer_bf16")
    seen = len(data[0]) * args.epochs
    result |= {
        "contender": args.worker,
        "examples_seen": seen,
        "samples_per_s": seen / result["wall_s"],
        "tokens_per_s": result["tokens"] * args.epochs / result["wall_s"],
        "peak_rss_mb": _peak_rss_mb(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def _table(rows: list[dict[str, Any]]) -> str:
    import statistics

    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["contender"], []).append(row)
    mean = {
        n: {
            k: statistics.mean(r[k] for r in rs)
            for k in ("samples_per_s", "tokens_per_s", "wall_s", "peak_rss_mb", "dev_accuracy")
        }
        for n, rs in by_name.items()
    }
    ours = mean.get("adaptext")
    lines = [
        "| contender | train samples/s | tokens/s | wall s | peak RSS MB | dev accuracy (mean ± std) | runs "
        "| adaptext speed-up | adaptext accuracy − this (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in mean.items():
        ratio = f"{ours['samples_per_s'] / m['samples_per_s']:.2f}x" if ours else "n/a"
        accuracies = [r["dev_accuracy"] for r in by_name[name]]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        gap = f"{100 * (ours['dev_accuracy'] - m['dev_accuracy']):+.2f}" if ours else "n/a"
        lines.append(
            f"| {name} | {m['samples_per_s']:.1f} | {m['tokens_per_s']:.0f} | {m['wall_s']:.1f} | "
            f"{m['peak_rss_mb']:.0f} | {m['dev_accuracy']:.4f} ± {spread:.4f} | {len(accuracies)} | {ratio} | {gap} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder with SST-2 train.csv and dev.csv")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a worker's seed
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one repeat per seed and per --repeats")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--contenders", nargs="+", default=CONTENDERS, choices=CONTENDERS)
    parser.add_argument("--json", help="also write all raw results to this file")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not (Path(args.data_dir) / "train.csv").is_file():
        sys.exit(f"no SST-2 data at {args.data_dir}; pass --data-dir")
    rows = []
    runs = [(seed, r) for r in range(args.repeats) for seed in args.seeds]
    for repeat, (seed, _) in enumerate(runs):
        order = args.contenders if repeat % 2 == 0 else list(reversed(args.contenders))
        for name in order:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--data-dir",
                args.data_dir,
                "--model",
                args.model,
                "--train-size",
                str(args.train_size),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--learning-rate",
                str(args.learning_rate),
                "--seed",
                str(seed),
            ]
            print(f"[run {repeat + 1}/{len(runs)}, seed {seed}] {name} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not result:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            row = json.loads(result[-1][len("RESULT ") :])
            row["repeat"] = repeat
            row["seed"] = seed
            rows.append(row)
            print(f"  {row['samples_per_s']:.1f} samples/s, dev accuracy {row['dev_accuracy']:.4f}", file=sys.stderr)
    print(
        f"SST-2: {args.train_size} train examples, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"lr {args.learning_rate}, model {args.model}, seeds {args.seeds}, {args.repeats} repeat(s) each"
    )
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
