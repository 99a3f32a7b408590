"""How the monitor's ingest batch size moves classification speed: `Predictor.predict` under bf16 autocast on 3,000
texts of three data sets, called in chunks of 256, 1,024 and 4,096 texts (the ingest's `batch_size`), for forward
batches of 32, 64 and 128. The predictor sorts each call's texts by length before cutting forward batches, so a
larger call pads less. One pass per cell, in the same run; model: the Financial PhraseBank run `bench/monitor.py`
trains (/tmp/adaptext-bench-monitor/fpb/run).

    python bench/monitor.py --throughput-only   # trains the run if it is missing
    python bench/monitor_batching.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch

from adaptext.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
RUN = Path("/tmp/adaptext-bench-monitor/fpb/run")
RESULTS = ROOT / "bench" / "results" / "monitor_batching.json"
CALLS = (256, 1024, 4096)
FORWARD = (32, 64, 128)


def main() -> None:
    if not (RUN / "model").is_dir():
        raise SystemExit(f"{RUN}: no run; train it with: python bench/monitor.py --throughput-only")
    texts = {
        "financial_phrasebank": pd.read_csv(DATASETS / "financial_phrasebank" / "test.csv", keep_default_na=False)[
            "text"
        ]
        .sample(n=3000, replace=True, random_state=1)
        .tolist(),
        "sst2": pd.read_csv(DATASETS / "sst2" / "train.csv", keep_default_na=False)["text"]
        .sample(n=3000, random_state=0)
        .tolist(),
        "banking77": pd.read_csv(DATASETS / "banking77" / "train.csv", keep_default_na=False)["text"]
        .sample(n=3000, random_state=0)
        .tolist(),
    }
    predictor = Predictor.from_dir(RUN)
    predictor.autocast_dtype = torch.bfloat16
    predictor.predict(texts["financial_phrasebank"][:64])  # warm-up
    rows = []
    for name, sample in texts.items():
        for forward in FORWARD:
            predictor.batch_size = forward
            row: dict[str, object] = {"texts": name, "forward_batch": forward}
            for call in CALLS:
                started = time.perf_counter()
                for start in range(0, len(sample), call):
                    predictor.predict(sample[start : start + call])
                row[f"call_{call}"] = round(len(sample) / (time.perf_counter() - started), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.write_text(json.dumps({"command": "python bench/monitor_batching.py", "rows": rows}, indent=2) + "\n")
    print("| texts | forward batch | " + " | ".join(f"calls of {c}" for c in CALLS) + " |")
    print("|---|---:|" + "---:|" * len(CALLS))
    for row in rows:
        print(f"| {row['texts']} | {row['forward_batch']} | " + " | ".join(str(row[f"call_{c}"]) for c in CALLS) + " |")


if __name__ == "__main__":
    main()
