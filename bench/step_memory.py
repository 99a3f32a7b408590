"""Where training memory goes: peak RSS of adaptext's training step under allocator and kernel-cache settings.

    python bench/step_memory.py                        # every variant, bf16 and fp32, 120 steps each
    python bench/step_memory.py --variants default onednn64 --steps 250

Each variant runs in its own process: the bundled MiniLM with adaptext's pooling, length-grouped batches of 16
from 4,000 SST-2 training texts, fused AdamW, and prints the resident memory after the model is built, after the
first steps, and the peak over the run, with the wall time of the steps (to show what a setting costs).

Variants:
  default      torch's and glibc's defaults (oneDNN keeps up to 1,024 kernels, one per shape and operation)
  onednn64     ONEDNN_PRIMITIVE_CACHE_CAPACITY=64 (what `adaptext train` sets unless the environment has it)
  onednn0      no oneDNN kernel cache at all
  trim         the default cache, and glibc's malloc_trim(0) after every step
  attn0        the bounded cache (onednn64), and no dropout on the attention probabilities
               (`train.attention_dropout=0`): PyTorch's fused attention, which keeps no attention matrix

Long texts: `--data-dir ../shared/datasets/imdb --max-length 256 --steps 40 --variants onednn64 attn0`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
VARIANTS = {
    "default": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},
    "onednn64": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"},
    "onednn0": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
    "trim": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "ADAPTEXT_BENCH_TRIM": "1"},
    "attn0": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "ADAPTEXT_BENCH_ATTENTION_DROPOUT": "0"},
}


def worker(args: argparse.Namespace) -> None:
    import ctypes
    import resource
    from contextlib import nullcontext

    import pandas as pd
    import psutil
    import torch

    from adaptext.core.task import SINGLE_LABEL
    from adaptext.data.batching import Collator, LengthGroupedBatches, tokenize
    from adaptext.modeling.build import build_model
    from adaptext.modeling.hub import load_tokenizer
    from adaptext.modeling.pooling import resolve_pooling

    process = psutil.Process()

    def rss() -> float:
        return process.memory_info().rss / 2**20

    trim = ctypes.CDLL("libc.so.6").malloc_trim if os.environ.get("ADAPTEXT_BENCH_TRIM") else None
    frame = pd.read_csv(Path(args.data_dir) / "train.csv", keep_default_na=False).sample(n=4000, random_state=0)
    labels = sorted(frame.label.unique())
    tokenizer = load_tokenizer("minilm")
    dropout = os.environ.get("ADAPTEXT_BENCH_ATTENTION_DROPOUT")
    pooling = resolve_pooling("minilm", "auto")
    model = build_model("minilm", labels, SINGLE_LABEL, pooling, None if dropout is None else float(dropout))
    after_build = rss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    encoded = tokenize(tokenizer, frame.text.tolist(), None, args.max_length)
    features = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    targets = [labels.index(label) for label in frame.label]
    batches = list(LengthGroupedBatches([len(ids) for ids in features["input_ids"]], 16, seed=0))
    collate = Collator(tokenizer.pad_token_id or 0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    model.train()
    start = time.perf_counter()
    after_10 = 0.0
    for step, indices in enumerate(batches[: args.steps], start=1):
        items = [{k: v[i] for k, v in features.items()} | {"index": i, "labels": targets[i]} for i in indices]
        batch = collate(items)
        y = batch.pop("labels")
        batch.pop("index")
        with autocast:
            logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if trim is not None:
            trim(0)
        if step == 10:
            after_10 = rss()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"after_build_mb": after_build, "after_10_mb": after_10, "end_mb": rss(), "peak_mb": peak}
    print("RESULT " + json.dumps(result | {"steps_s": seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.steps} training steps, batch 16, texts of {args.data_dir} up to {args.max_length} tokens, MiniLM")
    print("| precision | variant | RSS after build MB | after 10 steps MB | at the end MB | peak MB | steps s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for precision in args.precisions:
        for name in args.variants:
            command = [sys.executable, __file__, "--worker", "--precision", precision, "--steps", str(args.steps)]
            command += ["--max-length", str(args.max_length)]
            command += ["--data-dir", args.data_dir]
            env = os.environ | VARIANTS[name]
            out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                sys.exit(f"{precision} {name} failed:\n{out.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT ") :])
            print(
                f"| {precision} | {name} | {r['after_build_mb']:.0f} | {r['after_10_mb']:.0f} | {r['end_mb']:.0f} "
                f"| {r['peak_mb']:.0f} | {r['steps_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
