"""Robust training objectives: adversarial perturbations of the input embeddings (FGM, PGD) and R-Drop.

`robust_objective(base, settings)` wraps the objective a strategy trains with (cross-entropy, AdaLoRA's) and
returns it unchanged when `robust` asks for nothing, so the clean path computes exactly what it computed before.
The wrapper only calls the base objective's `loss`, so class weights, label smoothing and AdaLoRA's penalty stay
the base's business:

- `fgm`: the gradient of the clean loss with respect to the word embeddings' output gives, per example, the
  direction `g / ||g||` (norm over all non-padding tokens and dimensions); the loss at `embeddings + epsilon * that`
  is added to the clean loss (Miyato et al. 2017).
- `pgd`: from zero, `pgd_steps` steps of `pgd_alpha * g / ||g||`, each followed by a projection onto the ball of
  radius `epsilon` (Madry et al. 2018, in embedding space as in FreeLB); the loss at the last point is added. It
  starts at zero, so one step of size `epsilon` is FGM.
- `rdrop`: the batch runs twice with independent dropout (stacked as one batch of twice the size, so one forward
  pass serves data-parallel training too); the loss is the base loss of both copies plus alpha times the mean of
  the two KL directions between their predictions (Liang et al. 2021).

The perturbation is added by a forward hook on the model's input-embedding layer, so the model keeps reading
`input_ids` (a model whose position ids depend on them, such as RoBERTa, stays exactly as it trains otherwise), and
peft adapters, whose embeddings are frozen, are perturbed the same way.

>>> objective = robust_objective(OBJECTIVES.get("cross_entropy")(task), config.robust)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from adaptext.core.config import RobustSection
from adaptext.core.errors import ConfigError
from adaptext.training.objectives import CrossEntropy, Objective

logger = logging.getLogger(__name__)


def robust_objective(base: Objective, settings: RobustSection) -> Objective:
    """`base` with `settings`' label smoothing, wrapped for adversarial training and R-Drop when asked; `base`
    itself (unchanged) when `settings` asks for nothing."""
    if settings.label_smoothing:
        if not isinstance(base, CrossEntropy):
            raise ConfigError(f"robust.label_smoothing: the {type(base).__name__} objective has no cross-entropy")
        base.label_smoothing = settings.label_smoothing
    if settings.adversarial == "none" and not settings.rdrop:
        return base
    if not base.example_wise:
        raise ConfigError(
            f"robust.adversarial and robust.rdrop need a loss per example; {type(base).__name__} is not one"
        )
    return RobustObjective(base, settings)


def per_example_norm(values: torch.Tensor) -> torch.Tensor:
    """(batch, ...) -> (batch, 1, ..., 1): each example's L2 norm over all its other dimensions."""
    norms = values.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (values.dim() - 1)))


def normalised(grad: torch.Tensor) -> torch.Tensor:
    """Each example's slice scaled to norm 1 (an example whose gradient is zero stays zero)."""
    return grad / per_example_norm(grad).clamp_min(1e-12)


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Each example's slice scaled back onto the L2 ball of radius `epsilon` when it lies outside."""
    return delta * (epsilon / per_example_norm(delta).clamp_min(epsilon))


