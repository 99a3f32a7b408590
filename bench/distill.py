"""Static students made by `adaptext distill` against their teachers on SST-2 and BANKING77 (issue 20).

    python bench/distill.py                               # trains both teachers (cached in --work), distils, measures
    python bench/distill.py --datasets sst2 --dim 128     # one data set, another width
    python bench/distill.py --init embeddings --output bench/results/distill-embeddings.json
    python bench/distill.py --seeds 0 1 2                 # three students per data set, scored; the first timed

The teachers are what a user gets from `adaptext train` with the bundled model, as in bench/explain.py: SST-2
fine-tuned on 8,000 training sentences (seed 0) for one epoch, validated on the dev set; BANKING77 on a stratified
80% of its training file (seed 0) for three epochs, validated on the other 20% (the official test split is not
shipped here). The student is distilled from the run folder, so it learns on the teacher's training texts and their
augmented copies; SST-2 adds `--sst2-unlabelled` further training sentences (labels dropped) as unlabelled text,
and `--sst2-reviews` sentences of IMDB training reviews (0 by default).
BANKING77 has no unlabelled text of its own. `--datasets clinc150 financial_phrasebank` checks the student's
defaults on two data sets they were not chosen on (`prepare`); neither gets unlabelled text.

Measured on the held-out split (SST-2 dev, BANKING77's 20%): accuracy of both, agreement, texts/s through
`Predictor` batched (64) and one text at a time, requests/s of `adaptext serve` with 16 concurrent single-text
clients (bench/serve_load.py's generator), and the distillation's wall time. model2vec's own pretrained static
models (potion-*) are not on this machine (no network), so they are not compared. Results: bench/results/distill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results" / "distill.json"


HELD_ASIDE = ("clinc150", "financial_phrasebank")


def prepare(dataset: str, data_root: Path, work: Path) -> tuple[Path, Path]:
    """Train (once, cached in `work`) the dataset's teacher; return its run folder and the held-out file. The student
    reads the run's training texts (work/DATASET/train.csv).

    SST-2 and BANKING77: as bench/explain.py trains the model it explains. The data sets the student's defaults
    were not chosen on (`HELD_ASIDE`): CLINC150's 150 in-scope intents (train.csv, validated on dev.csv, held out:
    test.csv, `oos` rows dropped) and Financial PhraseBank (train.csv with adaptext's own validation split, held
    out: test.csv), each trained with adaptext's defaults but `max_length` 64 and 2 epochs."""
    if dataset not in HELD_ASIDE:
        from explain import prepare as prepare_model  # bench/explain.py, beside this script

        return prepare_model(dataset, data_root, work)
    import pandas as pd

    from adaptext.core.config import load_config
    from adaptext.strategies import train

    folder = work / dataset
    folder.mkdir(parents=True, exist_ok=True)

    def kept_rows(split: str) -> Path:
        frame = pd.read_csv(data_root / dataset / f"{split}.csv", keep_default_na=False)
        frame = frame[frame.label != "oos"][["text", "label"]]
        frame.to_csv(folder / f"{split}.csv", index=False)
        return folder / f"{split}.csv"

    train_file, heldout = kept_rows("train"), kept_rows("test")
    validation = [f"data.validation={kept_rows('dev')}"] if dataset == "clinc150" else []
    run = folder / "run"
    if not (run / "model" / "config.json").is_file():
        overrides = ["model.name=minilm", f"data.train={train_file}", *validation, "data.max_length=64"]
        overrides += [f"output_dir={run}", "seed=0", "train.report_errors=0", "train.epochs=2"]
        print(f"[{dataset}] training the teacher into {run}", file=sys.stderr)
        train(load_config(None, overrides), overwrite=True)
    return run, heldout


def unlabelled_for(dataset: str, data_root: Path, work: Path, rows: int, reviews: int = 0) -> Path | None:
    """SST-2's unlabelled text: `rows` SST-2 training sentences the teacher was not trained on, without labels, and
    `reviews` sentences of IMDB training reviews (`review_sentences`); None for other data sets or when both are 0."""
    import pandas as pd

    if dataset != "sst2" or (rows <= 0 and reviews <= 0):
        return None
    texts: list[str] = []
    if rows > 0:
        frame = pd.read_csv(data_root / "sst2" / "train.csv", keep_default_na=False)
        used = set(frame.sample(n=8000, random_state=0).index)
        rest = frame.drop(index=list(used)).sample(n=min(rows, len(frame) - len(used)), random_state=1)
        texts += [text.replace("\n", " ") for text in rest.text]
    texts += review_sentences(data_root, reviews)
    path = work / dataset / f"unlabelled-{rows}-reviews-{reviews}.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


