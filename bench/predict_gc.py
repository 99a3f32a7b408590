"""Prediction of a large file with and without the loaded objects exempt from garbage collection (`gc.freeze`).

`adaptext predict` and `adaptext serve` call `adaptext.core.device.freeze_loaded_objects()` once the model is
loaded. This measures what that buys: `predict_file` on the same file, in a fresh process per setting, alternating.

    python bench/predict_gc.py MODEL_DIR TEXTS.csv --copies 50 --repeats 2

TEXTS.csv needs a `text` column; it is repeated `--copies` times into one input file. A fast model (a static
student from bench/distill.py) shows the effect most: a full collection costs the same whatever the model.
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

SETTINGS = ("collected", "frozen")


def once(model: str, source: str, setting: str, output: str) -> dict[str, float]:
    from adaptext.core.device import freeze_loaded_objects
    from adaptext.inference.files import predict_file
    from adaptext.inference.predictor import Predictor

    predictor = Predictor.from_dir(Path(model))
    if setting == "frozen":
        freeze_loaded_objects()
    started = time.perf_counter()
    rows = predict_file(predictor, Path(source), Path(output), overwrite=True)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "_once":
        print(json.dumps(once(*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("texts")
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default="/tmp/adaptext-bench-predict-gc")
    parser.add_argument("--json")
    args = parser.parse_args()

    import pandas as pd

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = work / "input.csv"
    texts = pd.read_csv(args.texts, keep_default_na=False)[["text"]]
    pd.concat([texts] * args.copies, ignore_index=True).to_csv(source, index=False)
    results = []
    for repeat in range(args.repeats):
        for setting in SETTINGS if repeat % 2 == 0 else SETTINGS[::-1]:
            command = [sys.executable, __file__, "_once", args.model, str(source), setting, str(work / "out.csv")]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            results.append(json.loads(line) | {"setting": setting, "repeat": repeat})
            r = results[-1]
            print(f"{setting}: {r['rows']} rows in {r['seconds']:.1f} s, {r['rows_per_s']:.0f} rows/s", flush=True)
    if args.json:
        record = {"command": "python bench/predict_gc.py " + " ".join(sys.argv[1:]), "results": results}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
