"""Training, validation and test splits: stratified hold-outs, leakage checks, per-class samples."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from adaptext.core.config import DEFAULT_VALIDATION_FRACTION, Config, DataConfig
from adaptext.core.errors import DataError
from adaptext.core.outputs import check_output_file, expand
from adaptext.data.examples import Splits, TextData
from adaptext.data.io import SUPPORTED_SUFFIXES, load_examples, write_table
from adaptext.data.labels import check_known_labels, is_regression, label_names

logger = logging.getLogger(__name__)


def _example_keys(data: TextData) -> list[tuple[str, str | None]]:
    pairs: list[str] | list[None] = data.pairs if data.pairs is not None else [None] * len(data)
    return list(zip(data.texts, pairs, strict=True))


def count_in_train(train: TextData, other: TextData) -> int:
    """How many examples of `other` have exactly the text (and pair) of some training example."""
    seen = set(_example_keys(train))
    return sum(key in seen for key in _example_keys(other))


def check_train_overlap(train: TextData, evaluated: dict[str, TextData]) -> dict[str, int]:
    """Count, and warn about, examples of each evaluated split (name -> data) whose text also appears in train.

    Texts (with their pair, for pair data) are compared exactly. Returns name -> count for every split.
    """
    counts: dict[str, int] = {}
    what = "text pair" if train.pairs is not None else "text"
    for name, data in evaluated.items():
        counts[name] = count_in_train(train, data)
        if counts[name]:
            logger.warning(
                "%d %s of the %s split (%.1f%%, %s) also %s in train (exact duplicates): scores on it are optimistic",
                counts[name],
                what if counts[name] == 1 else what + "s",
                name,
                100 * counts[name] / len(data),
                data.source,
                "appears" if counts[name] == 1 else "appear",
            )
    return counts


def stratified_split(data: TextData, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): about `fraction` of each class held out, every class kept in training.

    Multi-label rows are stratified by their label combination; regression rows by the decile of their target.
    The result depends only on the data and seed.
    """
    assert data.labels is not None
    groups: dict[str, list[int]] = defaultdict(list)
    keys = _target_bins(data.labels) if is_regression(data) else data.labels  # type: ignore[arg-type]
    for index, value in enumerate(keys):
        key = "\x1f".join(sorted(value)) if isinstance(value, list) else str(value)
        groups[key].append(index)
    rng = random.Random(seed)
    kept: list[int] = []
    held: list[int] = []
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        n_held = min(int(len(members) * fraction + 0.5), len(members) - 1)
        held.extend(members[:n_held])
        kept.extend(members[n_held:])
    return sorted(kept), sorted(held)


