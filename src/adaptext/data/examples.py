"""Labelled examples as they are read from a file, and the splits of a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class TextData:
    """Texts (and optional pairs and labels) read from one file, in file order.

    `labels` holds one string per row, a list of strings per row for multi-label data, or a float per row for
    regression (`data.problem: regression`);
    `rows` holds each example's 1-based row number in `source`, for error messages.
    """

    texts: list[str]
    source: str
    pairs: list[str] | None = None
    labels: list[str] | list[list[str]] | list[float] | None = None
    rows: list[int] = field(default_factory=list)
    frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int], source: str | None = None) -> TextData:
        """The examples at `indices`, in that order."""
        return TextData(
            texts=[self.texts[i] for i in indices],
            source=source or self.source,
            pairs=None if self.pairs is None else [self.pairs[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],  # type: ignore[arg-type]
            rows=[self.rows[i] for i in indices],
            frame=None if self.frame is None else self.frame.iloc[indices].reset_index(drop=True),
        )


@dataclass
class Splits:
    """The data of one run: train, validation, optional test, and the label names in id order.

    `in_train` counts, per evaluated split (`validation`, `test`), its examples whose text (and pair) also
    appears in train: exact duplicates that make the scores on that split optimistic.
    `validation_held_out` is False when there was no validation data to hold out (a few-shot run without a validation
    file): `validation` is then the training data itself, which nothing may calibrate, select or report on as if it
    were held out.
    """

    train: TextData
    validation: TextData
    test: TextData | None
    labels: list[str]
    in_train: dict[str, int] = field(default_factory=dict)
    validation_held_out: bool = True

    @property
    def evaluation(self) -> TextData:
        """What a run is scored on after training: the test split, else the validation split."""
        return self.test if self.test is not None else self.validation
