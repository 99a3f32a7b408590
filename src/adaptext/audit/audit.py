"""`audit_files`: likely label errors and duplicates (leakage) of a labelled file, written into an audit folder."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from adaptext.audit.duplicates import Split, find_duplicates
from adaptext.audit.features import check_model_folder, embed_data, load_encoder
from adaptext.audit.labels import score_labels
from adaptext.audit.report import write_audit
from adaptext.audit.result import AuditResult, AuditSettings, Suspect
from adaptext.core.config import DataConfig
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.data.io import load_examples, read_table
from adaptext.data.labels import label_names

logger = logging.getLogger(__name__)


def audit_files(
    data: str | Path,
    output: str | Path,
    *,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    settings: AuditSettings | None = None,
    overwrite: bool = False,
) -> AuditResult:
    """Audit the labelled file `data` (and its leakage into `validation` / `test`) into the folder `output`:
    `suspects.csv`, `duplicates.csv`, `audit.json` and `audit.html`.

    `output` must be new, empty, or an earlier audit folder (replaced only with `overwrite`).

    >>> result = audit_files("train.csv", "audit-out", test="test.csv")  # doctest: +SKIP
    >>> result.suspects[0].row, result.suspects[0].given_label, result.suspects[0].suggested_label  # doctest: +SKIP
    (412, 'negative', 'positive')
    """
    settings = settings or AuditSettings()
    files = {"train": expand(data)} | {
        name: expand(path) for name, path in (("validation", validation), ("test", test)) if path is not None
    }
    inputs = [*files.values(), *([expand(settings.model)] if settings.model else [])]
    target = check_output_dir(output, "audit", overwrite=overwrite, inputs=inputs)
    cfg = _data_config(settings)
    splits = _read_splits(files, cfg)
    result = audit_splits(splits, settings)
    replace_folder(target, lambda folder: write_audit(result, splits, folder), "audit")
    result.output = target
    return result


def audit_splits(splits: list[Split], settings: AuditSettings, *, progress: bool = True) -> AuditResult:
    """The audit of `splits` (the first is the audited, labelled file) without writing anything."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    encoder = load_encoder(settings.model, settings.encoder, max_length=settings.max_length)
    embeddings = [embed_data(encoder, s.data, batch_size=settings.batch_size, progress=progress) for s in splits]
    seconds["embed"] = time.perf_counter() - clock
    train = splits[0].data
    labels = label_names(train)
    index = {name: i for i, name in enumerate(labels)}
    targets = np.asarray([index[str(name)] for name in train.labels or []], dtype=np.int64)
    clock = time.perf_counter()
    logger.info("audit: %d rows, %d labels; scoring labels out of fold", len(train), len(labels))
    scores = score_labels(
        embeddings[0],
        targets,
        len(labels),
        folds=settings.folds,
        method=settings.method,
        classifier=settings.classifier,
        seed=settings.seed,
        progress=progress,
    )
    seconds["labels"] = time.perf_counter() - clock
    clock = time.perf_counter()
    duplicates = find_duplicates(splits, embeddings, settings.near_threshold, progress=progress)
    seconds["duplicates"] = time.perf_counter() - clock
    suspects: list[Suspect] = []
    for position in scores.ranking[scores.flagged[scores.ranking]].tolist():
        # The most probable label other than the given one (the given one may still lead for a flagged row).
        others = np.where(np.arange(len(labels)) == targets[position], -1.0, scores.probabilities[position])
        best = int(np.argmax(others))
        suspects.append(
            Suspect(
                rank=len(suspects) + 1,
                row=train.rows[position],
                text=train.texts[position],
                given_label=labels[targets[position]],
                suggested_label=labels[best],
                confidence=round(float(scores.probabilities[position, best]), 4),
                label_quality=round(float(scores.quality[position]), 4),
            )
        )
    logger.info("audit: %d suspects, %d duplicate pairs", len(suspects), len(duplicates))
    recorded = asdict(settings) | {
        "encoder_source": encoder.source,
        "max_length": encoder.max_length,  # a model's own, with --model
        "folds_used": scores.folds,
    }
    if settings.model is not None:
        recorded["encoder"] = None  # the model's encoder was used, not a pretrained one
    return AuditResult(
        source=train.source,
        n_rows=len(train),
        labels=labels,
        suspects=suspects,
        duplicates=duplicates,
        ranking=scores.ranking,
        quality=scores.quality,
        probabilities=scores.probabilities,
        targets=targets,
        embeddings=embeddings[0],
        settings=recorded | {"files": {split.name: split.data.source for split in splits}},
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )


def _data_config(settings: AuditSettings) -> DataConfig:
    """The columns to read, after checking every setting and the model folder (cheaply, reading no weights)."""
    if settings.folds < 2:
        raise AdaptextError(f"folds must be at least 2, got {settings.folds}")
    if not 0.0 < settings.near_threshold <= 1.0:
        raise AdaptextError(f"near_threshold must be in (0, 1], got {settings.near_threshold}")
    if not 8 <= settings.max_length <= 8192:
        raise AdaptextError(f"max_length must be between 8 and 8192, got {settings.max_length}")
    values: dict[str, Any] = {"max_length": settings.max_length}
    if settings.model is not None:
        info = check_model_folder(settings.model)[2]  # an ONNX, prompt or NLI folder fails here, before any work
        if info.task.multi_label:
            raise AdaptextError(f"{settings.model}: is a multi-label model; an audit checks single-label data")
        values |= {
            "text_column": info.text_column,
            "text_pair_column": info.text_pair_column,
            "label_column": info.label_column,
        }
    values |= {k: v for k, v in settings.columns.items() if v is not None}
    return DataConfig.model_validate(values)


def _read_splits(files: dict[str, Path], cfg: DataConfig) -> list[Split]:
    """The audited file with labels; validation and test with labels where they have the label column."""
    splits = [Split("train", load_examples(files["train"], cfg))]
    for name in ("validation", "test"):
        if name in files:
            has_labels = cfg.label_column in read_table(files[name]).columns
            splits.append(Split(name, load_examples(files[name], cfg, with_labels=has_labels)))
    return splits
