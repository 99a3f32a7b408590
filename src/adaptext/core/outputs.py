"""Where a command may write: the rules that keep every command from losing a user's file.

A command writes only into a folder that does not exist, is empty, or is a folder of the same kind that adaptext
itself wrote (recognised by its marker file, `.adaptext`), and replaces such a folder only when asked to
(`--overwrite`). It never writes over its own inputs, and it refuses `/`, the home folder and the current folder as
an output folder. Each refusal is an `AdaptextError` naming the path, raised before any work.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from adaptext.core.errors import AdaptextError

MARKER = ".adaptext"


FolderKind = Literal[
    "run", "evaluation", "export", "merge", "tune", "explanation", "audit", "student", "ensemble", "robustness"
]


_WHAT = {
    "run": "training run",
    "evaluation": "evaluation report",
    "export": "ONNX export",
    "merge": "merged model",
    "tune": "tuning study",
    "explanation": "explanation",
    "audit": "data audit",
    "student": "distilled student",
    "ensemble": "ensemble",
    "robustness": "robustness report",
}


def expand(path: str | Path) -> Path:
    """`path` with `~` expanded (as a shell would), otherwise as given."""
    return Path(path).expanduser()


def write_marker(folder: Path, kind: FolderKind) -> None:
    """Mark `folder` as an adaptext folder of `kind`, so a later command may replace it with --overwrite."""
    (folder / MARKER).write_text(json.dumps({"kind": kind, "format": 1}) + "\n", encoding="utf-8")


def folder_kind(folder: Path) -> str | None:
    """The kind of adaptext folder `folder` is, from its marker (or the layout of releases before the marker)."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None
    # Folders written before the marker existed: recognised by files only adaptext writes together.
    run_files = (folder / "config.yaml").is_file() and (folder / "labels.json").is_file()
    if run_files and ((folder / "model").is_dir() or (folder / "checkpoint").is_dir()):
        return "run"
    meta = folder / "adaptext.json"
    if meta.is_file():
        if (folder / "model.onnx").is_file():
            return "export"
        try:
            if "merged_from" in json.loads(meta.read_text(encoding="utf-8")):
                return "merge"
        except (ValueError, UnicodeDecodeError, TypeError):
            return None
    return None


def check_output_dir(
    path: str | Path,
    kind: FolderKind,
    *,
    overwrite: bool,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Check that a command may write its `kind` of folder at `path`; return the path with `~` expanded.

    `inputs` are the files and folders the command reads: the output may neither be one of them nor hold one.
    """
    given = expand(path)
    target = given.resolve()
    _refuse_special(given, target)
    for source in inputs:
        source_path = expand(source).resolve()
        if target == source_path or target in source_path.parents:
            raise AdaptextError(f"{given}: this output folder would replace the input {source}; choose another folder")
    if not target.exists():
        return given
    if not target.is_dir():
        raise AdaptextError(f"{given}: exists and is not a folder; choose a new folder")
    content = sorted(item.name for item in target.iterdir())
    if not content:
        return given
    found = folder_kind(target)
    if found != kind:
        shown = ", ".join(content[:3]) + (f" and {len(content) - 3} more" if len(content) > 3 else "")
        what = f"an adaptext {_WHAT.get(found, found)} folder" if found else f"not a folder adaptext wrote ({shown})"
        raise AdaptextError(
            f"{given}: is {what}, not an adaptext {_WHAT[kind]} folder; nothing was written. "
            "Choose a new or empty folder"
        )
    if not overwrite:
        raise AdaptextError(f"{given}: already holds an adaptext {_WHAT[kind]}; use --overwrite to replace it")
    return given


def check_output_file(path: str | Path, *, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Check that a command may write the file `path`: not one of its `inputs`, not a folder, and new unless
    `overwrite`. Returns the path with `~` expanded."""
    given = expand(path)
    target = given.resolve()
    for source in inputs:
        if target == expand(source).resolve():
            raise AdaptextError(f"{given}: the output would overwrite the input file {source}; choose another file")
    if target.is_dir():
        raise AdaptextError(f"{given}: is a folder; give a file name")
    if target.exists() and not overwrite:
        raise AdaptextError(f"{given}: already exists; use --overwrite to replace it")
    return given


def replace_folder(target: Path, write: Callable[[Path], object], kind: FolderKind) -> None:
    """Fill a fresh, uniquely named folder next to `target` with `write` and the marker, then swap it in.

    `target` must have passed `check_output_dir`: it is missing, empty, or an adaptext folder of `kind`.
    Only folders this call created are deleted; a failure in `write` leaves `target` as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        write(staging)
        write_marker(staging, kind)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.exists():
        staging.replace(target)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    previous.rmdir()  # a free name to move the old folder to
    target.replace(previous)
    staging.replace(target)
    shutil.rmtree(previous, ignore_errors=True)


def _refuse_special(given: Path, target: Path) -> None:
    special = {Path("/").resolve(): "the root folder", Path.home().resolve(): "your home folder"}
    special.setdefault(Path.cwd().resolve(), "the current folder")
    if target in special:
        raise AdaptextError(
            f"{given}: is {special[target]}; adaptext does not write its output there. Name a new folder inside it"
        )
