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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adaptext.modeling.embedding import final_linear

LDA_FILE = "slda.safetensors"
SHRINKAGES = (1e-4, 1e-3, 1e-2, 1e-1, 0.3)  # what a shrinkage of `auto` chooses among (`held_out_correct`)
CV_FOLDS = 5


@dataclass
class ClassStatistics:
    """Running sums over every example seen: per class its count and embedding sum, and the overall sum of x x^T."""

    counts: np.ndarray  # (classes,)
    sums: np.ndarray  # (classes, dim)
    gram: np.ndarray  # (dim, dim)
    # for a shrinkage of `auto`: per candidate of SHRINKAGES, the held-out examples its head got right, summed over
    # the increments (`cross_validated`)
    held_out: np.ndarray | None = None

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
        return ClassStatistics(counts, sums, self.gram + x.T @ x, self.held_out)

    def cross_validated(self, embeddings: np.ndarray, targets: np.ndarray) -> ClassStatistics:
        """These statistics, which include `embeddings` of class ids `targets`, with those examples' held-out counts
        (`held_out_correct`) added to the tally; `auto_shrinkage` then reads the tally."""
        correct = held_out_correct(self, embeddings, targets)
        return replace(self, held_out=correct if self.held_out is None else self.held_out + correct)

    def auto_shrinkage(self) -> float:
        """The candidate shrinkage that has classified the most held-out examples right over all increments."""
        if self.held_out is None:
            raise ValueError("no held-out counts: call cross_validated first")
        return best_shrinkage(self.held_out)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The class means (classes, dim) and the pooled within-class covariance (dim, dim)."""
        seen = self.counts > 0
        if not seen.all():
            raise ValueError(f"{int((~seen).sum())} class(es) have no examples")
        means = self.sums / self.counts[:, None]
        total, classes = self.counts.sum(), len(self.counts)
        within = self.gram - (means * self.counts[:, None]).T @ means
        return means, within / max(total - classes, 1.0)

    def head(self, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
        """The LDA head (weights (classes, dim), bias (classes,)) of these statistics, equal priors."""
        return lda_head(*self.moments(), shrinkage)

    def __sub__(self, other: ClassStatistics) -> ClassStatistics:
        """These statistics without `other`'s examples (which they must include; `other` may have fewer classes)."""
        classes = len(other.counts)
        counts, sums = self.counts.copy(), self.sums.copy()
        counts[:classes] -= other.counts
        sums[:classes] -= other.sums
        return ClassStatistics(counts, sums, self.gram - other.gram, self.held_out)

    def arrays(self) -> dict[str, np.ndarray]:
        tally = {} if self.held_out is None else {"held_out": self.held_out}
        return {"counts": self.counts, "sums": self.sums, "gram": self.gram} | tally

    def save(self, path: Path) -> None:
        save_arrays(path, self.arrays())

    @classmethod
    def load(cls, path: Path) -> ClassStatistics:
        return cls.of(load_arrays(path))

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> ClassStatistics:
        """The statistics among `arrays` (as `arrays()` names them)."""
        return cls(arrays["counts"], arrays["sums"], arrays["gram"], arrays.get("held_out"))


def lda_head(means: np.ndarray, covariance: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """LDA weights (classes, dim) and bias (classes,) from class means and a covariance shrunk by `shrinkage`."""
    dim = covariance.shape[0]
    shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
    weights = scipy.linalg.solve(shrunk, means.T, assume_a="pos").T  # Cholesky: half of a general solve's work
    return weights, -0.5 * np.einsum("cd,cd->c", weights, means)


def best_shrinkage(correct: np.ndarray, candidates: Sequence[float] = SHRINKAGES) -> float:
    """The candidate with the most held-out examples right (`correct`, one count per candidate), ties to the larger."""
    best = max(range(len(candidates)), key=lambda i: (correct[i], candidates[i]))
    return float(candidates[best])


def held_out_correct(
    stats: ClassStatistics,
    embeddings: np.ndarray,
    targets: np.ndarray,
    candidates: Sequence[float] = SHRINKAGES,
    folds: int = CV_FOLDS,
) -> np.ndarray:
    """For each candidate shrinkage, how many of the newest examples its head gets right when they are held out.

    `stats` already include `embeddings` (n, dim) of class ids `targets`. Those examples are cut into `folds` folds
    (round robin within each class); for each fold the statistics without it give a head per candidate, scored on the
    fold over all of the statistics' classes. Only the newest examples are held out because they are the only ones at
    hand (earlier ones live on as sums), and the question is the one each increment asks: how much to trust a
    covariance estimated from the examples seen so far. An example is held out only when its class keeps another."""
    classes = len(stats.counts)
    rank = np.zeros(len(targets), dtype=np.int64)
    for c in np.unique(targets):
        where = np.flatnonzero(targets == c)
        rank[where] = np.arange(len(where))
    fold = np.where(stats.counts[targets] >= 2, rank % folds, -1)
    correct = np.zeros(len(candidates))
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        x = embeddings[held]
        without = stats - ClassStatistics.empty(classes, embeddings.shape[1]).update(x, targets[held], classes)
        means, covariance = without.moments()
        for i, shrinkage in enumerate(candidates):
            weights, bias = lda_head(means, covariance, shrinkage)
            correct[i] += np.sum((x.astype(np.float64) @ weights.T + bias).argmax(1) == targets[held])
    return correct


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
