"""Temperature scaling: one scalar fitted on held-out logits, labels unchanged."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass


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
