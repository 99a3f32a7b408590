"""Student settings side by side on the same teacher labels: the context table, the pooling, seeds (issue 20).

    python bench/distill_variants.py --datasets sst2 banking77 --seeds 0 1 2 \\
        --variants '{}' '{"context": 0, "pooling": "mean"}' --json bench/results/distill_variants.json

Uses bench/distill.py's teachers and distillation texts (cached in --work: the run folders, and the teacher's
logits on the texts the first time), then for each variant (StudentSettings fields as JSON, over the defaults)
and seed builds the student as `adaptext distill` does (`initial_table`, `build_student`, `train_student`) and
scores it on the held-out split: accuracy, agreement with the teacher, training seconds. Only the student's
training differs between rows; the teacher labels each text once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]


def teacher_labels(dataset: str, data_root: Path, work: Path, unlabelled_rows: int, reviews: int) -> dict[str, Any]:
    """The teacher, its distillation texts' token ids and logits (cached), and the held-out split."""
    import numpy as np
    from distill import prepare, unlabelled_for

    from adaptext.core.config import load_config
    from adaptext.data.batching import tokenize
    from adaptext.data.io import read_texts
    from adaptext.data.splits import load_splits
    from adaptext.distill.distiller import _distillation_texts, training_labels
    from adaptext.distill.student import StudentSettings
    from adaptext.inference.predictor import Predictor

    run, _ = prepare(dataset, data_root, work)
    teacher = Predictor.from_dir(run)
    splits = load_splits(load_config(run / "config.yaml"))
    unlabelled = unlabelled_for(dataset, data_root, work, unlabelled_rows, reviews)
    extra = read_texts(unlabelled, teacher.info.text_column) if unlabelled is not None else []
    texts = _distillation_texts(splits, extra, StudentSettings(), run)
    # keyed by the texts and the teacher's weights file, so a retrained teacher labels them again
    weights = max((run / "model").glob("*.safetensors"), default=run / "model" / "config.json").stat()
    key = "\n".join(texts) + f"\n{weights.st_size} {weights.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cache = work / dataset / f"teacher-logits-{len(texts)}-{digest}.npy"
    if cache.is_file():
        logits = np.load(cache)
    else:
        logits = teacher.predict_logits(texts, progress=True)
        np.save(cache, logits)
    held = splits.validation
    return {
        "labels": training_labels(splits, texts, teacher.labels),
        "teacher": teacher,
        "ids": tokenize(teacher.tokenizer, texts, None, teacher.max_length)["input_ids"],
        "logits": logits,
        "held": held,
        "held_logits": teacher.predict_logits(held.texts),
    }


def score(data: dict[str, Any], settings: Any) -> dict[str, float]:
    import numpy as np
    import torch

    from adaptext.distill.student import build_student, initial_table, train_student

    teacher = data["teacher"]
    table, _ = initial_table(teacher.model, teacher.tokenizer, settings)
    student = build_student(table, teacher.labels, teacher.task.problem_type, settings, extra={})
    clock = time.perf_counter()
    multi_label = teacher.multi_label
    train_student(student, data["ids"], data["logits"], settings, multi_label=multi_label, labels=data["labels"])
    seconds = time.perf_counter() - clock
    held = data["held"]
    ids = teacher.tokenizer(held.texts, truncation=True, max_length=teacher.max_length)["input_ids"]
    with torch.inference_mode():
        predicted = student.bag_logits(ids).argmax(dim=1).numpy()
    gold = np.array([teacher.labels.index(label) for label in held.labels])
    return {
        "accuracy": float((predicted == gold).mean()),
        "teacher_accuracy": float((data["held_logits"].argmax(axis=1) == gold).mean()),
        "agreement": float((predicted == data["held_logits"].argmax(axis=1)).mean()),
        "train_seconds": seconds,
    }


def main() -> None:
    from adaptext.distill.student import StudentSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sst2", "banking77"])
    parser.add_argument("--variants", nargs="+", default=["{}", '{"context": 0, "pooling": "mean"}'])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-distill"))
    parser.add_argument("--sst2-unlabelled", type=int, default=20000)
    parser.add_argument("--sst2-reviews", type=int, default=0, help="IMDB review sentences (bench/distill.py)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        data = teacher_labels(dataset, args.data_root, args.work, args.sst2_unlabelled, args.sst2_reviews)
        for variant in args.variants:
            for seed in args.seeds:
                settings = replace(StudentSettings(), **json.loads(variant), seed=seed)
                row = {"dataset": dataset, "variant": variant, "seed": seed} | score(data, settings)
                print(json.dumps(row), flush=True)
                rows.append(row | {"settings": asdict(settings)})
    print("\n| data set | variant | seeds | accuracy (each seed) | mean | agreement (mean) |")
    print("|---|---|---|---|---:|---:|")
    for dataset in args.datasets:
        for variant in args.variants:
            mine = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            accs = [r["accuracy"] for r in mine]
            agreement = sum(r["agreement"] for r in mine) / len(mine)
            each = ", ".join(f"{a:.4f}" for a in accs)
            print(f"| {dataset} | `{variant}` | {len(mine)} | {each} | {sum(accs) / len(accs):.4f} | {agreement:.4f} |")
    if args.json is not None:
        command = "python bench/distill_variants.py " + " ".join(sys.argv[1:])
        args.json.write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
