"""Temperature scaling: one scalar fitted on held-out logits, labels unchanged."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


def fold_temperature(folder: Path, layer: torch.nn.Linear, temperature: float) -> bool:
    """Divide the weight and bias of the output `layer` by `temperature` where they are saved in `folder`, so the
    folder's own logits are calibrated (plain `transformers` and ONNX exports then give the same probabilities).

    The saved tensors are found by value: the one tensor of the layer's shape equal to its weight, and likewise
    for its bias. Returns False, changing nothing, when they are not found exactly once."""
    weight, bias = layer.weight.detach().cpu(), layer.bias.detach().cpu() if layer.bias is not None else None
    found: dict[Path, list[str]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                saved = handle.get_slice(key)
                shape = tuple(saved.get_shape())
                for wanted in (weight, bias):
                    if wanted is not None and shape == tuple(wanted.shape):
                        tensor = handle.get_tensor(key)
                        if torch.equal(tensor.to(wanted.dtype), wanted):
                            found.setdefault(path, []).append(key)
    keys = [key for names in found.values() for key in names]
    if len(keys) != (2 if bias is not None else 1):
        return False
    for path, names in found.items():
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        for key in names:
            tensors[key] = tensors[key] / temperature
        staged = path.with_name(path.name + ".tmp")
        save_file(tensors, str(staged), metadata=metadata)
        staged.replace(path)
    return True


def calibrate_saved(folder: Path, validation: TextData, batch_size: int) -> dict[str, Any] | None:
    """Fit the softmax temperature of the single-label model saved in `folder` on `validation` and apply it: folded
    into the output layer's saved weights where the model has one (`fold_temperature`), else recorded for
    adaptext's `Predictor` to divide the logits by. Either way `adaptext.json` records it under `calibration`.

    Returns the record, or None when there is nothing to fit: multi-label, no validation texts, or a strategy that
    set its own temperature (few-shot heads, zero-shot scorers)."""
    from adaptext.inference.predictor import Predictor

    predictor = Predictor.from_dir(folder, batch_size=batch_size)
    if predictor.multi_label or len(validation) == 0 or predictor.info.temperature is not None:
        return None
    logits = predictor.predict_logits(validation.texts, validation.pairs) / predictor.temperature
    targets = label_targets(validation, predictor.labels, SINGLE_LABEL)
    temperature = fit_temperature(logits, targets, low=0.05, high=20.0)
    before, after = SINGLE_LABEL.scores(logits), SINGLE_LABEL.scores(logits / temperature)
    layer = predictor.feature_layer()
    folded = layer is not None and fold_temperature(folder, layer, temperature)
    record = {
        "temperature": temperature,
        "folded": folded,
        "n": len(validation),
        "ece_before": expected_calibration_error(before, targets),
        "ece_after": expected_calibration_error(after, targets),
        "nll_before": log_loss(before, targets),
        "nll_after": log_loss(after, targets),
    }
    predictor.info.updated(calibration=record).write(folder)
    logger.info(
        "calibration: temperature %.3g (%s) on %d validation texts, ECE %.2f%% -> %.2f%%",
        temperature,
        "folded into the output layer" if folded else "applied by adaptext",
        len(validation),
        100 * record["ece_before"],
        100 * record["ece_after"],
    )
    return record
