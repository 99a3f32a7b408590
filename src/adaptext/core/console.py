"""What reaches the terminal: adaptext's own messages and progress bars; the libraries' chatter goes to a debug log.

The command line runs each command inside `library_output_to_log`. While it is active:

- log records of adaptext's loggers (`adaptext.*`) show on stderr: INFO and up, or WARNING and up when quiet.
  Every record, adaptext's and the libraries', is also written to the debug log.
- Python `warnings` go to the debug log only: adaptext reports what a user should act on through its own logger,
  while the libraries' warnings (deprecations, exporter notes) are about code the user does not call.
- Writes to `sys.stdout` / `sys.stderr` from adaptext's modules reach the terminal (when quiet, a command's summary
  on stdout goes to the debug log instead); those from other modules, such as torch's exporter prints and the
  libraries' tqdm bars, go to the debug log.
- File descriptors 1 and 2 point at the debug log, for what C++ code (onnxruntime) and child processes (Ray,
  tuning workers) write without passing through Python's streams.

Outside it (adaptext used as a Python library) nothing is redirected, and only `progress_bar` reads the quiet flag.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar, overload

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = [
    "DEBUG_LOG",
    "DebugLog",
    "is_quiet",
    "keep_debug_log",
    "library_output_to_log",
    "progress_bar",
    "set_quiet",
]

DEBUG_LOG = "debug.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TIME_FORMAT = "%H:%M:%S"

T = TypeVar("T")

_quiet = False
_active: DebugLog | None = None


def set_quiet(quiet: bool) -> None:
    """Hide adaptext's progress bars, whether or not a command runs (`adaptext -q` sets it)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """Whether the user asked for quiet output (`adaptext -q`)."""
    return _quiet


@overload
def progress_bar(iterable: Iterable[T], *, show: bool = True, **options: Any) -> Iterable[T]: ...


@overload
def progress_bar(iterable: None = None, *, show: bool = True, **options: Any) -> tqdm[NoReturn]: ...


def progress_bar(iterable: Iterable[T] | None = None, *, show: bool = True, **options: Any) -> Iterable[T] | tqdm[Any]:
    """A tqdm bar on the terminal, hidden when quiet, when `show` is False, or when stderr is not a terminal.

    Args:
        iterable: What the bar iterates over; None for a bar updated by hand (`total=` in `options`). A hidden bar
            over an iterable is the iterable itself: building a tqdm object, even a disabled one, costs tens of
            microseconds, as much as a one-text prediction of a static model (bench/distill.py).
        show: False hides the bar whatever the quiet flag says (a caller's own `progress=False`).
        **options: Passed on to `tqdm` (`desc`, `unit`, `total`, `initial`, ...).

    >>> for batch in progress_bar(range(3), desc="predict", unit="batch"):
    ...     pass
    """
    if iterable is not None and (_quiet or not show):
        return iterable
    from tqdm.auto import tqdm

    # `disable=None` is tqdm's own test: a bar only on a terminal, so log files and CI output stay clean.
    disable = True if _quiet or not show else None
    # Inside `library_output_to_log`, sys.stderr sends tqdm's writes to the debug log (tqdm is a library).
    file = _active.terminal_err if _active is not None else None
    return tqdm(iterable, disable=disable, file=file, **options)


def keep_debug_log(path: Path, *, append: bool = False) -> None:
    """Keep the running command's debug log as `path` once the command has succeeded.

    The command line calls this when it knows the output folder (`RUN/debug.log`); outside
    `library_output_to_log` it does nothing.

    Args:
        path: Where the log goes, usually `folder / DEBUG_LOG`.
        append: Add to an existing file rather than replace it (a resumed training run).
    """
    if _active is not None:
        _active.destination = path
        _active.append = append


