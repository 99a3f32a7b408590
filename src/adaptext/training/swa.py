"""Stochastic weight averaging (SWA, Izmailov et al. 2018): the mean of the trainable weights over the last part of a
run, which the engine evaluates and saves as the run's model (`train.swa_start`, `train.swa_every`).

The averaged steps are `first, first + every, first + 2 * every, ...` up to the last step, where
`first = ceil(swa_start * steps)` (at least 1). The running mean is torch's SWA update
(`torch.optim.swa_utils.get_swa_multi_avg_fn`: `avg += (current - avg) / (n + 1)`), kept for the trainable
parameters only (frozen ones never change, so their mean is themselves), and saved with every checkpoint so a
resumed run continues the same average.

There is no batch-norm update (torch's `update_bn`) after averaging: transformers normalise with LayerNorm, which
keeps no running statistics, so the averaged weights need no pass over the data.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import get_swa_multi_avg_fn

from adaptext.core.config import TrainConfig
from adaptext.modeling.used_rows import ROWS, UsedRowsEmbedding

SWA_FILE = "swa.safetensors"  # in a checkpoint folder: the running mean, and how many steps it holds


def first_averaged_step(swa_start: float, steps: int) -> int:
    """The first optimizer step whose weights enter the average: `swa_start` of `steps` done, at least 1."""
    return max(1, math.ceil(round(swa_start * steps, 9)))


class WeightAverage:
    """The running mean of a model's trainable weights at the steps SWA averages.

    >>> swa = WeightAverage(model, first_step=80, every=5)  # doctest: +SKIP
    >>> swa.due(85), swa.due(86)  # doctest: +SKIP
    (True, False)
    """

    def __init__(self, model: nn.Module, *, first_step: int, every: int) -> None:
        self.first_step, self.every = first_step, every
        named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.average = [param.detach().clone() for param in self.params]  # meaningless until `count` > 0
        # the rows a `UsedRowsEmbedding` trains, by its parameter's name: a checkpoint that trained every row holds
        # the average of the whole matrix under the plain layer's name
        self.rows = {
            f"{prefix}.{ROWS}": module.used
            for prefix, module in model.named_modules()
            if isinstance(module, UsedRowsEmbedding)
        }
        self.count = 0  # weight snapshots in the average
        self._update = get_swa_multi_avg_fn()

    @classmethod
    def for_run(cls, model: nn.Module, cfg: TrainConfig, steps: int) -> WeightAverage | None:
        """The average a run of `steps` optimizer steps keeps under `cfg`; None when SWA is off."""
        if cfg.swa_start is None:
            return None
        return cls(model, first_step=first_averaged_step(cfg.swa_start, steps), every=cfg.swa_every)

    def due(self, step: int) -> bool:
        """True when the weights after optimizer step `step` (counted from 1) enter the average."""
        return step >= self.first_step and (step - self.first_step) % self.every == 0

    @torch.no_grad()
    def update(self) -> None:
        """Add the model's current weights to the average."""
        current = [param.detach() for param in self.params]
        self._update(self.average, current, self.count)  # the first snapshot replaces the placeholder (weight 1)
        self.count += 1

    @torch.no_grad()
    def apply(self) -> None:
        """Put the averaged weights into the model."""
        for param, mean in zip(self.params, self.average, strict=True):
            param.copy_(mean)

    def save(self, folder: Path) -> None:
        """Write the average and its count into the checkpoint `folder`."""
        tensors = {name: mean.detach().cpu().contiguous() for name, mean in zip(self.names, self.average, strict=True)}
        save_file(tensors, str(folder / SWA_FILE), metadata={"count": str(self.count)})

    def load(self, folder: Path) -> None:
        """Restore the average saved in the checkpoint `folder` (none saved: the average starts empty)."""
        path = folder / SWA_FILE
        if not path.is_file():
            self.count = 0
            return
        with safe_open(str(path), framework="pt") as handle:
            count = int((handle.metadata() or {}).get("count", "0"))
        tensors = load_file(str(path))
        with torch.no_grad():
            for name, mean in zip(self.names, self.average, strict=True):
                if name not in tensors and name in self.rows:
                    mean.copy_(tensors[name.removesuffix(ROWS) + "weight"][self.rows[name]])
                else:
                    mean.copy_(tensors[name])
        self.count = count
