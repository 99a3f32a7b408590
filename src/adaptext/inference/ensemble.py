"""An ensemble of classifiers answering as one: its logits are the log of the members' weighted mean probability.

Single-label: `softmax(logits)` is exactly `sum_i w_i softmax(logits_i)`. Multi-label: `sigmoid(logits)` is exactly
`sum_i w_i sigmoid(logits_i)` (the logits are the log-odds of the mean). Everything that reads `model(**inputs).logits`
through `task.scores` (`Predictor`, `adaptext predict`, `evaluate`, `serve`) therefore gets the mean probabilities
without knowing it holds an ensemble.

Each member's logits are divided by its own calibration temperature first (`adaptext.json`'s `calibration`), so the
mean is of the probabilities each member's `Predictor.predict_proba` gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers.modeling_outputs import SequenceClassifierOutput

from adaptext.core.info import ModelInfo
from adaptext.core.task import Task
from adaptext.modeling.build import answer_config


def member_temperature(info: ModelInfo) -> float:
    """The softmax temperature a member's `Predictor` divides its logits by (1 when it has none)."""
    calibration = info.to_dict().get("calibration")
    if isinstance(calibration, dict) and calibration.get("temperature"):
        return float(calibration["temperature"])
    return 1.0


class EnsembleClassifier(nn.Module):
    """Members of one label set and one tokenizer, combined by a weighted mean of their probabilities.

    Args:
        members: Classifiers answering `member(**inputs).logits`, (batch, num_labels) each, in label order.
        weights: One positive weight per member; normalised to sum to 1.
        labels: The label names in output order.
        task: Single- or multi-label (softmax or per-label sigmoid probabilities).
        temperatures: Each member's logits are divided by its temperature before its probabilities are taken.
    """

    log_weights: torch.Tensor  # (members, 1, 1), a buffer: it follows the module to its device

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float],
        labels: Sequence[str],
        task: Task,
        temperatures: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        total = float(sum(weights))
        self.members = nn.ModuleList(members)
        self.weights = [w / total for w in weights]
        self.temperatures = list(temperatures) if temperatures is not None else [1.0] * len(members)
        # (members, 1, 1): broadcast over (members, batch, num_labels)
        log_weights = torch.tensor([math.log(w) for w in self.weights], dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("log_weights", log_weights, persistent=False)
        self.multi_label = task.multi_label
        self.config = answer_config(labels, task)

    @property
    def device(self) -> torch.device:
        return self.log_weights.device

    def forward(self, **inputs: Any) -> SequenceClassifierOutput:
        # each member: (batch, num_labels) -> stacked (members, batch, num_labels), in fp32 under any autocast
        logits = torch.stack(
            [
                member(**inputs).logits.float() / temperature
                for member, temperature in zip(self.members, self.temperatures, strict=True)
            ]
        )
        weights = self.log_weights.float()
        if not self.multi_label:
            # log sum_i w_i softmax_i, summed in log space: no probability underflows to log(0)
            return SequenceClassifierOutput(
                logits=torch.logsumexp(weights + functional.log_softmax(logits, dim=-1), dim=0)
            )
        # log-odds of the mean sigmoid: log(sum_i w_i p_i) - log(sum_i w_i (1 - p_i))
        log_p = torch.logsumexp(weights + functional.logsigmoid(logits), dim=0)
        log_not_p = torch.logsumexp(weights + functional.logsigmoid(-logits), dim=0)
        return SequenceClassifierOutput(logits=log_p - log_not_p)
