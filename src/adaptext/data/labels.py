"""Label values: one spelling in every file format, warnings about near-duplicates, targets."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from adaptext.core.config import DataConfig
from adaptext.core.errors import DataError
from adaptext.core.task import REGRESSION_LABEL, Task
from adaptext.data.examples import TextData

logger = logging.getLogger(__name__)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


def canonical_label(value: Any) -> str:
    """The label name a cell holds, the same in every file format.

    CSV and TSV give every cell as text, JSONL and Parquet give typed values; a label must not depend on that.
    Numbers become their shortest decimal spelling, with whole numbers written as integers (the JSON number
    1, 1.0 from a numeric column with gaps, the string "1" and the CSV cell 1 are all "1"). Booleans, typed
    (JSON true, a Parquet bool) or spelled true/True/TRUE in a text cell, become "true" and "false", as JSON
    writes them. Other text is kept as written, without surrounding whitespace: "1.0" or "01" written as text
    stay as they are (see `label_spellings` for the warning about them).

    >>> [canonical_label(v) for v in (1, 1.0, "1", " 1.0 ", 2.5, True, "True", "pos")]
    ['1', '1', '1', '1.0', '2.5', 'true', 'true', 'pos']
    """
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, Decimal):  # Parquet decimal columns
        return str(int(value)) if value.is_finite() and value == value.to_integral_value() else str(value)
    text = str(value).strip()
    return text.lower() if text.lower() in ("true", "false") else text


def target_value(path: Path, row: int, column: str, value: Any) -> float:
    """A regression target: the cell's number (typed, or a number written as text), finite; a `DataError` naming
    the file, row and column otherwise."""
    if _is_missing(value):
        raise DataError(f"{path}: row {row}: column {column!r} is empty; every example needs a target value")
    if isinstance(value, bool | np.bool_ | list | dict):
        raise DataError(
            f"{path}: row {row}: column {column!r}: expected a number (data.problem=regression), got {value!r}"
        )
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: row {row}: column {column!r}: expected a number (data.problem=regression), got {value!r}"
        ) from None
    if not np.isfinite(number):
        raise DataError(f"{path}: row {row}: column {column!r}: the target must be a finite number, got {value!r}")
    return number


def _label_value(path: Path, row: int, column: str, value: Any, cfg: DataConfig) -> str | list[str] | float:
    if cfg.problem == "regression":
        return target_value(path, row, column, value)
    if cfg.multi_label:
        if isinstance(value, str):
            if value.strip().startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise DataError(f"{path}: row {row}: column {column!r}: bad JSON list {value!r}") from None
            else:
                return [canonical_label(part) for part in value.split(cfg.label_delimiter) if part.strip()]
        if value is None or (isinstance(value, float) and value != value):
            return []
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, list) or any(_is_missing(v) for v in value):
            raise DataError(
                f"{path}: row {row}: column {column!r}: expected a list of label names or a "
                f"{cfg.label_delimiter!r}-separated string, got {value!r}"
            )
        return [canonical_label(v) for v in value]
    if _is_missing(value):
        raise DataError(f"{path}: row {row}: column {column!r} is empty; every example needs a label")
    if isinstance(value, list | dict):
        raise DataError(
            f"{path}: row {row}: column {column!r}: got a list {value!r}; set data.multi_label=true "
            "for multi-label data"
        )
    return canonical_label(value)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(name: str) -> Decimal | None:
    if not _NUMBER.match(name):
        return None
    try:
        return Decimal(name)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        return None


def _loose(name: str) -> str:
    return " ".join(name.split()).casefold()


def label_spellings(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Groups of distinct label names that look like one label written differently: (how they differ, names).

    Names that are equal as numbers ("1", "1.0", "01") differ in number format; other names equal but for
    letter case or spacing ("Pos", "pos", "very  good" / "very good") differ in case or spacing.

    >>> label_spellings(["1", "1.0", "2", "Pos", "pos", "neg"])
    [('number format', ['1', '1.0']), ('case or spacing', ['Pos', 'pos'])]
    """
    by_number: dict[Decimal, list[str]] = defaultdict(list)
    by_text: dict[str, list[str]] = defaultdict(list)
    for name in dict.fromkeys(names):
        number = _number(name)
        if number is not None:
            by_number[number].append(name)
        else:
            by_text[_loose(name)].append(name)
    groups = [("number format", group) for group in by_number.values() if len(group) > 1]
    return groups + [("case or spacing", group) for group in by_text.values() if len(group) > 1]


