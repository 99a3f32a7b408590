"""Fitting an out-of-scope detector (`adaptext.inference.ood`) for a saved model, from in-scope data only."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from adaptext.core.config import OodSection
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.data.examples import TextData
from adaptext.data.labels import label_targets
from adaptext.inference.ood import (
    FEATURE_SCORES,
    MAX_BANK,
    REFERENCE_POINTS,
    OodDetector,
    class_statistics,
    normalised,
    resolve_method,
)
from adaptext.inference.predictor import Predictor

logger = logging.getLogger(__name__)


def fit_detector(predictor: Predictor, train: TextData, validation: TextData, section: OodSection) -> OodDetector:
    """Fit the detector `section` describes on in-scope data: references from `train`, threshold from
    `validation` (so that `section.in_scope_recall` of it stays in scope)."""
    if predictor.multi_label:
        raise ConfigError("ood.method is for single-label models")
    if section.label in predictor.labels:
        raise ConfigError(f"ood.label {section.label!r} is one of the model's labels; choose another name")
    if len(validation) == 0:
        raise ConfigError("ood.method needs in-scope validation texts to set its threshold")
    has_features = predictor.feature_layer() is not None
    method = resolve_method(section.method, has_features)
    if method in FEATURE_SCORES and not has_features:
        raise ConfigError(
            f"ood.method {method} reads the features the model's output layer takes, and this model has no such "
            "layer; use msp or energy"
        )
    detector = OodDetector(
        method=method,
        threshold=0.0,
        label=section.label,
        reference=np.zeros(1),
        k=section.knn_k,
        in_scope_recall=section.in_scope_recall,
    )
    if method in FEATURE_SCORES:
        features = _features(predictor, train)
        if method == "mahalanobis":
            targets = label_targets(train, predictor.labels, predictor.task)
            means, precision = class_statistics(features, targets, len(predictor.labels))
            detector.arrays = {"means": means, "precision": precision}
        else:
            if len(features) > MAX_BANK:
                keep = np.random.default_rng(0).choice(len(features), MAX_BANK, replace=False)
                features = features[np.sort(keep)]
            detector.arrays = {"bank": normalised(features).astype(np.float16)}
    logits, probs, held_out = predictor.predict_with_features(
        validation.texts, validation.pairs, features=method in FEATURE_SCORES
    )
    scores = detector.scores(logits, probs, held_out)
    detector.threshold = float(np.quantile(scores, section.in_scope_recall, method="inverted_cdf"))
    detector.reference = np.quantile(scores, np.linspace(0, 1, REFERENCE_POINTS))
    kept = float((~detector.out_of_scope(scores)).mean())
    logger.info(
        "out-of-scope detector %s: threshold %.4g keeps %.1f%% of %d validation texts in scope",
        method,
        detector.threshold,
        100 * kept,
        len(scores),
    )
    return detector


def _features(predictor: Predictor, data: TextData) -> np.ndarray:
    _, _, features = predictor.predict_with_features(data.texts, data.pairs)
    if features is None:
        raise AdaptextError("the model gave no features")
    return features


def fit_saved(folder: Path, train: TextData, validation: TextData, section: OodSection, batch_size: int) -> None:
    """Fit the detector of `section` for the model saved in `folder` and save it there."""
    predictor = Predictor.from_dir(folder, batch_size=batch_size)
    predictor.require_classifier("an out-of-scope detector")
    detector = fit_detector(predictor, train, validation, section)
    detector.save(folder)
    predictor.info.updated(ood=detector.record()).write(folder)
