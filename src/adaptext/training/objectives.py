"""Objectives: what the engine minimises for a batch, and what a method must do after an optimizer step.

An objective computes the loss of one batch and says how many examples it averaged over (the engine weighs its
loss records by it). A strategy names its objective in `OBJECTIVES`; adding an objective is adding a class here or
anywhere that registers one. Objectives are built as `cls(task, weights)`: the run's `Task` and the per-class loss
weights (`train.class_weights`), None when not weighted.

>>> from adaptext.training.objectives import OBJECTIVES, CrossEntropy
>>> @OBJECTIVES.register("smoothed")  # doctest: +SKIP
... class Smoothed(CrossEntropy): ...
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from adaptext.core.config import TrainConfig
from adaptext.core.errors import ConfigError
from adaptext.core.registry import Registry
from adaptext.core.task import Task
from adaptext.data.examples import Splits
from adaptext.data.labels import label_targets
from adaptext.modeling.embedding import EmbeddingTap


class Objective:
    """The loss of a batch. Subclasses override `loss`, and the other hooks only when they need them."""

    # The loss is a mean of per-example terms, so a batch split across processes (data parallelism) has the same
    # gradient as the whole batch in one process. A loss over pairs within the batch is not: it trains as one process.
    example_wise: ClassVar[bool] = True

    def __init__(self, task: Task, weights: torch.Tensor | None = None) -> None:
        self.task = task
        self.weights = weights

    def bind(self, model: nn.Module, device: torch.device) -> None:
        """Called once before training with the (unwrapped) model on its device."""
        if self.weights is not None:
            self.weights = self.weights.to(device)

    def train_mode(self, model: nn.Module) -> None:
        """Put the (unwrapped) model in the mode it trains in; the engine calls it after every evaluation too."""
        model.train()

    def next_batch(self, index: torch.Tensor) -> None:
        """The dataset positions of the examples in the batch that `loss` scores next (for per-example targets
        computed before training, such as a previous model's scores)."""

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """The mean loss of the batch and the number of examples it averages over."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """After optimizer step `step` (counted from 0), before the gradients are cleared."""

    def close(self) -> None:
        """Training ended: remove whatever `bind` attached to the model."""


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def class_weights(cfg: TrainConfig, splits: Splits, task: Task) -> torch.Tensor | None:
    """Loss weights per class: inverse frequency for `auto`, the user's mapping, or None.

    Multi-label weights are BCE's `pos_weight`: negatives per positive of each label.
    """
    if cfg.class_weights == "none":
        return None
    if task.regression:
        raise ConfigError("train.class_weights weighs classes; a regression task has none (set it to none)")
    labels = splits.labels
    if isinstance(cfg.class_weights, dict):
        unknown = sorted(set(cfg.class_weights) - set(labels))
        if unknown:
            raise ConfigError(f"train.class_weights: unknown label(s) {unknown}; the labels are {labels}")
        return torch.tensor([float(cfg.class_weights.get(name, 1.0)) for name in labels])
    targets = label_targets(splits.train, labels, task)
    counts = targets.sum(axis=0) if task.multi_label else np.bincount(targets, minlength=len(labels))
    n = len(splits.train)
    if task.multi_label:
        return torch.tensor((n - counts) / np.maximum(counts, 1), dtype=torch.float32)
    return torch.tensor(n / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)


def cross_entropy_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    task: Task,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """(batch, num_labels) logits against class ids (batch,), or multi-hot rows (batch, num_labels) with BCE, or
    for a regression task (batch, 1) values against targets (batch,) with mean squared error.

    `smoothing` (label smoothing, `robust.label_smoothing`): a class id's target puts 1 - s on it and spreads s
    over all classes (torch's `label_smoothing`); a multi-hot row's 0/1 targets become s/2 and 1 - s/2.
    """
    logits = logits.float()
    if task.regression:  # (batch, 1) values against (batch,) targets: mean squared error
        return F.mse_loss(logits.squeeze(-1), targets.float())
    if task.multi_label:
        if smoothing:
            targets = targets * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    if smoothing:
        return F.cross_entropy(logits, targets, weight=weights, label_smoothing=smoothing)
    return F.cross_entropy(logits, targets, weight=weights)


@OBJECTIVES.register("cross_entropy")
class CrossEntropy(Objective):
    """Cross-entropy of the model's logits (BCE per label for a multi-label task), class-weighted if asked."""

    label_smoothing: float = 0.0  # `robust.label_smoothing`, set on the instance by the strategy

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        logits = model(**inputs).logits
        return cross_entropy_loss(logits, targets, self.weights, self.task, self.label_smoothing), len(targets)


@OBJECTIVES.register("adalora")
class AdaLoraCrossEntropy(CrossEntropy):
    """Cross-entropy plus AdaLoRA's orthogonality penalty, and AdaLoRA's rank budgeting after each step."""

    def bind(self, model: nn.Module, device: torch.device) -> None:
        super().bind(model, device)
        self.model: Any = model  # a peft model holding AdaLoRA

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        # AdaLoRA adds its penalty to the loss the model computes itself; keep that penalty (the model's loss minus
        # its plain cross-entropy) on top of our (weighted) loss.
        outputs = model(**inputs, labels=targets)
        penalty = outputs.loss - cross_entropy_loss(outputs.logits, targets, None, self.task)
        loss = cross_entropy_loss(outputs.logits, targets, self.weights, self.task, self.label_smoothing)
        return loss + penalty, len(targets)

    def after_step(self, step: int) -> None:
        # Rank budgeting reads the gradients of this step, so it runs before they are cleared.
        self.model.base_model.update_and_allocate(step)


@OBJECTIVES.register("pet")
class PetLoss(CrossEntropy):
    """PET's loss: cross-entropy over the verbalizer words' masked-LM logits at the mask (which is what a
    `PromptClassifier` returns as its logits), for single-label tasks only."""

    def __init__(self, task: Task, weights: torch.Tensor | None = None) -> None:
        if task.multi_label or task.regression:
            raise ConfigError(
                "strategy prompt scores single-label tasks; set data.multi_label=false, data.problem=classification"
            )
        super().__init__(task, weights)


def pair_targets(targets: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, n) matrix: 1 where two examples share a label (the class, or any label of a multi-hot row), else 0."""
    rows = torch.as_tensor(targets)
    same = rows[:, None] == rows[None, :] if rows.ndim == 1 else (rows.float() @ rows.float().T) > 0
    return same.float()


def contrastive_loss(embeddings: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair in the batch: squared error of the pair's cosine similarity
    against 1 (same label) or 0, positives and negatives weighted equally."""
    normed = F.normalize(embeddings.float(), dim=-1)
    cosine = normed @ normed.T  # (batch, batch)
    upper = torch.triu(torch.ones_like(same, dtype=torch.bool), diagonal=1)
    errors = (cosine - same)[upper] ** 2
    positive = same[upper].bool()
    parts = [errors[mask].mean() for mask in (positive, ~positive) if mask.any()]
    return torch.stack(parts).mean()


@OBJECTIVES.register("contrastive")
class Contrastive(Objective):
    """Few-shot's contrastive loss on the embeddings (the input of the model's final layer) of every pair in the
    batch. Class weights do not apply: positive and negative pairs are weighted equally."""

    example_wise: ClassVar[bool] = False  # its pairs span the whole batch

    def bind(self, model: nn.Module, device: torch.device) -> None:
        self.tap = EmbeddingTap(model)  # type: ignore[arg-type]

    def train_mode(self, model: nn.Module) -> None:
        # Dropout on the embedding itself would zero a tenth of its dimensions in every pair's cosine; the encoder's
        # own dropout (as in SetFit's sentence encoders) stays. So the head runs in eval mode; the pooling layer
        # has no dropout (`model.add_mean_pooling`).
        model.train()
        base = getattr(model, "base_model", None)
        for module in model.children():
            if module is not base:
                module.eval()

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        model(**inputs)
        embeddings = self.tap.value  # (batch, hidden), captured on the way into the head
        assert embeddings is not None
        return contrastive_loss(embeddings, pair_targets(targets)), len(targets)

    def close(self) -> None:
        self.tap.close()