def _target_bins(values: list[float], bins: int = 10) -> list[int]:
    # Regression targets stratified by quantile bins, so each split spans the range of the target.
    edges = np.unique(np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right").tolist()


def load_splits(config: Config, known: Sequence[str] = (), hold_out: bool = True) -> Splits:
    """Read and check every file of a run, carving validation/test splits from train where asked.

    `known`: labels a model already has (a continued run): they keep their ids, and the training file's other labels
    follow them in sorted order; the training file alone may then hold a single label.
    `hold_out`: without a validation file, carve `data.validation_fraction` of train off as validation. When False
    (few-shot, where every example counts), train keeps all its examples and is also the validation split, marked
    `validation_held_out=False` so that nothing is calibrated, selected or reported as held-out on it.
    """
    cfg = config.data
    if cfg.train is None:
        raise DataError("data.train is not set; give the training file in the config or as data.train=PATH")
    train = load_examples(cfg.train, cfg)
    if known:
        labels = [*known, *(name for name in label_names(train, minimum=1) if name not in set(known))]
    else:
        labels = label_names(train)
    test = load_examples(cfg.test, cfg) if cfg.test is not None else None
    validation = load_examples(cfg.validation, cfg) if cfg.validation is not None else None
    if test is None and cfg.test_fraction is not None:
        kept, held = stratified_split(train, cfg.test_fraction, config.seed)
        test = train.subset(held, source=f"{train.source} (test split)")
        train = train.subset(kept)
    held_out = validation is not None or hold_out
    if validation is None and not hold_out:
        validation = replace(train, source=f"{train.source} (the training examples: no held-out validation)")
    if validation is None:
        fraction = DEFAULT_VALIDATION_FRACTION if cfg.validation_fraction == "auto" else cfg.validation_fraction
        kept, held = stratified_split(train, fraction, config.seed + 1)
        if not held:
            raise DataError(f"{train.source}: too few rows to carve a validation split; give data.validation")
        validation = train.subset(held, source=f"{train.source} (validation split)")
        train = train.subset(kept)
    for split in (validation, test):
        if split is not None:
            check_known_labels(split, labels)
    evaluated = ({"validation": validation} if held_out else {}) | ({"test": test} if test is not None else {})
    in_train = check_train_overlap(train, evaluated)
    logger.info(
        "data: %d train, %s validation, %s test examples, %d labels",
        len(train),
        len(validation) if held_out else "no held-out",
        len(test) if test is not None else "no",
        len(labels),
    )
    return Splits(
        train=train, validation=validation, test=test, labels=labels, in_train=in_train, validation_held_out=held_out
    )


def sample_per_class(data: TextData, per_class: int, seed: int) -> tuple[list[int], dict[str, int]]:
    """Indices (in file order) of `per_class` examples of every label, drawn reproducibly with `seed`,
    and the labels that had fewer (all of theirs are taken) with their counts.

    Multi-label rows: rows are drawn in a seeded order and a row is taken while one of its labels still has fewer
    than `per_class` examples, so every label reaches `per_class` where the data allows.
    """
    assert data.labels is not None
    if per_class < 1:
        raise DataError(f"per-class sample size must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    chosen: list[int] = []
    if data.labels and isinstance(data.labels[0], list):
        for index in rng.permutation(len(data)):
            names = data.labels[int(index)]
            if any(counts[name] < per_class for name in names):
                chosen.append(int(index))
                counts.update(names)
    else:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, value in enumerate(data.labels):
            groups[str(value)].append(index)
        for name in sorted(groups):
            members = groups[name]
            take = rng.permutation(len(members))[:per_class]
            chosen.extend(members[int(i)] for i in take)
            counts[name] = len(take)
    short = {name: n for name, n in sorted(counts.items()) if n < per_class}
    return sorted(chosen), short


@dataclass(frozen=True)
class Sample:
    """What `sample_file` wrote: `drawn` of the file's `total` rows into `output`, the others into `rest`."""

    drawn: int
    total: int
    output: Path
    rest: Path | None


def sample_file(
    data: str, cfg: DataConfig, per_class: int, seed: int, output: str, rest: str | None, *, overwrite: bool
) -> Sample:
    """Write `per_class` rows of every label of `data` to `output` (and the other rows to `rest`), all columns kept.

    Both output files are checked before the data is read; `rest` and `output` must differ.
    """
    names = [output] + ([rest] if rest else [])
    outputs = [check_output_file(name, overwrite=overwrite, inputs=[data]) for name in names]
    for name, path in zip(names, outputs, strict=True):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(f"{name}: unsupported output format; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise DataError("--output and --rest name the same file")
    examples = load_examples(expand(data), cfg)
    chosen, short = sample_per_class(examples, per_class, seed)
    for name, count in short.items():
        logger.warning("label %r has only %d example(s); all are taken", name, count)
    assert examples.frame is not None
    write_table(examples.frame.iloc[chosen], outputs[0])
    if len(outputs) == 2:
        taken = set(chosen)
        write_table(examples.frame.iloc[[i for i in range(len(examples)) if i not in taken]], outputs[1])
    return Sample(drawn=len(chosen), total=len(examples), output=outputs[0], rest=outputs[1] if rest else None)
