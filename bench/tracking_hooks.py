"""The MLflow tracker's cost inside the training loop, timed directly rather than as a difference of noisy runs.

Trains the bundled model on an SST-2 subset with `tracking.backend=mlflow` and times every call the engine makes to
the tracker during training (its hooks: training start, each step, each log record, each evaluation, each save),
against the run's `train_seconds`. The tracker's set-up (store, experiment, params) happens before the training
clock starts, and its end (artefacts, model) after it; both are timed and reported apart.

    python bench/tracking_hooks.py --train-size 2000 --json bench/results/tracking_hooks.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
TIMED = ("__init__", "on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_save", "on_train_end", "on_run_end")


def timed_tracker(spent: dict[str, float]) -> None:
    """Wrap every hook of the registered `mlflow` tracker so the time spent in it adds to `spent[hook]`."""
    from adaptext.training import tracking

    for name in TIMED:
        original = getattr(tracking.MLflowTracker, name)

        def wrapper(self: Any, *args: Any, _original: Any = original, _name: str = name) -> Any:
            started = time.perf_counter()
            try:
                return _original(self, *args)
            finally:
                spent[_name] += time.perf_counter() - started

        setattr(tracking.MLflowTracker, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    output = Path(args.json).resolve() if args.json else None
    here = Path.cwd()

    import pandas as pd

    from adaptext import load_config, train

    spent: dict[str, float] = defaultdict(float)
    timed_tracker(spent)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.chdir(tmp)  # the sqlite store keeps artefacts in ./mlruns
        frame = pd.read_csv(Path(args.data_dir) / "train.csv", keep_default_na=False)
        frame.sample(n=args.train_size, random_state=0).to_csv(f"{tmp}/train.csv", index=False)
        pd.read_csv(Path(args.data_dir) / "dev.csv", keep_default_na=False).to_csv(f"{tmp}/dev.csv", index=False)
        overrides = [
            f"data.train={tmp}/train.csv",
            f"data.validation={tmp}/dev.csv",
            "data.max_length=64",
            "train.epochs=1",
            f"output_dir={tmp}/run",
            "tracking.backend=mlflow",
        ]
        result = train(load_config(None, overrides))
        os.chdir(here)
    loop = sum(spent[name] for name in TIMED if name not in ("__init__", "on_run_end"))
    train_seconds = float(result.stats["train_seconds"])
    report = {
        "train_size": args.train_size,
        "train_seconds": train_seconds,
        "in_loop_seconds": loop,
        "in_loop_percent": 100 * loop / train_seconds,
        "setup_seconds": spent["__init__"],
        "end_seconds": spent["on_run_end"],
        "per_hook_seconds": dict(spent),
    }
    print(json.dumps(report, indent=2))
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
