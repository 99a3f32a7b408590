"""Drift signals for the model itself: confidence dropping, the out-of-scope rate rising, and the predicted label
shares moving away from the training distribution.

The training distribution is counted from the run's training file (`config.yaml`'s `data.train`, as the run saved
it) when that file can still be read; otherwise, and for confidence and the out-of-scope rate (which no run records
for unlabelled traffic), the reference is the first `drift.reference_windows` windows of the stream itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adaptext.apps.monitor.config import DriftSection
from adaptext.core.errors import DataError
from adaptext.data.io import read_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """The label shares the stream is compared with, and where they come from."""

    shares: dict[str, float]
    origin: str


def training_shares(run_dir: str | Path, labels: list[str]) -> Reference | None:
    """The label shares of the run's training file, or None when the folder does not name a readable one."""
    folder = Path(run_dir)
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            break
    else:
        return None
    try:
        data = (yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}).get("data") or {}
        train, column = data.get("train"), data.get("label_column") or "label"
        if not train:
            return None
        frame = read_table(train)
    except (yaml.YAMLError, DataError, AttributeError) as error:
        logger.info("drift reference: the run's training file cannot be read (%s); using the first windows", error)
        return None
    if column not in frame.columns:
        return None
    counts = Counter(str(value) for value in frame[column].tolist())
    total = sum(counts[label] for label in labels)
    if total == 0:
        return None
    return Reference({label: counts[label] / total for label in labels}, f"training file {train}")


def drift_signals(
    windows: list[dict[str, Any]], labels: list[str], reference: Reference | None, config: DriftSection
) -> dict[str, Any]:
    """Per window, the label distance from the reference; and three signals comparing the last
    `recent_windows` windows with the first `reference_windows`.

    `windows` are the whole stream's windows in time order, each with `count`, `labels` (label -> count),
    `mean_confidence` and `ood_rate` (None without a detector).
    """
    if not windows:
        return {"reference": None, "windows": [], "signals": []}
    first = windows[: config.reference_windows]
    recent = windows[-config.recent_windows :]
    if reference is None:
        reference = Reference(_shares(first, labels), f"the first {len(first)} windows of the stream")
    series = [
        {"start": w["start"], "label_distance": _distance(_shares([w], labels), reference.shares)} for w in windows
    ]
    signals = [
        _signal(
            "confidence",
            "mean probability of the predicted label",
            _mean(first, "mean_confidence"),
            _mean(recent, "mean_confidence"),
            -config.confidence_drop,
        ),
        _signal(
            "label_shares",
            f"total-variation distance of the predicted label shares from {reference.origin}",
            0.0,
            _distance(_shares(recent, labels), reference.shares),
            config.label_distance,
        ),
    ]
    if any(w.get("ood_rate") is not None for w in windows):
        signals.append(
            _signal(
                "ood_rate",
                "share of texts the out-of-scope detector put outside the training data",
                _mean(first, "ood_rate"),
                _mean(recent, "ood_rate"),
                config.ood_rise,
            )
        )
    return {
        "reference": {"shares": reference.shares, "origin": reference.origin},
        "windows": series,
        "signals": signals,
    }


def _shares(windows: list[dict[str, Any]], labels: list[str]) -> dict[str, float]:
    totals = Counter[str]()
    for window in windows:
        totals.update(window["labels"])
    n = sum(totals[label] for label in labels)
    return {label: (totals[label] / n if n else 0.0) for label in labels}


def _distance(a: dict[str, float], b: dict[str, float]) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def _mean(windows: list[dict[str, Any]], key: str) -> float | None:
    # Weighted by each window's events, so a nearly empty window counts little.
    pairs = [(w[key], w["count"]) for w in windows if w.get(key) is not None and w["count"]]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def _signal(name: str, what: str, reference: float | None, recent: float | None, limit: float) -> dict[str, Any]:
    change = None if reference is None or recent is None else recent - reference
    flagged = change is not None and (change <= limit if limit < 0 else change >= limit)
    return {
        "name": name,
        "description": what,
        "reference": reference,
        "recent": recent,
        "change": change,
        "limit": limit,
        "flagged": bool(flagged),
    }