def review_sentences(data_root: Path, count: int) -> list[str]:
    """`count` sentences (5 to 60 words) drawn at random (seed 0) from the IMDB training reviews in `data_root`: movie
    reviews like SST-2's, but whole sentences (19.3 words on average, SST-2 dev 19.5) where SST-2's training file is
    mostly phrases (9.4 words)."""
    import random
    import re

    import pandas as pd

    if count <= 0:
        return []
    sentences = []
    for review in pd.read_csv(data_root / "imdb" / "train.csv", keep_default_na=False).text:
        for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"<br\s*/?>", " ", review)):
            words = sentence.split()
            if 5 <= len(words) <= 60:
                sentences.append(" ".join(words))
    random.Random(0).shuffle(sentences)
    if count > len(sentences):
        raise SystemExit(f"--sst2-reviews {count}: the IMDB training reviews have {len(sentences)} sentences")
    return sentences[:count]


def speed(predictor: Any, texts: list[str], single: int, seconds: float = 5.0) -> dict[str, float]:
    """Texts/s batched (the predictor's batch size) and one text per call (the first `single` texts).

    Batched: all texts predicted again and again until `seconds` have passed (at least twice), the total over the
    total time. One pass of a fast model takes a tenth of a second, and one of Python's full garbage collections
    (a few hundred ms with torch and transformers loaded, every dozen passes or so) would decide a single timing;
    over many passes they count as often as they happen in a long prediction job.
    """
    predictor.predict(texts)  # warm-up: every batch shape once
    started, passes = time.perf_counter(), 0
    while passes < 2 or time.perf_counter() - started < seconds:
        predictor.predict(texts)
        passes += 1
    batched = passes * len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    for text in texts[:single]:
        predictor.predict([text])
    one = single / (time.perf_counter() - started)
    return {"batched": batched, "one_at_a_time": one}


def measure(
    dataset: str, run: Path, heldout: Path, student_dir: Path, single: int, serve_requests: int
) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from adaptext.inference.predictor import Predictor

    frame = pd.read_csv(heldout, keep_default_na=False)
    texts = frame.text.tolist()
    result: dict[str, Any] = {"dataset": dataset, "heldout": str(heldout), "texts": len(texts)}
    decided = {}
    for who, folder in (("teacher", run), ("student", student_dir)):
        predictor = Predictor.from_dir(folder)
        probs = predictor.predict_proba(texts)
        decided[who] = probs.argmax(1)
        truth = np.array([predictor.labels.index(label) for label in frame.label])
        result[who] = {"accuracy": float((decided[who] == truth).mean())} | speed(predictor, texts, single)
        if serve_requests > 0:
            result[who]["serve_16_clients"] = serve_speed(folder, texts, serve_requests, 16)
    result["agreement"] = float((decided["teacher"] == decided["student"]).mean())
    result["teacher_decisions"] = decided["teacher"].tolist()
    result["accuracy_lost_points"] = 100 * (result["teacher"]["accuracy"] - result["student"]["accuracy"])
    result["speedup"] = {key: result["student"][key] / result["teacher"][key] for key in ("batched", "one_at_a_time")}
    return result


def scored(folder: Path, heldout: Path, teacher: dict[str, Any]) -> dict[str, float]:
    """Accuracy of the model in `folder` on `heldout`, and its agreement with the teacher's decisions there."""
    import numpy as np
    import pandas as pd

    from adaptext.inference.predictor import Predictor

    frame = pd.read_csv(heldout, keep_default_na=False)
    predictor = Predictor.from_dir(folder)
    decided = predictor.predict_proba(frame.text.tolist()).argmax(1)
    truth = np.array([predictor.labels.index(label) for label in frame.label])
    return {"accuracy": float((decided == truth).mean()), "agreement": float((decided == teacher["decided"]).mean())}


