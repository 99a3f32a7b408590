"""Quiet output: adaptext's own messages on the terminal, the libraries' chatter in the command's `debug.log`.

The end-to-end tests run `python -m adaptext` as a child process and read its file descriptors 1 and 2, so what
C++ code (onnxruntime) writes past Python's streams counts too.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adaptext.cli import main
from adaptext.cli import sample as sample_command
from adaptext.core import console
from adaptext.core.console import DEBUG_LOG, keep_debug_log, library_output_to_log, progress_bar, set_quiet
from conftest import write_splits

OWN_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR|CRITICAL) adaptext(\.\S+)?: ")


def as_module(name: str, source: str) -> Callable[[], None]:
    """The function `speak` defined by `source` as if in module `name` (what `print` routing looks at)."""
    namespace: dict[str, Any] = {"__name__": name}
    exec(source, namespace)
    function: Callable[[], None] = namespace["speak"]
    return function


library_print = as_module("somelib.exporter", "def speak():\n    print('[somelib] Obtain model graph')\n")
own_print = as_module("adaptext.cli.fake", "def speak():\n    print('exported model: here')\n")


def chatter() -> None:
    """One of each kind of output a command's libraries and adaptext itself produce."""
    logging.getLogger("adaptext.fake").info("own info line")
    logging.getLogger("adaptext.fake").warning("own warning line")
    logging.getLogger("somelib").warning("library warning line")
    logging.getLogger().info("Quantization parameters for tensor:'x' not specified")  # as onnxruntime logs
    warnings.warn("library python warning", UserWarning, stacklevel=1)
    library_print()
    own_print()
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"native stdout line\n")
    os.write(2, b"native stderr line\n")


@pytest.fixture(autouse=True)
def not_quiet() -> Iterator[None]:
    yield
    set_quiet(False)


def run_captured(tmp_path: Path, *, quiet: bool) -> str:
    """`chatter()` inside `library_output_to_log`; the debug log's text."""
    with library_output_to_log(quiet=quiet) as debug_log:
        chatter()
        keep_debug_log(tmp_path / DEBUG_LOG)
    assert debug_log.finish(succeeded=True) == tmp_path / DEBUG_LOG
    assert not debug_log.path.exists()  # moved, not copied
    return (tmp_path / DEBUG_LOG).read_text(encoding="utf-8")


LIBRARY_LINES = [
    "library warning line",
    "Quantization parameters for tensor",
    "library python warning",
    "[somelib] Obtain model graph",
    "native stdout line",
    "native stderr line",
]


# the mechanism, in this process --------------------------------------------------------------


