"""The `adaptext` command: parse arguments, call one library function, print a summary.

Each command is a module here with the same two functions: `add_parser(sub)` declares its arguments and
`run(args)` does the work. Nothing at module level imports torch, so `adaptext --help` is instant.

Exit codes: 0 success, 2 a user error (bad config, data or path; the message says what and where),
1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from adaptext import __version__
from adaptext.cli import audit, evaluate, explain, export, merge, predict, sample, serve, train, tune
from adaptext.cli.options import launched_as_main
from adaptext.core.errors import AdaptextError

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]

EXIT_USER_ERROR = 2

# in the order `--help` lists them
COMMANDS = (train, tune, evaluate, explain, predict, sample, audit, merge, export, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptext", description="Fine-tune, evaluate and use text classifiers built on Hugging Face models."
    )
    parser.add_argument("--version", action="version", version=f"adaptext {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _quiet_libraries() -> None:
    # Our own log lines and progress bar say what happens; the libraries' per-file chatter does not help.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `key=value` overrides may also follow flags (`train run.yaml --resume train.epochs=5`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "tune") or any("=" not in item or item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        # Under torchrun / accelerate launch, the other processes would repeat every line of the main one's.
        level=logging.WARNING if args.quiet or not launched_as_main() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _quiet_libraries()
    try:
        return int(args.func(args))
    except AdaptextError as error:
        print(f"adaptext {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
