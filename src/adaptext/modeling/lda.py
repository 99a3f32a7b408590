"""Streaming linear discriminant analysis: a head computed from running class statistics of a frozen encoder.

`continual.method: slda` trains no weights. Each increment embeds its training texts with the model's encoder (which
never changes, so nothing it knew is lost), adds them to running statistics, and recomputes the head as linear
discriminant analysis with a shared, shrunk covariance and equal class priors (Hayes and Kanan, 2020, "Lifelong
machine learning with deep streaming linear discriminant analysis"):

    w_c = S^-1 mu_c,   b_c = -1/2 mu_c^T S^-1 mu_c,   S = (1 - a) * W / (N - C) + a * tr(W / (N - C)) / d * I

where `W` is the pooled within-class scatter. The statistics (per class: count and sum; overall: the sum of x x^T)
add up exactly, so an increment's head is the one a single fit on all data seen so far would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adaptext.modeling.embedding import final_linear

LDA_FILE = "slda.safetensors"


@dataclass
class ClassStatistics:
    """Running sums over every example seen: per class its count and embedding sum, and the overall sum of x x^T."""

    counts: np.ndarray  # (classes,)
    sums: np.ndarray  # (classes, dim)
    gram: np.ndarray  # (dim, dim)

    @classmethod
    def empty(cls, classes: int, dim: int) -> ClassStatistics:
        return cls(np.zeros(classes), np.zeros((classes, dim)), np.zeros((dim, dim)))

    def update(self, embeddings: np.ndarray, targets: np.ndarray, classes: int) -> ClassStatistics:
        """These statistics with `embeddings` (n, dim) of class ids `targets` added, grown to `classes` classes."""
        x = embeddings.astype(np.float64)
        counts = np.concatenate([self.counts, np.zeros(classes - len(self.counts))])
        sums = np.concatenate([self.sums, np.zeros((classes - len(self.sums), x.shape[1]))])
        np.add.at(counts, targets, 1.0)
        np.add.at(sums, targets, x)
        return ClassStatistics(counts, sums, self.gram + x.T @ x)

    def head(self, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
        """The LDA head (weights (classes, dim), bias (classes,)) of these statistics, equal priors."""
        seen = self.counts > 0
        if not seen.all():
            raise ValueError(f"{int((~seen).sum())} class(es) have no examples")
        means = self.sums / self.counts[:, None]
        total, classes = self.counts.sum(), len(self.counts)
        within = self.gram - (means * self.counts[:, None]).T @ means
        covariance = within / max(total - classes, 1.0)
        dim = covariance.shape[0]
        shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
        weights = np.linalg.solve(shrunk, means.T).T  # (classes, dim)
        bias = -0.5 * np.einsum("cd,cd->c", weights, means)
        return weights, bias

    def arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "sums": self.sums, "gram": self.gram}

    def save(self, path: Path) -> None:
        save_arrays(path, self.arrays())

    @classmethod
    def load(cls, path: Path) -> ClassStatistics:
        return cls.of(load_arrays(path))

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> ClassStatistics:
        """The statistics among `arrays` (as `arrays()` names them)."""
        return cls(arrays["counts"], arrays["sums"], arrays["gram"])


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Numpy arrays by name into a safetensors file (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The numpy arrays by name of a safetensors file `save_arrays` wrote."""
    return {k: v.numpy() for k, v in load_file(str(path)).items()}


@torch.no_grad()
def set_head(model: nn.Module, weights: np.ndarray, bias: np.ndarray) -> None:
    """Write an LDA head into the model's final linear layer (its input is the embedding the statistics were of)."""
    layer = final_linear(model)  # type: ignore[arg-type]
    if layer.weight.shape != weights.shape:
        raise ValueError(f"head of shape {tuple(layer.weight.shape)} cannot take weights of shape {weights.shape}")
    layer.weight.copy_(torch.from_numpy(weights).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(torch.from_numpy(bias).to(layer.bias.dtype))
