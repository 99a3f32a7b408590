"""Losses: what the engine minimises for a batch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from adaptext.core.config import TrainConfig
from adaptext.core.errors import ConfigError
from adaptext.data.examples import Splits
from adaptext.data.labels import label_targets


def class_weights(cfg: TrainConfig, splits: Splits, multi_label: bool) -> torch.Tensor | None:
    """Loss weights per class: inverse frequency for `auto`, the user's mapping, or None."""
    if cfg.class_weights == "none":
        return None
    labels = splits.labels
    if isinstance(cfg.class_weights, dict):
        unknown = sorted(set(cfg.class_weights) - set(labels))
        if unknown:
            raise ConfigError(f"train.class_weights: unknown label(s) {unknown}; the labels are {labels}")
        return torch.tensor([float(cfg.class_weights.get(name, 1.0)) for name in labels])
    targets = label_targets(splits.train, labels, multi_label)
    counts = targets.sum(axis=0) if multi_label else np.bincount(targets, minlength=len(labels))
    n = len(splits.train)
    if multi_label:  # BCE pos_weight: negatives per positive
        return torch.tensor((n - counts) / np.maximum(counts, 1), dtype=torch.float32)
    return torch.tensor(n / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)


def cross_entropy_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, multi_label: bool
) -> torch.Tensor:
    # (batch, num_labels) logits against class ids (batch,) or multi-hot (batch, num_labels)
    logits = logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    return F.cross_entropy(logits, targets, weight=weights)
