"""Checks that a transformed model (merged, exported) answers as the original did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo
from adaptext.core.task import Task
from adaptext.data.examples import TextData


@dataclass
class MergeCheck:
    """How the merged model compares with the adapter model on a sample."""

    n_examples: int
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.label_agreement == 1.0

    def describe(self) -> str:
        return (
            f"{self.n_examples} examples: max |logit difference| {self.max_abs_diff:.2e} "
            f"(tolerance {self.tolerance:.0e}), labels agree on {self.label_agreement:.2%}"
        )


def decisions(logits: np.ndarray, task: Task) -> np.ndarray:
    """(n, num_labels) logits -> (n, num_labels) booleans: the labels `task` decides (the top label, or every
    label whose probability reaches 0.5)."""
    return task.decide(task.scores(logits), threshold=0.5)


def match_rate(predicted: np.ndarray, expected: np.ndarray) -> float:
    """Share of examples whose decisions (n, num_labels) agree on every label of the row."""
    if not len(predicted):
        return 1.0
    return float((predicted == expected).all(axis=1).mean())


def compare_logits(reference: np.ndarray, other: np.ndarray, tolerance: float, task: Task) -> MergeCheck:
    """How `other` logits compare with the `reference` logits of the same texts, for `task`."""
    agree = match_rate(decisions(other, task), decisions(reference, task))
    differences = np.abs(reference - other)
    diff, mean = (float(differences.max()), float(differences.mean())) if reference.size else (0.0, 0.0)
    # Relative to the logits' size: float32 keeps ~7 digits, so logits in the hundreds (a zero-shot scorer at a low
    # temperature) differ by more than 1e-4 between two correct runtimes.
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    return MergeCheck(
        n_examples=len(reference),
        max_abs_diff=diff,
        mean_abs_diff=mean,
        label_agreement=agree,
        tolerance=tolerance * scale,
    )


def margin_change(reference: np.ndarray, other: np.ndarray, task: Task) -> float:
    """The mean change from `reference` to `other` logits (n, num_labels) of what decides each row's labels.

    Single-label: the margin of the reference's top label, its logit less the best other label's. A change of the
    logits that keeps that difference moves no decision, and a small margin that shrinks is where the label flips.
    Multi-label (and a single output): each label is decided by its own logit against the threshold, so the change
    is the mean |logit difference|."""
    if not reference.size:
        return 0.0
    if task.multi_label or task.regression or reference.shape[1] < 2:
        return float(np.abs(reference - other).mean())
    rows, top = np.arange(len(reference)), reference.argmax(axis=1)

    def margin(logits: np.ndarray) -> np.ndarray:
        others = logits.astype(np.float64)
        others[rows, top] = -np.inf
        return logits[rows, top] - others.max(axis=1)

    return float(np.abs(margin(other) - margin(reference)).mean())


def parity_examples(
    path: Path, model_dir: Path, data: str | Path | None, info: ModelInfo, sample: int, *, rest: int = 0
) -> TextData:
    """Up to `sample` examples evenly spread over `data` (labelled or not) or over the run's validation split; with
    `rest`, instead up to `rest` examples evenly spread over the rows that sample leaves out (none if it takes them
    all), to choose with while the sample itself judges. A row repeating a sampled row's text (and pair) is not left
    out: a choice made on it would be a choice made on the judged text."""
    if sample < 1:
        raise AdaptextError(f"--sample must be at least 1, got {sample}")
    from adaptext.core.config import DataConfig, load_config
    from adaptext.data.io import load_examples, read_table
    from adaptext.data.splits import load_splits

    if data is not None:
        columns = DataConfig(
            text_column=info.text_column,
            text_pair_column=info.text_pair_column,
            label_column=info.label_column,
            label_delimiter=info.label_delimiter,
            multi_label=info.task.multi_label,
        )
        labelled = columns.label_column in read_table(data).columns
        examples = load_examples(data, columns, with_labels=labelled)
    else:
        config_path = next((p / "config.yaml" for p in (path, model_dir.parent) if (p / "config.yaml").is_file()), None)
        if config_path is None:
            raise AdaptextError(f"{path}: not inside a run folder (no config.yaml); give --data FILE to check on")
        try:
            examples = load_splits(load_config(config_path)).validation
        except AdaptextError as error:
            raise AdaptextError(f"cannot read the run's validation data ({error}); give --data FILE") from None
    if len(examples) == 0:
        raise AdaptextError("no examples to check on")
    idx = _evenly_spread(len(examples), sample)
    if rest:
        pairs: list[str | None] = list(examples.pairs) if examples.pairs is not None else [None] * len(examples)
        judged = {(examples.texts[i], pairs[i]) for i in idx}
        left = [i for i in range(len(examples)) if (examples.texts[i], pairs[i]) not in judged]
        idx = [left[i] for i in _evenly_spread(len(left), rest)]
    return TextData(
        texts=[examples.texts[i] for i in idx],
        source=examples.source,
        pairs=[examples.pairs[i] for i in idx] if examples.pairs is not None else None,
        labels=[examples.labels[i] for i in idx] if examples.labels is not None else None,  # type: ignore[arg-type]
        rows=[examples.rows[i] for i in idx] if examples.rows else [],
    )


def _evenly_spread(n: int, sample: int) -> list[int]:
    """Up to `sample` indices of `range(n)`, evenly spread, the first and the last included."""
    if n == 0:
        return []
    return np.unique(np.linspace(0, n - 1, num=min(sample, n)).astype(int)).tolist()
