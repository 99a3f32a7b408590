"""Temperature scaling: one scalar fitted on held-out logits, labels unchanged."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptext.core.task import SINGLE_LABEL
from adaptext.data.labels import label_targets
from adaptext.evaluation.metrics import expected_calibration_error, log_loss

if TYPE_CHECKING:
    from adaptext.data.examples import TextData

logger = logging.getLogger(__name__)


# The temperature of a zero-shot scorer without labelled data to fit one on.
DEFAULT_TEMPERATURE = 0.05


def fit_temperature(logits_at_one: np.ndarray, targets: np.ndarray, low: float = 1e-3, high: float = 1.0) -> float:
    """The temperature in [low, high] minimising the negative log-likelihood of `targets` under softmax(logits / T)
    (a grid of 60 points per decade)."""
    grid = np.exp(np.linspace(math.log(low), math.log(high), round(60 * math.log10(high / low)) + 1))
    best, best_nll = DEFAULT_TEMPERATURE, math.inf
    for temperature in grid:
        z = logits_at_one / temperature
        z = z - z.max(axis=1, keepdims=True)
        nll = -(z[np.arange(len(z)), targets] - np.log(np.exp(z).sum(axis=1))).mean()
        if nll < best_nll:
            best, best_nll = float(temperature), float(nll)
    return best


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def calibrate_saved(folder: Path, validation: TextData, batch_size: int) -> dict[str, Any] | None:
    """Fit the softmax temperature of the single-label model saved in `folder` on `validation` and record it in
    the folder's `adaptext.json` (`calibration`); the model's weights are unchanged. Returns the record, or None
    when there is nothing to fit (multi-label, or no validation texts)."""
    from adaptext.inference.predictor import Predictor

    predictor = Predictor.from_dir(folder, batch_size=batch_size)
    if predictor.multi_label or len(validation) == 0:
        return None
    logits = predictor.predict_logits(validation.texts, validation.pairs) / predictor.temperature
    targets = label_targets(validation, predictor.labels, SINGLE_LABEL)
    temperature = fit_temperature(logits, targets, low=0.05, high=20.0)
    before, after = softmax(logits), softmax(logits / temperature)
    record = {
        "temperature": temperature,
        "n": len(validation),
        "ece_before": expected_calibration_error(before, targets),
        "ece_after": expected_calibration_error(after, targets),
        "nll_before": log_loss(before, targets),
        "nll_after": log_loss(after, targets),
    }
    predictor.info.updated(calibration=record).write(folder)
    logger.info(
        "calibration: temperature %.3g on %d validation texts, ECE %.2f%% -> %.2f%%",
        temperature,
        len(validation),
        100 * record["ece_before"],
        100 * record["ece_after"],
    )
    return record
