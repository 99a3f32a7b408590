"""Exact and near duplicates within the audited file and across train, validation and test (leakage).

Exact: the same text after Unicode NFKC, case folding and collapsing white space. Near: a cosine similarity of the
embeddings at or above a threshold, computed block by block so that no n x n matrix is ever held in memory.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from adaptext.core.console import progress_bar
from adaptext.data.examples import TextData

BLOCK_ROWS = 512  # rows per block of the similarity product: 512 x n float32 (137 MB for n = 67k)
_SPACE = re.compile(r"\s+")


@dataclass
class Split:
    """One file taking part in the duplicate search: its name (`train`, `validation`, `test`) and data."""

    name: str
    data: TextData


@dataclass
class Duplicate:
    """Two rows holding the same (`exact`) or nearly the same (`near`) text; `a` comes first in split order.

    `row_a` / `row_b` are the 1-based row numbers in their files, as error messages give them. `conflict` is True
    when both rows have a label and the labels differ."""

    kind: str
    split_a: str
    row_a: int
    split_b: str
    row_b: int
    similarity: float
    label_a: str | None
    label_b: str | None

    @property
    def conflict(self) -> bool:
        return self.label_a is not None and self.label_b is not None and self.label_a != self.label_b

    @property
    def leakage(self) -> bool:
        return self.split_a != self.split_b


def normalise(text: str) -> str:
    """The text as compared for exact duplicates: NFKC, case-folded, runs of white space as one space, stripped.

    >>> normalise("  \\uff23af\\u00e9\\tLATTE ")
    'café latte'
    """
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _keys(data: TextData) -> list[str]:
    if data.pairs is None:
        return [normalise(t) for t in data.texts]
    return [normalise(t) + "\x1f" + normalise(p) for t, p in zip(data.texts, data.pairs, strict=True)]


def _label(data: TextData, index: int) -> str | None:
    return None if data.labels is None else str(data.labels[index])


def find_duplicates(
    splits: Sequence[Split], embeddings: Sequence[np.ndarray], threshold: float, *, progress: bool = True
) -> list[Duplicate]:
    """Every exact duplicate and every near-duplicate pair (similarity >= `threshold`, exact ones left out), within
    and across `splits`; `embeddings` are unit vectors in the same order.

    A repeated text is paired with the first row holding it in its own file, and with the first row holding it in
    each earlier file (so a text in train, validation and test is reported as leakage between all three). Near
    duplicates are searched among those first rows only: a text repeated a thousand times is one group, not a
    thousand times as many pairs."""
    owners = [(s, i) for s, split in enumerate(splits) for i in range(len(split.data))]
    keys = [key for split in splits for key in _keys(split.data)]
    found: list[Duplicate] = []
    first: dict[str, dict[int, int]] = {}  # text -> file -> the first row holding it there
    representatives: list[int] = []
    for position, key in enumerate(keys):
        split = owners[position][0]
        holders = first.setdefault(key, {})
        if split in holders:
            found.append(_pair(splits, owners, holders[split], position, "exact", 1.0))
            continue
        found += [_pair(splits, owners, earlier, position, "exact", 1.0) for earlier in holders.values()]
        holders[split] = position
        representatives.append(position)
    matrix = np.concatenate(embeddings).astype(np.float32, copy=False)[representatives]
    for i, j, similarity in _similar_pairs(matrix, threshold, progress=progress):
        a, b = representatives[i], representatives[j]
        if keys[a] != keys[b]:
            found.append(_pair(splits, owners, a, b, "near", similarity))
    return found


def _pair(
    splits: Sequence[Split], owners: list[tuple[int, int]], a: int, b: int, kind: str, similarity: float
) -> Duplicate:
    (sa, ia), (sb, ib) = owners[a], owners[b]
    da, db = splits[sa].data, splits[sb].data
    return Duplicate(
        kind=kind,
        split_a=splits[sa].name,
        row_a=da.rows[ia],
        split_b=splits[sb].name,
        row_b=db.rows[ib],
        similarity=round(float(similarity), 4),
        label_a=_label(da, ia),
        label_b=_label(db, ib),
    )


def _similar_pairs(matrix: np.ndarray, threshold: float, *, progress: bool) -> Iterator[tuple[int, int, float]]:
    """(i, j, cosine) for every i < j with cosine >= threshold, block by block over the rows."""
    n = len(matrix)
    starts = range(0, n, BLOCK_ROWS)
    for start in progress_bar(starts, show=progress, desc="near duplicates", unit="block"):
        stop = min(start + BLOCK_ROWS, n)
        # (block, n - start): each block against itself and every later row only.
        sims = matrix[start:stop] @ matrix[start:].T
        rows, cols = np.nonzero(sims >= threshold)
        keep = cols > rows  # the upper triangle: j > i, and never a row with itself
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True):
            yield start + r, start + c, float(sims[r, c])
