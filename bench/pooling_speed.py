"""The cost of mean pooling: the saved pooling layer run as an encoder layer, against adaptext's direct mean.

    python bench/pooling_speed.py                      # SST-2 dev texts, the bundled MiniLM with mean pooling
    python bench/pooling_speed.py --repeats 5 --json bench/results/pooling_speed.json

One process, one model (`minilm` with `model.pooling: mean`, a fresh head), three ways of running it, taking turns
over `--repeats` rounds (the best round of each is reported, the least disturbed by other work on the machine):

  full layer    the pooling layer as plain `transformers` runs it: attention and feed-forward with zero weights
  direct mean   adaptext's form (`modeling.pooling.use_direct_mean`): a masked mean and the layer's two LayerNorms
  no pooling    the encoder without the pooling layer ([CLS] read directly): the floor, not the same model

Inference: texts/s over the texts in batches of 64, sorted by length as `Predictor` does. Training: examples/s of
forward + backward + AdamW steps at batch 16 in SST-2 order. The logits of the full layer and the direct mean must
agree (the largest difference is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "dev.csv", help="CSV with a text column")
    parser.add_argument("--texts", type=int, default=512, help="texts for the inference timing")
    parser.add_argument("--train-steps", type=int, default=12, help="training steps per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from adaptext.core.task import SINGLE_LABEL
    from adaptext.modeling.build import build_model
    from adaptext.modeling.hub import load_tokenizer
    from adaptext.modeling.pooling import use_direct_mean

    texts = pd.read_csv(args.data, keep_default_na=False).text.tolist()
    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    model = build_model("minilm", ["negative", "positive"], SINGLE_LABEL, "mean")
    layers = model.base_model.encoder.layer
    pooling = layers[-1]

    def setting(name: str) -> None:
        # (re)install one way of running the model
        pooling.__dict__.pop("forward", None)
        while len(layers) < model.config.num_hidden_layers:
            layers.append(pooling)
        if name == "direct mean":
            use_direct_mean(pooling)
        elif name == "no pooling":
            del layers[-1]

    ordered = sorted(texts[: args.texts], key=len)
    batches = [tokenizer(ordered[i : i + 64], padding=True, return_tensors="pt") for i in range(0, len(ordered), 64)]
    train_texts = texts[: args.train_steps * 16]
    train_batches = [
        tokenizer(train_texts[i : i + 16], padding=True, return_tensors="pt") for i in range(0, len(train_texts), 16)
    ]
    names = ["full layer", "direct mean", "no pooling"]
    infer: dict[str, list[float]] = {n: [] for n in names}
    train: dict[str, list[float]] = {n: [] for n in names}
    logits: dict[str, Any] = {}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for round_ in range(args.repeats):
        for name in names if round_ % 2 == 0 else list(reversed(names)):
            setting(name)
            model.eval()
            start = time.perf_counter()
            with torch.inference_mode():
                logits[name] = torch.cat([model(**batch).logits for batch in batches])
            infer[name].append(len(ordered) / (time.perf_counter() - start))
            model.train()
            state = {k: v.clone() for k, v in model.state_dict().items()}
            start = time.perf_counter()
            for batch in train_batches:
                loss = model(**batch, labels=torch.zeros(len(batch["input_ids"]), dtype=torch.long)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            train[name].append(len(train_texts) / (time.perf_counter() - start))
            model.load_state_dict(state)  # every round starts from the same weights
            print(f"round {round_ + 1} {name}: {infer[name][-1]:.1f} texts/s, {train[name][-1]:.1f} examples/s")
    setting("full layer")
    difference = float((logits["full layer"] - logits["direct mean"]).abs().max())
    result = {
        "texts": len(ordered),
        "train_examples": len(train_texts),
        "repeats": args.repeats,
        "max_logit_difference_full_vs_direct": difference,
        "inference_texts_per_s": {n: max(v) for n, v in infer.items()},
        "training_examples_per_s": {n: max(v) for n, v in train.items()},
    }
    print()
    print("| way | inference texts/s | vs full layer | training examples/s | vs full layer |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        i, t = result["inference_texts_per_s"][name], result["training_examples_per_s"][name]
        i0, t0 = result["inference_texts_per_s"]["full layer"], result["training_examples_per_s"]["full layer"]
        print(f"| {name} | {i:.1f} | {i / i0:.2f}x | {t:.1f} | {t / t0:.2f}x |")
    print(f"\nlargest |logit difference|, full layer against direct mean: {difference:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