def test_without_quiet_the_terminal_shows_only_adaptext_and_the_log_holds_everything(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = run_captured(tmp_path, quiet=False)
    out, err = capfd.readouterr()
    assert out == "exported model: here\n"
    assert [line.split(": ", 1)[1] for line in err.splitlines()] == ["own info line", "own warning line"]
    assert all(OWN_LOG_LINE.match(line) for line in err.splitlines()), err
    for line in [*LIBRARY_LINES, "own info line", "own warning line"]:
        assert line in log, line


def test_quiet_shows_only_adaptext_warnings_and_keeps_the_rest_in_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = run_captured(tmp_path, quiet=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert OWN_LOG_LINE.match(err) and err.endswith("own warning line\n"), err
    for line in [*LIBRARY_LINES, "own info line", "exported model: here"]:
        assert line in log, line


def test_everything_is_put_back_after_the_block(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    streams, root_level, handlers = (sys.stdout, sys.stderr), logging.getLogger().level, logging.getLogger().handlers
    showwarning = warnings.showwarning
    with library_output_to_log(quiet=True) as debug_log:
        kept_stream = sys.stderr  # as a library's logging handler created during the command keeps it
    debug_log.finish(succeeded=True)
    assert (sys.stdout, sys.stderr) == streams
    assert logging.getLogger().level == root_level and logging.getLogger().handlers == handlers
    assert warnings.showwarning is showwarning
    os.write(1, b"fd 1 after\n")
    os.write(2, b"fd 2 after\n")
    kept_stream.write("through a kept stream\n")
    kept_stream.flush()
    out, err = capfd.readouterr()
    assert out == "fd 1 after\n"
    assert err == "fd 2 after\nthrough a kept stream\n"


def test_a_failed_command_keeps_a_non_empty_log_and_a_success_without_a_place_deletes_it() -> None:
    with library_output_to_log(quiet=True) as failed:
        logging.getLogger("somelib").warning("what went wrong")
    assert failed.finish(succeeded=False) == failed.path
    assert "what went wrong" in failed.path.read_text(encoding="utf-8")
    failed.path.unlink()

    with library_output_to_log(quiet=True) as user_error:  # its message says what to change: no log kept
        logging.getLogger("somelib").warning("chatter")
    assert user_error.finish(succeeded=False, keep_on_failure=False) is None
    with library_output_to_log(quiet=True) as empty:
        pass
    assert empty.finish(succeeded=False) is None
    with library_output_to_log(quiet=True) as succeeded:
        logging.getLogger("somelib").warning("chatter")
    assert succeeded.finish(succeeded=True) is None
    assert not any(log.path.exists() for log in (succeeded, empty, user_error))


def test_an_unexpected_failure_keeps_the_log_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash(args: argparse.Namespace) -> int:
        logging.getLogger("somelib").warning("what the library said first")
        raise RuntimeError("boom")

    monkeypatch.setattr(sample_command, "run", crash)
    with pytest.raises(RuntimeError, match="boom"):
        main(["-q", "sample", "data.csv", "--per-class", "1", "--output", str(tmp_path / "out.csv")])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("adaptext sample: the libraries' messages are in ")
    kept = Path(line.rsplit(" are in ", 1)[1])
    assert "what the library said first" in kept.read_text(encoding="utf-8")
    kept.unlink()


def test_a_resumed_command_appends_to_its_log(tmp_path: Path) -> None:
    target = tmp_path / DEBUG_LOG
    target.write_text("first run\n", encoding="utf-8")
    with library_output_to_log(quiet=True) as debug_log:
        logging.getLogger("somelib").warning("second run")
        keep_debug_log(target, append=True)
    debug_log.finish(succeeded=True)
    lines = target.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "first run" and lines[1].endswith("second run")


def test_a_temporary_log_deleted_mid_command_is_still_kept(tmp_path: Path) -> None:
    with library_output_to_log(quiet=True) as debug_log:
        logging.getLogger("somelib").warning("before the cleaner")
        debug_log.path.unlink()  # as a cleaner of the temporary folder would
        os.write(2, b"after the cleaner\n")
        keep_debug_log(tmp_path / DEBUG_LOG)
    debug_log.finish(succeeded=True)
    log = (tmp_path / DEBUG_LOG).read_text(encoding="utf-8")
    assert "before the cleaner" in log and "after the cleaner" in log


def test_keep_debug_log_outside_a_command_does_nothing(tmp_path: Path) -> None:
    keep_debug_log(tmp_path / DEBUG_LOG)
    assert console._active is None
    assert not (tmp_path / DEBUG_LOG).exists()


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_hide_when_quiet_and_draw_on_the_terminal_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = range(2)
    assert progress_bar(items, show=False) is items  # a hidden bar over an iterable costs nothing: no tqdm object
    assert progress_bar(total=2, show=False).disable  # one updated by hand is a disabled tqdm
    set_quiet(True)
    assert progress_bar(items) is items
    assert progress_bar(total=2).disable
    set_quiet(False)

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for quiet in (True, False):
        set_quiet(quiet)
        with library_output_to_log(quiet=quiet) as debug_log:
            for _ in progress_bar(range(3), desc=f"bar-{quiet}"):
                pass
            keep_debug_log(tmp_path / f"{quiet}.log")
        debug_log.finish(succeeded=True)
        assert f"bar-{quiet}" not in (tmp_path / f"{quiet}.log").read_text(encoding="utf-8")
    assert "bar-False" in terminal.getvalue() and "bar-True" not in terminal.getvalue()


# end to end: `python -m adaptext` in a child process -----------------------------------------


def adaptext(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m adaptext ARGV` in a child process, offline, its stdout and stderr read from fds 1 and 2."""
    return subprocess.run(
        [sys.executable, "-m", "adaptext", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@pytest.fixture(scope="module")
def quiet_train(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`adaptext -q train CONFIG` of the tiny model, run once: the finished process and the run folder."""
    folder = tmp_path_factory.mktemp("quiet")
    files = write_splits(folder, train=48, validation=12, test=0)
    config = folder / "config.yaml"
    config.write_text(
        f"model: {{name: '{tiny_model_dir}'}}\n"
        f"data: {{train: '{files['train']}', validation: '{files['validation']}', max_length: 32}}\n"
        "train: {epochs: 1, batch_size: 8, precision: fp32}\n"
        f"output_dir: '{folder / 'run'}'\n",
        encoding="utf-8",
    )
    return {"done": adaptext("-q", "train", str(config), cwd=folder), "run": folder / "run", "folder": folder}


def test_quiet_train_prints_nothing_and_keeps_the_chatter_in_the_run_folder(quiet_train: dict[str, Any]) -> None:
    done, run = quiet_train["done"], quiet_train["run"]
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    log = (run / DEBUG_LOG).read_text(encoding="utf-8")
    assert f"run folder:  {run}" in log  # the summary a quiet command does not print
    assert "INFO accelerate." in log  # the libraries' chatter
    assert "INFO adaptext.training.engine: step 6: validation" in log


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_quiet_export_prints_nothing_and_keeps_the_chatter_in_the_export(
    quiet_train: dict[str, Any], quantize: str | None
) -> None:
    output = quiet_train["folder"] / f"export-{quantize or 'fp32'}"
    done = adaptext(
        "-q",
        "export",
        str(quiet_train["run"]),
        "--output",
        str(output),
        *(["--quantize", quantize] if quantize else []),
        cwd=quiet_train["folder"],
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    log = (output / DEBUG_LOG).read_text(encoding="utf-8")
    assert "export check passed on 12 examples" in log
    assert "onnx" in log.replace("adaptext.deploy.export", "")  # the exporter's own lines, not only ours
    if quantize:
        assert "Quantization parameters for tensor" in log  # onnxruntime's quantizer


def test_without_quiet_export_shows_the_summary_and_adaptext_lines_only(quiet_train: dict[str, Any]) -> None:
    output = quiet_train["folder"] / "export-loud"
    done = adaptext("export", str(quiet_train["run"]), "--output", str(output), cwd=quiet_train["folder"])
    assert done.returncode == 0, done.stderr
    assert f"exported model: {output}" in done.stdout
    assert done.stderr.strip(), "adaptext's INFO lines show without -q"
    assert all(OWN_LOG_LINE.match(line) for line in done.stderr.splitlines()), done.stderr
    assert "onnx" in (output / DEBUG_LOG).read_text(encoding="utf-8").replace("adaptext.deploy.export", "")


def test_quiet_still_prints_an_adaptext_error(quiet_train: dict[str, Any]) -> None:
    output = quiet_train["folder"] / "refused"
    done = adaptext(
        "-q", "export", str(quiet_train["run"]), "--output", str(output), "--sample", "0", cwd=quiet_train["folder"]
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("adaptext export: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()
