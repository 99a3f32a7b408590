"""Optimizer, learning rate and run length: one rule for every strategy that trains."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel

from adaptext.core.config import AUTO_MAX_EPOCHS, AUTO_MIN_EPOCHS, AUTO_TARGET_STEPS, TrainConfig
from adaptext.modeling.adapters import auto_learning_rate


def resolve_learning_rate(cfg: TrainConfig, model: PreTrainedModel, method: str = "none") -> float:
    """`train.learning_rate`, with `auto` chosen by the peft method, else by the model's width (measured:
    docs/benchmarks.md)."""
    if cfg.learning_rate != "auto":
        return float(cfg.learning_rate)
    if method != "none":
        return auto_learning_rate(method)
    hidden = int(getattr(model.config, "hidden_size", 768) or 768)
    if hidden <= 512:
        return 2e-4
    return 5e-5 if hidden <= 768 else 2e-5


def resolve_epochs(cfg: TrainConfig, steps_per_epoch: int) -> float:
    """`train.epochs`, with `auto` giving about AUTO_TARGET_STEPS optimizer steps within the allowed range."""
    if cfg.epochs != "auto":
        return float(cfg.epochs)
    return float(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_TARGET_STEPS / steps_per_epoch))))


def build_optimizer(model: nn.Module, cfg: TrainConfig, learning_rate: float) -> torch.optim.Optimizer:
    """Fused AdamW over the trainable parameters, with `train.weight_decay` on the weight matrices only.

    Biases and normalisation weights (any parameter of one dimension, or whose name says norm) are not decayed:
    pulling a LayerNorm's scale towards zero shrinks the layer's output rather than regularising it. The same rule
    holds for every strategy that trains; the optimizer's two parameter groups are decayed and not decayed.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass: on CPU the optimizer step took about a third of a
    # MiniLM training step with the foreach implementation (see docs/benchmarks.md).
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True)


def planned_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of a run: `train.max_steps`, else `train.epochs` of `batches_per_epoch` batches."""
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(resolve_epochs(cfg, steps_per_epoch) * steps_per_epoch))


def eval_batch_size(cfg: TrainConfig) -> int:
    """Examples per batch when evaluating, the same during training and in the final evaluation: padding
    depends on how examples are batched, so another batch size gives slightly different logits."""
    return cfg.eval_batch_size or cfg.batch_size * 2