def symmetric_kl(first: torch.Tensor, second: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Mean over the batch of (KL(P1||P2) + KL(P2||P1)) / 2 between two (batch, num_labels) logits: softmax
    distributions, or one Bernoulli per label (summed over labels) for multi-label logits."""
    first, second = first.float(), second.float()
    if multi_label:
        log_p = torch.stack([F.logsigmoid(first), F.logsigmoid(-first)])  # (2, batch, labels): log p, log(1-p)
        log_q = torch.stack([F.logsigmoid(second), F.logsigmoid(-second)])
        total = (log_p.exp() * (log_p - log_q) + log_q.exp() * (log_q - log_p)).sum(dim=(0, 2))
    else:
        log_p, log_q = F.log_softmax(first, dim=-1), F.log_softmax(second, dim=-1)
        total = (log_p.exp() * (log_p - log_q) + log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return total.mean() / 2


class EmbeddingPerturbation:
    """Adds a perturbation to the output of the model's input-embedding layer on every forward pass.

    `delta` (batch, seq_len, hidden) is added when set; with `track()` the next pass adds a zero tensor that
    requires grad instead, so that the gradient of a loss with respect to the embeddings can be read from it.
    """

    def __init__(self, model: nn.Module) -> None:
        layer = getattr(model, "get_input_embeddings", lambda: None)()
        if not isinstance(layer, nn.Module):
            raise ConfigError(f"robust.adversarial: {type(model).__name__} has no input-embedding layer to perturb")
        self.delta: torch.Tensor | None = None
        self.tracking = False
        self._handle = layer.register_forward_hook(self._add)

    def _add(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self.tracking:
            self.delta = torch.zeros_like(output, requires_grad=True)
            self.tracking = False
        if self.delta is None:
            return None
        return output + self.delta.to(output.dtype)

    def track(self) -> None:
        """The next forward pass adds a zero `delta` that requires grad (the gradient's handle)."""
        self.delta, self.tracking = None, True

    def close(self) -> None:
        self._handle.remove()


class LogitsTap:
    """Keeps the logits of the model's last forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = model.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.value = output.logits if hasattr(output, "logits") else output[0]

    def close(self) -> None:
        self._handle.remove()


def has_dropout(model: nn.Module) -> bool:
    """Whether any dropout layer of `model` zeroes anything in training mode."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


class RobustObjective(Objective):
    """A base objective trained adversarially (FGM or PGD on the input embeddings) and/or with R-Drop."""

    def __init__(self, base: Objective, settings: RobustSection) -> None:
        super().__init__(base.task, None)
        self.base, self.settings = base, settings
        self.perturbation: EmbeddingPerturbation | None = None
        self.logits: LogitsTap | None = None

    def bind(self, model: nn.Module, device: torch.device) -> None:
        self.base.bind(model, device)
        if self.settings.adversarial != "none":
            self.perturbation = EmbeddingPerturbation(model)
        if self.settings.rdrop:
            self.logits = LogitsTap(model)
            if not has_dropout(model):
                logger.warning(
                    "robust.rdrop=%g: %s has no dropout, so its two passes agree and R-Drop adds nothing",
                    self.settings.rdrop,
                    type(model).__name__,
                )

    def train_mode(self, model: nn.Module) -> None:
        self.base.train_mode(model)

    def next_batch(self, index: torch.Tensor) -> None:
        self.base.next_batch(torch.cat([index, index]) if self.settings.rdrop else index)

    def after_step(self, step: int) -> None:
        self.base.after_step(step)

    def close(self) -> None:
        for hook in (self.perturbation, self.logits):
            if hook is not None:
                hook.close()
        self.perturbation = self.logits = None
        self.base.close()

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        examples = len(targets)
        if self.settings.rdrop:  # two copies of the batch, each with its own dropout
            inputs = {name: torch.cat([value, value]) for name, value in inputs.items()}
            targets = torch.cat([targets, targets])
        if self.perturbation is not None:
            self.perturbation.track()
        clean, _ = self.base.loss(model, inputs, targets)
        total = clean
        if self.logits is not None:
            assert self.logits.value is not None
            first, second = self.logits.value.chunk(2)
            total = total + self.settings.rdrop * symmetric_kl(first, second, self.task.multi_label)
        if self.perturbation is not None:
            total = total + self.settings.adversarial_weight * self.adversarial_loss(model, inputs, targets, clean)
        return total, examples

    def adversarial_loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor, clean: torch.Tensor
    ) -> torch.Tensor:
        """The base loss at the perturbed embeddings (FGM's step, or PGD's last point)."""
        tap, settings = self.perturbation, self.settings
        assert tap is not None and tap.delta is not None
        grad = torch.autograd.grad(clean, tap.delta, retain_graph=True)[0]
        mask = inputs["attention_mask"][..., None].to(grad.dtype) if "attention_mask" in inputs else 1.0
        if settings.adversarial == "fgm":
            delta = settings.epsilon * normalised(grad * mask)
        else:
            alpha = settings.pgd_alpha or 2.5 * settings.epsilon / settings.pgd_steps
            delta = project(alpha * normalised(grad * mask), settings.epsilon)
            for _ in range(settings.pgd_steps - 1):
                tap.delta = delta.requires_grad_()
                loss, _ = self.base.loss(model, inputs, targets)
                grad = torch.autograd.grad(loss, delta)[0]
                delta = project(delta.detach() + alpha * normalised(grad * mask), settings.epsilon)
        tap.delta = delta.detach()
        try:
            adversarial, _ = self.base.loss(model, inputs, targets)
        finally:
            tap.delta = None
        return adversarial
