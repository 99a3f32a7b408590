"""What each continual method adds to training: EWC's penalty, LwF's distillation, and the head's weight aligning.

`ContinualLoss` is the engine objective of a continued run: the cross-entropy of fine-tuning (on the new data and
any replayed memory) plus the terms of the configured methods.

- EWC (Kirkpatrick et al., 2017): `lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`, with `F` the diagonal of the
  Fisher information (mean squared per-example gradient of the log-likelihood) at the weights `theta*` the previous
  runs ended at; online: the Fishers of successive runs add up, the anchor is the latest weights.
- LwF (Li and Hoiem, 2016): `weight * T^2 * KL(softmax(old / T) || softmax(new / T))` over the old labels, with the
  previous model's scores of each training text computed once before training.
- Weight aligning (Zhao et al., 2020): after training, the new labels' head rows are scaled to the old rows' mean
  norm, which removes most of the bias towards the labels with many examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import nn

from adaptext.core.task import Task
from adaptext.data.batching import Encoded
from adaptext.modeling.embedding import final_linear
from adaptext.training.objectives import CrossEntropy, cross_entropy_loss

EWC_FILE = "ewc.safetensors"
FISHER_EXAMPLES = 256  # examples whose gradients estimate the Fisher after each run


@dataclass
class EwcState:
    """The diagonal Fisher and the anchor weights of every trained parameter, by parameter name."""

    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]

    def save(self, path: Path) -> None:
        tensors = {f"fisher.{k}": v.contiguous() for k, v in self.fisher.items()}
        tensors |= {f"anchor.{k}": v.contiguous() for k, v in self.anchor.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path) -> EwcState:
        tensors = load_file(str(path))
        fisher = {k.removeprefix("fisher."): v for k, v in tensors.items() if k.startswith("fisher.")}
        anchor = {k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")}
        return cls(fisher, anchor)

    def then(self, later: EwcState) -> EwcState:
        """Online EWC: the Fishers summed (a grown head's new rows add to zeros), anchored at `later`'s weights."""
        fisher = {}
        for name, value in later.fisher.items():
            earlier = self.fisher.get(name)
            if earlier is not None and earlier.shape[1:] == value.shape[1:] and len(earlier) <= len(value):
                value = value.clone()
                value[: len(earlier)] += earlier
            fisher[name] = value
        return EwcState(fisher, dict(later.anchor))


def fisher_diagonal(
    model: nn.Module,
    encoded: Encoded,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    task: Task,
    *,
    limit: int = FISHER_EXAMPLES,
    seed: int = 0,
) -> EwcState:
    """The empirical Fisher diagonal of `model`'s trainable parameters over up to `limit` examples of `encoded`
    (a seeded sample), from per-example gradients in eval mode, anchored at the current weights."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named}
    indices = list(range(len(encoded)))
    random.Random(seed).shuffle(indices)
    indices = indices[:limit]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for index in indices:
            batch = {k: v.to(device) for k, v in collate([encoded[index]]).items()}
            targets = batch.pop("labels")
            batch.pop("index")
            model.zero_grad(set_to_none=True)
            cross_entropy_loss(model(**batch).logits, targets, None, task).backward()
            for name, p in named:
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float() ** 2
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    count = max(len(indices), 1)
    return EwcState(
        fisher={name: value / count for name, value in fisher.items()},
        anchor={name: p.detach().float().clone() for name, p in named},
    )


class EwcPenalty:
    """`strength / 2 * sum F (theta - anchor)^2` over the parameters the state knows (a grown head: its old rows)."""

    def __init__(self, state: EwcState, strength: float) -> None:
        self.state, self.strength = state, strength
        self.terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def bind(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        self.terms = []
        for name, param in model.named_parameters():
            fisher, anchor = self.state.fisher.get(name), self.state.anchor.get(name)
            if fisher is None or anchor is None or not param.requires_grad:
                continue
            if param.shape[1:] != anchor.shape[1:] or len(anchor) > len(param):
                continue  # not the same parameter any more
            self.terms.append((param, fisher.to(device), anchor.to(device)))

    def __call__(self) -> torch.Tensor:
        total = sum(
            ((fisher * (param[: len(anchor)].float() - anchor) ** 2).sum() for param, fisher, anchor in self.terms),
            torch.zeros(()),
        )
        return 0.5 * self.strength * total


class Distillation:
    """LwF's term: the old labels' scores kept close to the previous model's (`teacher`, one row per example of
    the training data, in dataset order), softened by `temperature`."""

    def __init__(self, teacher: torch.Tensor, weight: float, temperature: float, task: Task) -> None:
        self.teacher, self.weight, self.temperature, self.task = teacher.float(), weight, temperature, task

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        old = self.teacher[index.to(self.teacher.device)].to(logits.device)
        student = logits[:, : old.shape[1]].float() / t
        if self.task.multi_label:
            loss = F.binary_cross_entropy_with_logits(student, torch.sigmoid(old / t))
        else:
            log_old = F.log_softmax(old / t, dim=-1)
            loss = F.kl_div(F.log_softmax(student, dim=-1), log_old, log_target=True, reduction="batchmean")
        return self.weight * t * t * loss


class ContinualLoss(CrossEntropy):
    """Cross-entropy plus the configured methods' terms (EWC's penalty, LwF's distillation)."""

    def __init__(
        self,
        task: Task,
        weights: torch.Tensor | None = None,
        *,
        ewc: EwcPenalty | None = None,
        lwf: Distillation | None = None,
    ) -> None:
        super().__init__(task, weights)
        self.ewc, self.lwf = ewc, lwf
        self.index: torch.Tensor | None = None

    def bind(self, model: nn.Module, device: torch.device) -> None:
        super().bind(model, device)
        if self.ewc is not None:
            self.ewc.bind(model)

    def next_batch(self, index: torch.Tensor) -> None:
        self.index = index

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        logits = model(**inputs).logits
        total = cross_entropy_loss(logits, targets, self.weights, self.task)
        if self.lwf is not None:
            assert self.index is not None, "the engine names each batch's examples before scoring it"
            total = total + self.lwf(logits, self.index)
        if self.ewc is not None:
            total = total + self.ewc()
        return total, len(targets)


@torch.no_grad()
def align_new_rows(model: nn.Module, old_count: int) -> float | None:
    """Scale the head rows of the labels after the first `old_count` to the old rows' mean norm; returns the factor
    (None when there are no old or no new rows)."""
    layer = final_linear(model)  # type: ignore[arg-type]
    weight = layer.weight
    if old_count <= 0 or old_count >= len(weight):
        return None
    old_norm = weight[:old_count].norm(dim=1).mean()
    new_norm = weight[old_count:].norm(dim=1).mean()
    factor = float(old_norm / new_norm.clamp_min(1e-12))
    weight[old_count:] *= factor
    return factor
