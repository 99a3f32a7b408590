"""`distill_model`: a trained classifier (the teacher) made into a static-embedding student folder.

The student learns the teacher's probabilities on the teacher's training texts (read through the run's
`config.yaml`), changed copies of them and any unlabelled texts; it is then scored against the labels and against
the teacher on the run's validation and test splits. The folder loads in `Predictor` (`adaptext.inference.loaders`'
`static` kind), so `evaluate`, `predict` and `serve` take it like any model folder.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError
from adaptext.core.info import MODEL_SUBDIR, ModelInfo, find_model_dir
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.core.run import write_json
from adaptext.data.batching import tokenize
from adaptext.data.examples import Splits, TextData
from adaptext.data.io import read_texts
from adaptext.data.splits import load_splits
from adaptext.distill.report import REPORT_JSON, REPORT_PAGE, write_page
from adaptext.distill.student import (
    INITS,
    LOSSES,
    StudentSettings,
    build_student,
    initial_table,
    train_student,
)
from adaptext.distill.texts import augment, unique
from adaptext.evaluation.metrics import evaluate_data
from adaptext.inference.predictor import Predictor
from adaptext.modeling.static import POOLINGS

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"


def distill_model(
    teacher_path: str | Path,
    output_dir: str | Path,
    *,
    unlabelled: str | Path | None = None,
    text_column: str | None = None,
    settings: StudentSettings | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Distil the classifier in `teacher_path` (a run folder, or any model folder `Predictor` loads) into a
    static-embedding student in `output_dir`, and return the summary written as `distill.json`.

    The distillation texts are the run's training texts (when `teacher_path` is a run folder, or a run's `model/`),
    `settings.augment` changed copies of each, and the texts of `unlabelled` (CSV/TSV/JSONL/Parquet with the
    `text_column`, by default the teacher's, or `.txt` with one text per line). `output_dir` must be new or empty,
    or an earlier student (replaced only with `overwrite`); nothing is written when distillation fails.

    >>> distill_model("runs/sst2", "students/sst2", unlabelled="reviews.txt")["agreement"]  # doctest: +SKIP
    {'validation': 0.97}
    """
    settings = settings or StudentSettings()
    if settings.pooling not in POOLINGS:
        raise AdaptextError(f"pooling {settings.pooling!r} is not one of {', '.join(POOLINGS)}")
    if settings.init not in INITS:
        raise AdaptextError(f"init {settings.init!r} is not one of {', '.join(INITS)}")
    if settings.loss not in LOSSES:
        raise AdaptextError(f"loss {settings.loss!r} is not one of {', '.join(LOSSES)}")
    if settings.dim < 1 or settings.epochs < 1 or settings.augment < 0 or settings.context < 0:
        raise AdaptextError("dim and epochs must be at least 1, augment and context at least 0")
    if not (math.isfinite(settings.label_weight) and settings.label_weight >= 0):
        raise AdaptextError(f"label weight must be a number of at least 0, not {settings.label_weight}")
    if not (math.isfinite(settings.temperature) and settings.temperature > 0):
        raise AdaptextError(f"temperature must be a number above 0, not {settings.temperature}")
    started = time.perf_counter()
    teacher_path = expand(teacher_path)
    unlabelled = expand(unlabelled) if unlabelled is not None else None
    inputs = [teacher_path] + ([unlabelled] if unlabelled is not None else [])
    output = check_output_dir(output_dir, "student", overwrite=overwrite, inputs=inputs)
    teacher_dir = find_model_dir(teacher_path)
    teacher = Predictor.from_dir(teacher_path)
    teacher.require_classifier("distill")
    splits = _teacher_splits(teacher_path, teacher_dir)
    extra = read_texts(unlabelled, text_column or teacher.info.text_column) if unlabelled is not None else []
    texts = _distillation_texts(splits, extra, settings, teacher_path)
    logger.info("distill: %d texts for the teacher to label", len(texts))
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    soft = teacher.predict_logits(texts, progress=True)
    timings["teacher_labels_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    table, init = initial_table(teacher.model, teacher.tokenizer, settings)
    timings["init_s"] = time.perf_counter() - clock
    student = build_student(
        table,
        teacher.labels,
        teacher.task.problem_type,
        settings,
        extra={"distilled_from": str(teacher_dir), "init": init},
    )
    ids = tokenize(teacher.tokenizer, texts, None, teacher.max_length)["input_ids"]
    clock = time.perf_counter()
    labels = training_labels(splits, texts, teacher.labels) if settings.label_weight > 0 else None
    if labels is not None and np.isnan(labels).all():
        logger.warning("distill: --label-weight has no training labels to use (not a run folder): the teacher alone")
    losses = train_student(student, ids, soft, settings, multi_label=teacher.multi_label, labels=labels)
    timings["train_s"] = time.perf_counter() - clock
    # Predictor takes any module that answers like a transformers classifier (see adaptext.inference.loaders).
    learner = Predictor(
        cast(Any, student), teacher.tokenizer, max_length=teacher.max_length, threshold=teacher.threshold
    )
    info = _student_info(teacher)
    learner.info = info
    scores = _compare(teacher, learner, splits)
    timings["total_s"] = time.perf_counter() - started
    summary: dict[str, Any] = {
        "teacher": str(teacher_dir),
        "teacher_kind": type(teacher.model).__name__,
        "labels": len(teacher.labels),
        "texts": {
            "train": len(splits.train) if splits is not None else 0,
            "copies_per_text": settings.augment,
            "unlabelled": len(extra),
            "unlabelled_file": str(unlabelled) if unlabelled is not None else None,
            "distilled_on": len(texts),
        },
        "settings": asdict(settings),
        "init": init,
        "dim": int(table.shape[1]),
        "epoch_losses": losses,
        "seconds": timings,
    } | scores
    info = info.extended(distill={"teacher": str(teacher_dir), "agreement": scores["agreement"]})

    def write(folder: Path) -> None:
        teacher.tokenizer.save_pretrained(folder)
        student.save(folder)  # after the tokenizer: config.json is the student's
        info.write(folder)
        write_json(folder / REPORT_JSON, summary)
        write_page(folder / REPORT_PAGE, summary)

    replace_folder(output, write, "student")
    logger.info("distill: student written to %s in %.0f s", output, timings["total_s"])
    return summary


def _teacher_splits(teacher_path: Path, teacher_dir: Path) -> Splits | None:
    """The teacher's run data, read through its `config.yaml`; None for a model folder outside a run."""
    for folder in (teacher_path, teacher_dir.parent if teacher_dir.name == MODEL_SUBDIR else None):
        if folder is not None and (folder / RUN_CONFIG).is_file():
            splits = load_splits(load_config(folder / RUN_CONFIG))
            if splits.train.pairs is not None:
                raise AdaptextError(
                    f"{folder / RUN_CONFIG}: the teacher reads text pairs; a static student reads single texts only"
                )
            return splits
    return None


def _distillation_texts(
    splits: Splits | None, extra: list[str], settings: StudentSettings, teacher_path: Path
) -> list[str]:
    if splits is None and not extra:
        raise AdaptextError(
            f"{teacher_path}: no {RUN_CONFIG} to find the training texts in (not a run folder); "
            "give texts to distil on with --unlabelled FILE"
        )
    train = splits.train.texts if splits is not None else []
    texts = unique([*train, *augment(train, settings.augment, settings.seed), *extra])
    if splits is not None:
        # Texts of the evaluated splits stay out, so the agreement reported on them is measured on unseen text.
        held = set(splits.validation.texts) | set(splits.test.texts if splits.test is not None else [])
        texts = [text for text in texts if text not in held]
    if not texts:
        raise AdaptextError(f"{teacher_path}: no texts left to distil on")
    return texts


def training_labels(splits: Splits | None, texts: list[str], names: list[str]) -> np.ndarray:
    """(texts, labels): each text's training label one-hot (several for multi-label data), NaN rows for texts that
    are not training texts (augmented copies, unlabelled text) or when there is no run to read labels from. A text
    given twice with different labels keeps its first."""
    labels = np.full((len(texts), len(names)), np.nan, dtype=np.float32)
    if splits is None or splits.train.labels is None:
        return labels
    column = {name: i for i, name in enumerate(names)}
    known: dict[str, list[str]] = {}
    for text, label in zip(splits.train.texts, splits.train.labels, strict=True):
        known.setdefault(text, label if isinstance(label, list) else [str(label)])
    for row, text in enumerate(texts):
        if text in known:
            labels[row] = 0.0
            for name in known[text]:
                if name not in column:
                    raise AdaptextError(f"training label {name!r} of {text[:60]!r} is not one of the teacher's labels")
                labels[row, column[name]] = 1.0
    return labels


def _student_info(teacher: Predictor) -> ModelInfo:
    # A fresh record: the teacher's strategy extras (a prompt template, an NLI scorer, an ONNX backend) describe
    # how the teacher reads text, not the student, and would send the folder to the teacher's loader.
    source = teacher.info
    return ModelInfo(
        strategy="distill",
        labels=teacher.labels,
        problem_type=teacher.task.problem_type,
        max_length=teacher.max_length,
        threshold=teacher.threshold,
        text_column=source.text_column,
        label_column=source.label_column,
        label_delimiter=source.label_delimiter,
    )


def _compare(teacher: Predictor, student: Predictor, splits: Splits | None) -> dict[str, Any]:
    """Accuracy of both and their agreement on each evaluated split, with texts/s on it."""
    evaluated: dict[str, TextData] = {}
    if splits is not None:
        evaluated["validation"] = splits.validation
        if splits.test is not None:
            evaluated["test"] = splits.test
    accuracy: dict[str, dict[str, float]] = {}
    agreement: dict[str, float] = {}
    speed: dict[str, dict[str, float]] = {}
    disagreements: list[dict[str, Any]] = []
    for name, data in evaluated.items():
        probs, rates = {}, {}
        for who, predictor in (("teacher", teacher), ("student", student)):
            clock = time.perf_counter()
            with torch.inference_mode():
                probs[who] = predictor.predict_proba(data.texts)
            rates[who] = len(data) / max(time.perf_counter() - clock, 1e-9)
        speed[name] = rates
        accuracy[name] = {
            who: float(evaluate_data(predictor, data, probs[who]).metrics["accuracy"])
            for who, predictor in (("teacher", teacher), ("student", student))
        }
        decided = {who: teacher.task.decide(p, teacher.threshold) for who, p in probs.items()}
        same = np.all(decided["teacher"] == decided["student"], axis=1)
        agreement[name] = float(same.mean())
        if name == "validation":
            disagreements = [
                {
                    "text": data.texts[i],
                    "label": data.labels[i] if data.labels is not None else None,
                    "teacher": teacher.labels[int(probs["teacher"][i].argmax())],
                    "student": teacher.labels[int(probs["student"][i].argmax())],
                }
                for i in np.flatnonzero(~same)[:20]
            ]
    return {
        "accuracy": accuracy,
        "agreement": agreement,
        "texts_per_second": speed,
        "disagreements": disagreements,
    }
