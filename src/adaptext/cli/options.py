"""Options several commands share, spelled and documented once."""

from __future__ import annotations

import argparse
import os


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_column_options(parser: argparse.ArgumentParser, *, with_label: bool, with_pair: bool = True) -> None:
    parser.add_argument("--text-column", help="text column (default: as in training, else 'text')")
    if with_pair:
        parser.add_argument("--text-pair-column", help="second text column for pair models")
    if with_label:
        parser.add_argument("--label-column", help="label column (default: as in training, else 'label')")


def column_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The column options of `add_column_options` as given (None where not given)."""
    return {name: getattr(args, name, None) for name in ("text_column", "text_pair_column", "label_column")}


def launched_as_main() -> bool:
    """False in the processes other than the first that `torchrun` or `accelerate launch` started (RANK > 0)."""
    return os.environ.get("RANK", "0") == "0"