def serve_speed(folder: Path, texts: list[str], requests: int, clients: int) -> dict[str, Any]:
    """Requests/s and latency of `adaptext serve` on `folder` with `clients` concurrent single-text clients
    (bench/serve_load.py's load generator)."""
    import asyncio

    from serve_load import free_port, load, start

    port = free_port()
    process = start([sys.executable, "-m", "adaptext", "-q", "serve", str(folder), "--port", str(port)], port)
    try:
        return asyncio.run(load(f"http://127.0.0.1:{port}/predict", texts, requests, clients))
    finally:
        process.terminate()
        process.wait(timeout=60)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | model | accuracy | agreement | texts/s batched | texts/s one at a time | serve req/s (16) "
        "| distil s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for who in ("teacher", "student"):
            m = r[who]
            agreement = f"{r['agreement']:.4f}" if who == "student" else ""
            seconds = f"{r['distill_seconds']:.0f}" if who == "student" else ""
            served = f"{m['serve_16_clients']['requests_per_s']:.0f}" if "serve_16_clients" in m else ""
            lines.append(
                f"| {r['dataset']} | {who} | {m['accuracy']:.4f} | {agreement} | {m['batched']:.0f} | "
                f"{m['one_at_a_time']:.0f} | {served} | {seconds} |"
            )
    return "\n".join(lines)


def main() -> None:
    from adaptext.cli.distill import add_student_options, settings_from

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["sst2", "banking77"], choices=["sst2", "banking77", *HELD_ASIDE]
    )
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-distill"), help="teacher cache")
    parser.add_argument("--sst2-unlabelled", type=int, default=20000, help="SST-2 sentences given as unlabelled")
    parser.add_argument(
        "--sst2-reviews", type=int, default=0, help="sentences of IMDB reviews also given to SST-2 as unlabelled"
    )
    add_student_options(parser)
    parser.add_argument("--single", type=int, default=300, help="texts predicted one at a time for the speed")
    parser.add_argument(
        "--serve-requests", type=int, default=1000, help="requests to `adaptext serve` at 16 clients (0: skip)"
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="student seeds: the first student is timed and served, every one is distilled and scored",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: each seed once")

    import logging

    import numpy as np
    import torch

    from adaptext.distill import distill_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request of the serve load test
    settings = settings_from(argparse.Namespace(**vars(args), seed=args.seeds[0]))
    results = []
    for dataset in args.datasets:
        run, heldout = prepare(dataset, args.data_root, args.work)
        unlabelled = unlabelled_for(dataset, args.data_root, args.work, args.sst2_unlabelled, args.sst2_reviews)
        result: dict[str, Any] = {}
        for position, seed in enumerate(args.seeds):
            student_dir = args.work / dataset / ("student" if position == 0 else f"student-seed{seed}")
            started = time.perf_counter()
            chosen = replace(settings, seed=seed)
            summary = distill_model(run, student_dir, unlabelled=unlabelled, settings=chosen, overwrite=True)
            seconds = time.perf_counter() - started
            if position == 0:
                result = measure(dataset, run, heldout, student_dir, args.single, args.serve_requests)
                result |= {"distill_seconds": seconds, "distill": summary, "seeds": []}
                score = {"accuracy": result["student"]["accuracy"], "agreement": result["agreement"]}
            else:
                score = scored(student_dir, heldout, {"decided": np.array(result["teacher_decisions"])})
            result["seeds"].append({"seed": seed, "distill_seconds": seconds} | score)
        del result["teacher_decisions"]
        accuracies = [row["accuracy"] for row in result["seeds"]]
        result["student_mean_accuracy"] = sum(accuracies) / len(accuracies)
        result["mean_accuracy_lost_points"] = 100 * (result["teacher"]["accuracy"] - result["student_mean_accuracy"])
        results.append(result)
        print(table(results[-1:]), flush=True)
        print(seed_lines(result), flush=True)
    record = {
        "command": "python bench/distill.py " + " ".join(sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args) | {"data_root": str(args.data_root), "work": str(args.work), "output": str(args.output)},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(table(results))
    for result in results:
        print(seed_lines(result))
    print(f"written: {args.output}")


def seed_lines(result: dict[str, Any]) -> str:
    """The students of every seed on one data set: accuracy, agreement, distillation time, and the mean's loss."""
    each = ", ".join(
        f"seed {row['seed']} {row['accuracy']:.4f} (agreement {row['agreement']:.4f}, {row['distill_seconds']:.0f} s)"
        for row in result["seeds"]
    )
    return (
        f"{result['dataset']} students: {each}; mean {result['student_mean_accuracy']:.4f}, "
        f"{result['mean_accuracy_lost_points']:.2f} points below the teacher's {result['teacher']['accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
