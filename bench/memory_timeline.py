"""Where a training run's peak memory falls: resident size sampled through one `adaptext` run, by phase.

    python bench/memory_timeline.py train --json bench/results/memory_timeline.json
    python bench/memory_timeline.py train --freeze-embeddings     # the same job with train.freeze_embeddings=true
    python bench/memory_timeline.py train --set embedding_rows=all  # with other train keys changed
    python bench/memory_timeline.py explain RUN_DIR --tokens 1024 2048 0 --repeats 2

`train` runs `bench/train_speed.py`'s adaptext job (SST-2, 4,000 training sentences, dev as validation, 1 epoch,
batch 16, learning rate 1e-4) in this process, samples the resident size every 0.1 s with the last log line
written before each sample, and prints the peak of each phase (a phase starts at a log line).

`explain` measures the report's explained errors alone: in a fresh process per setting (order interleaved over
`--repeats`), the run's model predicts its validation split, then the 20 most confident mistakes are explained with
integrated gradients at `--tokens` tokens per pass on the CPU (0: the earlier rule, as many sequences as the
predictor batches). Prints the rise of the peak resident size and the seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


class Sampler:
    """The resident size every `interval` seconds, with the last log line written before it."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, float, str]] = []
        self.phase = "start"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stopped.is_set():
            rss = self.process.memory_info().rss / 2**20
            self.samples.append((round(time.perf_counter() - start, 2), rss, self.phase))
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        sampler = self

        class Phase(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                sampler.phase = f"{record.name}: {record.getMessage()[:100]}"

        logging.getLogger().addHandler(Phase())
        logging.getLogger().setLevel(logging.INFO)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2 * self.interval)
        self.stopped.set()
        self.thread.join()

    @property
    def peak(self) -> float:
        return max(rss for _, rss, _ in self.samples)


def phases(samples: list[tuple[float, float, str]]) -> list[dict[str, Any]]:
    """Consecutive samples under the same log line, with their start and peak."""
    out: list[dict[str, Any]] = []
    for t, rss, phase in samples:
        if not out or out[-1]["phase"] != phase:
            out.append({"start_s": t, "peak_mb": rss, "phase": phase})
        out[-1]["peak_mb"] = max(out[-1]["peak_mb"], rss)
    return out


def run_train(args: argparse.Namespace) -> None:
    import train_speed

    job = argparse.Namespace(
        data_dir=args.data_dir, train_size=4000, seed=0, model="minilm", epochs=1, batch_size=16, learning_rate=1e-4
    )
    data = train_speed._load(job)
    with Sampler() as sampler:
        overrides = ["train.freeze_embeddings=true"] if args.freeze_embeddings else []
        result = train_speed._run_adaptext(job, data, overrides + [f"train.{key}" for key in args.set])
    rows = phases(sampler.samples)
    for row in rows:
        if row["peak_mb"] >= 0.9 * sampler.peak or row is rows[0] or "training:" in row["phase"]:
            print(f"{row['start_s']:8.1f} s  peak {row['peak_mb']:6.0f} MB  {row['phase']}")
    print(f"peak {sampler.peak:.0f} MB; ru_maxrss {train_speed._peak_rss_mb():.0f} MB; {json.dumps(result)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"result": result, "peak_mb": sampler.peak, "phases": rows}, indent=1))


def explain_once(run_dir: str, tokens: int) -> dict[str, Any]:
    import adaptext.explain.methods as methods
    from adaptext.core.config import load_config
    from adaptext.data.splits import load_splits
    from adaptext.evaluation.errors import explained_errors
    from adaptext.inference.predictor import Predictor

    config = load_config(Path(run_dir) / "config.yaml", [])
    validation = load_splits(config).validation
    predictor = Predictor.from_dir(Path(run_dir) / "model", batch_size=64)
    with Sampler(interval=0.01) as sampler:
        probs = predictor.predict_proba(validation.texts, validation.pairs)
        time.sleep(0.2)
        before = sampler.peak
        if tokens:
            methods.CPU_TOKENS_PER_PASS = tokens  # type: ignore[misc]
        else:
            methods.IntegratedGradients.sequences_per_pass = (  # type: ignore[method-assign]
                lambda self, predictor, texts, length, device: max(self.steps, predictor.batch_size)
            )
        started = time.perf_counter()
        errors = explained_errors(predictor, validation, probs, 20)
        seconds = time.perf_counter() - started
    return {"tokens": tokens, "rise_mb": sampler.peak - before, "seconds": seconds, "explained": len(errors)}


def run_explain(args: argparse.Namespace) -> None:
    results = []
    for repeat in range(args.repeats):
        order = args.tokens if repeat % 2 == 0 else args.tokens[::-1]
        for tokens in order:
            command = [sys.executable, __file__, "_explain", args.run_dir, str(tokens)]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            results.append(json.loads(line))
            r = results[-1]
            print(f"tokens per pass {tokens or 'old rule'}: +{r['rise_mb']:.0f} MB, {r['seconds']:.1f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_explain":
        print(json.dumps(explain_once(sys.argv[2], int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    train = sub.add_parser("train")
    train.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/sst2"))
    train.add_argument("--json")
    train.add_argument("--freeze-embeddings", action="store_true", help="train.freeze_embeddings=true")
    train.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="train keys to change, e.g. freeze_embeddings=true"
    )
    explain = sub.add_parser("explain")
    explain.add_argument("run_dir")
    explain.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 0])
    explain.add_argument("--repeats", type=int, default=2)
    explain.add_argument("--json")
    args = parser.parse_args()
    if args.part == "train":
        run_train(args)
    else:
        run_explain(args)


if __name__ == "__main__":
    main()
