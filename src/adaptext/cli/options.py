"""Options several commands share, spelled and documented once."""

from __future__ import annotations

import argparse
import os


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_run_mode_options(parser: argparse.ArgumentParser, *, resume: str, overwrite: str) -> None:
    """`--resume` (help: `resume`) and `--overwrite` (help: `overwrite`), which exclude each other."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help=resume)
    mode.add_argument("--overwrite", action="store_true", help=overwrite)


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, example: str) -> None:
    """The run commands' positional arguments: a YAML config and `key.path=value` overrides, and the run modes."""
    parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help=f"config overrides, e.g. {example}")
    add_run_mode_options(
        parser,
        resume="continue the run in output_dir from its checkpoint",
        overwrite="replace an existing run in output_dir",
    )


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
