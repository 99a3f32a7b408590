"""The `adaptext` command: parse arguments, call one library function, print a summary.

Each command is a module here with the same two functions: `add_parser(sub)` declares its arguments and
`run(args)` does the work. Nothing at module level imports torch, so `adaptext --help` is instant.

Each command runs inside `adaptext.core.console.library_output_to_log`: adaptext's own log lines, progress bars and
summary reach the terminal (with `-q`, only its warnings and errors), and what the libraries print goes to a debug
log that ends up as `debug.log` in the command's output folder (`train` and `tune` name it with `keep_debug_log`
once their folder is known; a command writing an `--output` folder gets it there without asking).

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
from adaptext.cli import (
    audit,
    continual,
    distill,
    ensemble,
    evaluate,
    explain,
    export,
    extend,
    merge,
    monitor,
    predict,
    pretrain,
    rank,
    robustness,
    route,
    sample,
    select,
    serve,
    train,
    tune,
)
from adaptext.cli.options import launched_as_main
from adaptext.core.console import DEBUG_LOG, LOG_FORMAT, TIME_FORMAT, DebugLog, library_output_to_log, set_quiet
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import expand

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]

EXIT_USER_ERROR = 2

# in the order `--help` lists them
COMMANDS = (
    train,
    pretrain,
    extend,
    continual,
    tune,
    evaluate,
    robustness,
    explain,
    distill,
    predict,
    route,
    rank,
    select,
    sample,
    audit,
    merge,
    ensemble,
    export,
    serve,
    monitor,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptext", description="Fine-tune, evaluate and use text classifiers built on Hugging Face models."
    )
    parser.add_argument("--version", action="version", version=f"adaptext {__version__}")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only adaptext's warnings and errors (the rest goes to the debug log)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


# Long-running, and its log lines (the server's address, request errors) are what an operator watches.
UNCAPTURED = ("serve",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `adaptext ARGV` (default: the command line) and return its exit code."""
    parser = build_parser()
    # `key=value` overrides may also follow flags (`train run.yaml --resume train.epochs=5`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "tune", "extend", "continual") or any(
            "=" not in item or item.startswith("-") for item in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    set_quiet(args.quiet)
    # The libraries' own progress bars would fill the debug log with carriage returns.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.command in UNCAPTURED or not launched_as_main():
        logging.basicConfig(
            # Under torchrun / accelerate launch, the other processes would repeat every line of the main one's.
            level=logging.WARNING if args.quiet or not launched_as_main() else logging.INFO,
            format=LOG_FORMAT,
            datefmt=TIME_FORMAT,
        )
        return _run(args)
    debug_log: DebugLog | None = None
    code = 1  # what an unexpected exception leaves: the traceback follows the line below
    try:
        with library_output_to_log(quiet=args.quiet) as debug_log:
            code = _run(args)
            _default_debug_log(args, debug_log)
    finally:
        # A user error's message says what to change; an unexpected failure or an interruption keeps the log.
        kept = debug_log.finish(succeeded=code == 0, keep_on_failure=code != EXIT_USER_ERROR) if debug_log else None
        if code != 0 and kept is not None:
            print(f"adaptext {args.command}: the libraries' messages are in {kept}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except AdaptextError as error:
        print(f"adaptext {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _default_debug_log(args: argparse.Namespace, debug_log: DebugLog) -> None:
    # A command that writes a folder named by --output keeps its debug log there, unless it chose a place itself
    # (`train` and `tune` name their folder in the config, `predict` writes a file).
    output = getattr(args, "output", None)
    if debug_log.destination is None and isinstance(output, str) and expand(output).is_dir():
        debug_log.destination = expand(output) / DEBUG_LOG
