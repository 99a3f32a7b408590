"""The replay memory: a few examples of each class, chosen by herding or at random, kept in the run folder.

A run continued by `adaptext extend` or `adaptext continual` leaves `continual/memory.jsonl` in its folder: the
examples of every class it remembers (the previous memory plus `memory_per_class` of each class of its own training
data), so the next increment replays them without needing the old files.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from adaptext.core.config import DataConfig
from adaptext.data.examples import TextData
from adaptext.data.io import load_examples, write_table

STATE_DIR = "continual"  # inside a run folder
MEMORY_FILE = "memory.jsonl"
TASK_COLUMN = "_task"  # the task (or run) each remembered example came from


def concat(parts: Sequence[TextData], source: str) -> TextData:
    """The examples of `parts` one after another, as one `TextData` read from `source`."""
    pairs = [part.pairs for part in parts]
    has_pairs = any(p is not None for p in pairs)
    return TextData(
        texts=[text for part in parts for text in part.texts],
        source=source,
        pairs=[pair for p in pairs for pair in (p or [])] if has_pairs else None,
        labels=[label for part in parts for label in (part.labels or [])],  # type: ignore[arg-type]
        rows=[row for part in parts for row in part.rows],
    )


def herding(embeddings: np.ndarray, k: int) -> list[int]:
    """iCaRL's herding: `k` rows (indices) whose running mean stays closest to the mean of all rows, in the order
    chosen. Embeddings are L2-normalised first."""
    normed = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    target = normed.mean(axis=0)
    chosen: list[int] = []
    total = np.zeros_like(target)
    available = np.ones(len(normed), dtype=bool)
    for step in range(1, min(k, len(normed)) + 1):
        # The candidate that brings the mean of the chosen rows nearest to the class mean.
        gaps = np.linalg.norm(target - (total + normed) / step, axis=1)
        gaps[~available] = np.inf
        best = int(np.argmin(gaps))
        chosen.append(best)
        available[best] = False
        total += normed[best]
    return chosen


def select_memory(
    data: TextData,
    per_class: int,
    *,
    how: str,
    seed: int,
    embeddings: np.ndarray | None = None,
) -> list[int]:
    """Indices of up to `per_class` examples of each label of `data` (a multi-label row counts for each of its
    labels and is taken once), by `herding` on `embeddings` (one row per example) or at `random`; sorted."""
    assert data.labels is not None
    if per_class == 0:
        return []
    members: dict[str, list[int]] = defaultdict(list)
    for index, value in enumerate(data.labels):
        for name in value if isinstance(value, list) else [str(value)]:
            members[name].append(index)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for name in sorted(members):
        rows = members[name]
        if how == "herding":
            if embeddings is None:
                raise ValueError("herding needs the examples' embeddings")
            picked = [rows[i] for i in herding(embeddings[rows], per_class)]
        else:
            picked = rng.sample(rows, min(per_class, len(rows)))
        chosen.update(picked)
    return sorted(chosen)


def memory_path(run_dir: Path) -> Path:
    return run_dir / STATE_DIR / MEMORY_FILE


def write_memory(path: Path, data: TextData, tasks: Sequence[str], cfg: DataConfig) -> None:
    """Write the remembered examples as JSONL in the run's own columns, with the task each came from."""
    assert data.labels is not None
    columns: dict[str, list[object]] = {cfg.text_column: list(data.texts)}
    if cfg.text_pair_column and data.pairs is not None:
        columns[cfg.text_pair_column] = list(data.pairs)
    columns[cfg.label_column] = list(data.labels)
    columns[TASK_COLUMN] = list(tasks)
    write_table(pd.DataFrame(columns), path)


def read_memory(path: Path, cfg: DataConfig) -> tuple[TextData, list[str]]:
    """The remembered examples and the task each came from; `cfg` names the columns (as the run wrote them)."""
    data = load_examples(path, cfg)
    frame = data.frame
    tasks = [str(task) for task in frame[TASK_COLUMN]] if frame is not None and TASK_COLUMN in frame else []
    return data, tasks or [""] * len(data)