class DebugLog:
    """The file that collects one command's library output, and where it ends up.

    It is written to a temporary file first: the command's output folder is often created at the end, by an atomic
    swap, and a failed command leaves none. The file stays open until `finish`, which copies from the open file, so
    a temporary-folder cleaner deleting it mid-run loses nothing.
    """

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix="adaptext-", suffix=".debug.log")
        os.close(handle)
        self.path = Path(name)
        # Append mode (O_APPEND): Python, C++ code and child processes all write to the end of one file.
        self.text = io.TextIOWrapper(
            self.path.open("a+b"), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        self.destination: Path | None = None
        self.append = False
        self.terminal_err: TextIO = sys.stderr

    def finish(self, *, succeeded: bool, keep_on_failure: bool = True) -> Path | None:
        """Copy the log to where `keep_debug_log` asked (after a success), or keep the temporary file after a
        failure when it holds anything and `keep_on_failure`; returns where the log now is, or None when it was
        deleted."""
        try:
            self.text.flush()
            content = self.text.buffer
            if succeeded and self.destination is not None and self.destination.parent.is_dir():
                content.seek(0)
                with self.destination.open("ab" if self.append else "wb") as target:
                    shutil.copyfileobj(content, target)
                self.path.unlink(missing_ok=True)
                return self.destination
            if not succeeded and keep_on_failure and os.fstat(content.fileno()).st_size > 0:
                if not self.path.exists():  # deleted under us: write it out again
                    content.seek(0)
                    self.path.write_bytes(content.read())
                return self.path  # what the libraries said before the failure may explain it
            self.path.unlink(missing_ok=True)
            return None
        finally:
            self.text.close()


class _Router(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: a write from one of adaptext's modules goes to `own`, any other to
    `other`.

    The module is that of the function calling `write` (for `print`, the function calling `print`). This is the one
    place that tells torch's exporter prints from adaptext's summaries without changing either.
    """

    def __init__(self, own: IO[str], other: IO[str], replaced: TextIO) -> None:
        super().__init__()
        self.own, self.other, self.replaced = own, other, replaced
        self.detached = False

    def write(self, text: str) -> int:
        if self.detached:  # a library kept a reference past the command (a logging handler): back to the original
            return self.replaced.write(text)
        module = sys._getframe(1).f_globals.get("__name__", "")
        return (self.own if _is_own(module) else self.other).write(text)

    def flush(self) -> None:
        if self.detached:
            self.replaced.flush()
            return
        self.own.flush()
        self.other.flush()

    def isatty(self) -> bool:
        # What a library writes here ends in the debug log: no colours, and no tqdm bar of theirs drawn into it.
        return False

    def fileno(self) -> int:
        return self.replaced.fileno()  # fds 1 and 2 point at the debug log while this stands in

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.replaced.encoding


def _is_own(module: str) -> bool:
    return module == "adaptext" or module.startswith("adaptext.")


class _OwnRecords(logging.Filter):
    """Lets through the records of adaptext's loggers at `level` and above."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return _is_own(record.name) and record.levelno >= self.level


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


def _terminal(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream to the terminal that survives fd `fd` being pointed at the debug log, and whether it is new.

    When `stream` does not write to `fd` (a test's captured stream), it is used as it is.
    """
    try:
        writes_to_fd = stream.fileno() == fd
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        writes_to_fd = False
    if not writes_to_fd:
        return stream, False
    copy = os.fdopen(os.dup(fd), "w", encoding=stream.encoding, errors=stream.errors, buffering=1)
    return copy, True


@contextmanager
def library_output_to_log(*, quiet: bool) -> Iterator[DebugLog]:
    """Run a command with the libraries' output in a debug log and adaptext's on the terminal (see the module).

    Args:
        quiet: Show only adaptext's warnings and errors; its INFO lines and printed summaries go to the log.

    Yields:
        The debug log; call its `finish` after the block to move it into the command's output.
    """
    global _active
    debug_log = DebugLog()
    with _streams_to(debug_log, quiet=quiet), _records_to(debug_log, quiet=quiet):
        _active = debug_log
        try:
            yield debug_log
        finally:
            _active = None


@contextmanager
def _streams_to(debug_log: DebugLog, *, quiet: bool) -> Iterator[None]:
    """fds 1 and 2 into the log; sys.stdout and sys.stderr routed by the writing module."""
    log = debug_log.text
    old_out, old_err = sys.stdout, sys.stderr
    old_out.flush()
    old_err.flush()
    terminal_out, new_out = _terminal(old_out, 1)
    terminal_err, new_err = _terminal(old_err, 2)
    debug_log.terminal_err = terminal_err
    saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved_fds:
        os.dup2(log.fileno(), fd)
    routers = (_Router(log if quiet else terminal_out, log, old_out), _Router(terminal_err, log, old_err))
    sys.stdout, sys.stderr = routers
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        for router in routers:
            router.flush()
            router.detached = True
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        for stream, new in ((terminal_out, new_out), (terminal_err, new_err)):
            if new:
                stream.close()
            else:
                stream.flush()


@contextmanager
def _records_to(debug_log: DebugLog, *, quiet: bool) -> Iterator[None]:
    """Every log record and Python warning into the log; adaptext's records on the terminal too."""
    root = logging.getLogger()
    to_file = logging.StreamHandler(debug_log.text)
    to_terminal = logging.StreamHandler(debug_log.terminal_err)
    to_terminal.addFilter(_OwnRecords(logging.WARNING if quiet else logging.INFO))
    for handler in (to_file, to_terminal):
        handler.setFormatter(logging.Formatter(LOG_FORMAT, TIME_FORMAT))
        root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    old_showwarning = warnings.showwarning
    warnings.showwarning = _log_warning
    try:
        yield
    finally:
        warnings.showwarning = old_showwarning
        root.setLevel(old_level)
        for handler in (to_file, to_terminal):
            root.removeHandler(handler)
