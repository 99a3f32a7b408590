"""Out-of-scope detection: a score per text saying how far it lies from everything the model was trained on.

A detector is fitted after training (`adaptext.evaluation.detectors`) from in-scope data only: the training texts
give the reference (class means, a bank of features) and the validation texts the threshold, set so that
`in_scope_recall` of them stay in scope. It is saved beside the model (`ood.safetensors`, and its settings under
`ood` in `adaptext.json`); plain `transformers` ignores both.

Scores, higher meaning further out of scope:

- `msp`: one minus the top (calibrated) probability (Hendrycks & Gimpel, 2017);
- `energy`: minus the log-sum-exp of the logits the model gives (calibrated where the temperature is folded into
  its output layer; Liu et al., 2020);
- `mahalanobis`: the smallest Mahalanobis distance of the text's features to a class mean, with one covariance
  shared by the classes (Lee et al., 2018);
- `knn`: one minus the cosine similarity of the text's normalised features to its k-th nearest training text
  (Sun et al., 2022).

The features are the input of the model's output layer (the pooled text representation the head reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from torch import nn

from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo

OOD_FILE = "ood.safetensors"
SCORES = ("msp", "energy", "mahalanobis", "knn")
FEATURE_SCORES = frozenset({"mahalanobis", "knn"})
# The most training texts kept in a knn bank: beyond it the k-th-neighbour distance barely moves, the folder grows.
MAX_BANK = 20_000
# The in-scope validation scores kept (as quantiles) to turn a raw score into a share of in-scope texts.
REFERENCE_POINTS = 1001


def output_layer(model: nn.Module, num_labels: int) -> nn.Linear | None:
    """The layer whose outputs are the logits: the last linear layer with one output per label (a peft head's
    trained copy comes after its frozen original); None for a model without one (ONNX, prompt, NLI)."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            found = module
    return found


class FeatureTap:
    """Records the input of a model's output layer on each forward pass: (batch, hidden) float32 arrays."""

    def __init__(self, layer: nn.Linear) -> None:
        self.batches: list[np.ndarray] = []
        self._handle = layer.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.batches.append(args[0].detach().float().cpu().numpy())

    def pop(self) -> np.ndarray:
        """The features of the last forward pass."""
        if len(self.batches) != 1:
            raise RuntimeError(f"expected one output-layer call per forward pass, saw {len(self.batches)}")
        return self.batches.pop()

    def close(self) -> None:
        self._handle.remove()


def energy(logits: np.ndarray) -> np.ndarray:
    """Minus the log-sum-exp of each row of `logits` (n, k): high for texts whose logits are all low."""
    top = logits.max(axis=1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


def msp(probs: np.ndarray) -> np.ndarray:
    """One minus the top probability of each row."""
    return 1.0 - probs.max(axis=1)


def normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def knn_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """One minus the cosine similarity of each normalised query to its k-th most similar row of `bank`
    (normalised rows)."""
    k = min(k, len(bank))
    out = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), chunk):
        sims = normalised(queries[start : start + chunk]).astype(np.float32) @ bank.T
        out[start : start + chunk] = 1.0 - np.partition(sims, -k, axis=1)[:, -k]
    return out


def mahalanobis_distance(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The smallest squared Mahalanobis distance of each row of `features` (n, d) to a row of `means` (c, d)."""
    x = features.astype(np.float64)
    xp = x @ precision  # (n, d)
    # (x - m) P (x - m)^T = x P x^T - 2 x P m^T + m P m^T, for every class mean m at once: (n, c)
    squared = (xp * x).sum(axis=1)[:, None] - 2 * xp @ means.T + ((means @ precision) * means).sum(axis=1)[None, :]
    return squared.min(axis=1)


def class_statistics(features: np.ndarray, targets: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (c, d) and the precision (inverse) of the covariance shared by the classes (d, d)."""
    x = features.astype(np.float64)
    means = np.zeros((num_labels, x.shape[1]))
    for label in range(num_labels):
        mine = x[targets == label]
        if len(mine):
            means[label] = mine.mean(axis=0)
    centred = x - means[targets]
    covariance = centred.T @ centred / max(len(x), 1)
    # A small ridge keeps the inverse finite when there are fewer texts than feature dimensions.
    ridge = 1e-6 * max(float(np.trace(covariance)) / len(covariance), 1e-12)
    return means, np.linalg.pinv(covariance + ridge * np.eye(len(covariance)), hermitian=True)


@dataclass
class OodDetector:
    """A fitted detector: `scores` gives the raw score of texts, `out_of_scope` decides, `share_below` normalises."""

    method: str
    threshold: float
    label: str
    reference: np.ndarray  # sorted in-scope validation scores (quantiles), for `share_below`
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # means + precision, or the knn bank
    k: int = 10
    in_scope_recall: float = 0.95

    @property
    def needs_features(self) -> bool:
        return self.method in FEATURE_SCORES

    def scores(self, logits: np.ndarray, probs: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """Raw scores (n,) from raw `logits`, calibrated `probs` and output-layer `features` (n, d)."""
        if self.method == "msp":
            return msp(probs)
        if self.method == "energy":
            return energy(logits)
        if features is None:
            raise AdaptextError(f"the {self.method} out-of-scope score needs the model's features")
        if self.method == "mahalanobis":
            return mahalanobis_distance(features, self.arrays["means"], self.arrays["precision"])
        return knn_distance(features, self.arrays["bank"].astype(np.float32), self.k)

    def out_of_scope(self, scores: np.ndarray) -> np.ndarray:
        """True where a raw score lies beyond the threshold."""
        return scores > self.threshold

    def share_below(self, scores: np.ndarray) -> np.ndarray:
        """The out-of-scope score a person reads, in [0, 1]: the share of in-scope validation texts that scored
        lower (looked more in scope) than each text."""
        return np.searchsorted(self.reference, scores, side="left") / len(self.reference)

    def record(self) -> dict[str, Any]:
        """The settings kept in `adaptext.json` under `ood`."""
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "label": self.label,
            "k": self.k,
            "in_scope_recall": self.in_scope_recall,
            "file": OOD_FILE,
        }

    def save(self, folder: Path) -> None:
        """Write the arrays into `folder/ood.safetensors` (the caller records `record()` in `adaptext.json`)."""
        save_file({"reference": self.reference.astype(np.float64)} | self.arrays, str(folder / OOD_FILE))


def load_detector(folder: Path, info: ModelInfo) -> OodDetector | None:
    """The detector saved in `folder`, or None when `adaptext.json` records none."""
    if not info.ood:
        return None
    path = folder / OOD_FILE
    if not path.is_file():
        raise AdaptextError(f"{info.source} records an out-of-scope detector but {path} is missing")
    arrays = load_file(str(path))
    reference = arrays.pop("reference")
    record = info.ood
    return OodDetector(
        method=str(record["method"]),
        threshold=float(record["threshold"]),
        label=str(record["label"]),
        reference=reference,
        arrays=arrays,
        k=int(record.get("k", 10)),
        in_scope_recall=float(record.get("in_scope_recall", 0.95)),
    )


def resolve_method(method: str, has_features: bool) -> str:
    """The score `ood.method` names. `auto`: mahalanobis where the model's features can be read, else energy — the
    best and second best of the four on CLINC150 and BANKING77 (75% known) in `bench/robustness.py`."""
    if method == "auto":
        return "mahalanobis" if has_features else "energy"
    return method