def _quoted_list(names: list[str]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def warn_label_spellings(source: str, column: str, labels: list[str] | list[list[str]] | list[float]) -> None:
    """Log a warning for every group of labels in one file that differ only in number format, case or spacing:
    they are separate classes, which is rarely what the file's author meant."""
    counts: Counter[str] = Counter()
    if labels and isinstance(labels[0], float):
        return  # regression targets are numbers, not names
    for value in labels:
        counts.update(value if isinstance(value, list) else [str(value)])
    for difference, group in label_spellings(name for name, _ in counts.most_common()):
        rows = ", ".join(f"{name!r} in {counts[name]} row{'s' if counts[name] != 1 else ''}" for name in group)
        logger.warning(
            "%s: column %r: labels %s differ only in %s; they are different classes (%s). "
            "Write them one way if they mean the same class",
            source,
            column,
            _quoted_list(group),
            difference,
            rows,
        )


def label_names(data: TextData, minimum: int = 2) -> list[str]:
    """The sorted label names seen in `data`, requiring at least `minimum` (a classifier needs two); for regression
    targets, the one output's name (`score`)."""
    assert data.labels is not None
    if is_regression(data):
        return [REGRESSION_LABEL]
    counts: Counter[str] = Counter()
    for value in data.labels:
        counts.update(value if isinstance(value, list) else [str(value)])
    if len(counts) < minimum:
        seen = ", ".join(repr(k) for k in counts) or "none"
        raise DataError(
            f"{data.source}: found {len(counts)} distinct label(s) ({seen}); a classifier needs at least two"
        )
    return sorted(counts)


def label_targets(data: TextData, labels: list[str], task: Task) -> np.ndarray:
    """Training targets for `data`'s labels: class ids (n,), for a multi-label task a multi-hot matrix
    (n, len(labels)), for a regression task the values (n,)."""
    assert data.labels is not None
    if task.regression:
        if data.labels and not is_regression(data):
            raise DataError(f"{data.source}: the labels are names, but the model predicts a value (regression)")
        return np.asarray(data.labels, dtype=np.float32)
    if is_regression(data):
        raise DataError(f"{data.source}: the targets are numbers read for regression, but the model is a classifier")
    index = {name: i for i, name in enumerate(labels)}
    if not task.multi_label:
        return np.asarray([index[str(name)] for name in data.labels], dtype=np.int64)
    targets = np.zeros((len(data), len(labels)), dtype=np.float32)
    for row, names in enumerate(data.labels):
        assert isinstance(names, list)  # a multi-label row holds a list of label names
        targets[row, [index[name] for name in names]] = 1.0
    return targets


def is_regression(data: TextData) -> bool:
    """True when `data`'s targets are numbers read for regression (`data.problem: regression`)."""
    return bool(data.labels) and isinstance(data.labels[0], float)  # type: ignore[index]


def check_known_labels(data: TextData, known: list[str]) -> None:
    """Fail on the first label in `data` that training never saw, naming its row (regression targets: nothing to
    check)."""
    assert data.labels is not None
    if is_regression(data):
        return
    known_set = set(known)
    for row, value in zip(data.rows, data.labels, strict=True):
        for label in value if isinstance(value, list) else [value]:
            if label not in known_set:
                shown = ", ".join(repr(k) for k in known[:20]) + (" ..." if len(known) > 20 else "")
                near = [
                    f"; it differs from the known label {other!r} only in {difference}"
                    for difference, group in label_spellings([str(label), *known])
                    if label in group
                    for other in group
                    if other != label
                ]
                raise DataError(
                    f"{data.source}: row {row}: label {label!r} never appears in the training data "
                    f"(known labels: {shown}){near[0] if near else ''}"
                )
