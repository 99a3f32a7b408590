"""Where a training step's time goes: data (collate), forward, backward, optimizer — for a given recipe.

    python bench/profile_step.py                       # adaptext's batching (length-grouped, dynamic padding, bf16)
    python bench/profile_step.py --recipe pad128       # every text padded to 128 tokens, fp32, batch 16
    python bench/profile_step.py --recipe dynamic-fp32 # dynamic padding without grouping, fp32
    python bench/profile_step.py --compile             # adaptext's recipe with torch.compile(dynamic=True)
    python bench/profile_step.py --threads 1           # torch.set_num_threads(1) instead of the default

It times each phase with wall clocks around synchronous CPU work (no profiler overhead) over `--steps` steps
of SST-2 training data, after a few warm-up steps, and prints milliseconds per step and per example.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--recipe", choices=["adaptext", "dynamic-fp32", "dynamic-bf16", "pad128"], default="adaptext")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from adaptext.core.task import SINGLE_LABEL
    from adaptext.data.batching import Collator, LengthGroupedBatches, tokenize
    from adaptext.modeling.build import build_model
    from adaptext.modeling.hub import load_tokenizer
    from adaptext.modeling.pooling import resolve_pooling

    if args.threads:
        torch.set_num_threads(args.threads)
    frame = pd.read_csv(Path(args.data_dir) / "train.csv", keep_default_na=False).sample(n=4000, random_state=0)
    labels = sorted(frame.label.unique())
    tokenizer = load_tokenizer("minilm")
    pooling = resolve_pooling("minilm", "auto") if args.recipe == "adaptext" else "cls"
    model = build_model("minilm", labels, SINGLE_LABEL, pooling=pooling)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.recipe == "adaptext")
    targets = [labels.index(label) for label in frame.label]
    batch_size = 16 if args.recipe == "pad128" else args.batch_size
    if args.recipe == "pad128":
        enc = tokenizer(frame.text.tolist(), truncation=True, padding="max_length", max_length=128)
    else:
        enc = tokenize(tokenizer, frame.text.tolist(), None, 128)
    features = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    lengths = [len(ids) for ids in features["input_ids"]]
    if args.recipe == "adaptext":
        batches = list(LengthGroupedBatches(lengths, batch_size, seed=0))
    else:
        order = list(range(len(lengths)))
        random.Random(0).shuffle(order)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    collate = Collator(tokenizer.pad_token_id or 0)
    bf16 = args.recipe in ("adaptext", "dynamic-bf16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    phases = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    examples = tokens = 0
    model.train()
    forward = torch.compile(model, dynamic=True) if args.compile else model
    warmup = args.warmup
    start = time.perf_counter()
    for step, idx in enumerate(batches[: args.steps + warmup]):
        t0 = time.perf_counter()
        batch = collate([{k: v[i] for k, v in features.items()} | {"index": i, "labels": targets[i]} for i in idx])
        y = batch.pop("labels")
        batch.pop("index")
        t1 = time.perf_counter()
        with autocast:
            logits = forward(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if step == warmup - 1:
            print(f"{warmup} warm-up steps: {time.perf_counter() - start:.1f} s", flush=True)
        if step >= warmup:
            for name, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name] += value
            examples += len(idx)
            tokens += int(batch["input_ids"].numel())
    total = sum(phases.values())
    print(
        f"recipe {args.recipe}{' compiled' if args.compile else ''}, {torch.get_num_threads()} threads: "
        f"{args.steps} steps of batch {batch_size}, "
        f"{tokens / examples:.1f} padded tokens per example, {examples / total:.1f} examples/s"
    )
    print("| phase | ms/step | share |")
    print("|---|---:|---:|")
    for name, value in phases.items():
        print(f"| {name} | {1000 * value / args.steps:.1f} | {value / total:.0%} |")


if __name__ == "__main__":
    main()
