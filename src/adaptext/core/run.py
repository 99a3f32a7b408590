"""The run folder: its layout, the environment record, and writes that survive being killed half-way."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from adaptext.core.config import (
    Config,
    config_changes,
    config_to_yaml,
    load_config,
)
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import MARKER, check_output_dir, expand, folder_kind, write_marker

RUN_ARTEFACTS = (
    MARKER,
    "model",
    "model.tmp",
    "model.old",
    "checkpoint",
    "checkpoint.tmp",
    "checkpoint.old",
    "tensorboard",
    "config.yaml",
    "labels.json",
    "metrics.json",
    "run_stats.json",
    "env.json",
    "train_log.jsonl",
    "report.html",
    "per_class.csv",
    "confusion_matrix.png",
    "calibration.png",
    "training_curves.png",
    "self_training",  # self-training's rounds, their pseudo-labels and record
    "pseudo_labels.csv",
    "self_training.json",
    "pretrain.json",  # `adaptext pretrain`: its record and loss curve
    "loss.png",
)


ENV_PACKAGES = ("adaptext", "torch", "transformers", "accelerate", "tokenizers", "numpy", "scikit-learn")


@dataclass(frozen=True)
class RunPaths:
    """Where each artefact of a run lives."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def log(self) -> Path:
        return self.root / "train_log.jsonl"


def write_json(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def staging_dir(target: Path) -> Path:
    """The folder `replace_dir` fills before swapping it in for `target`."""
    return target.with_name(target.name + ".tmp")


def backup_dir(target: Path) -> Path:
    """Where `replace_dir` keeps the previous `target` during the swap (and `recover_dir` finds it after a crash)."""
    return target.with_name(target.name + ".old")


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a fresh folder with `write`, then swap it in for `target`.

    At every instant either the old or the new complete folder exists under `target` or `target.old`,
    which `recover_dir` puts back after a crash.
    """
    tmp, old = staging_dir(target), backup_dir(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.replace(old)
    tmp.replace(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> bool:
    """Put back `target` from `target.old` if a crash left it half-swapped; True when `target` exists."""
    old = backup_dir(target)
    if not target.exists() and old.exists():
        old.replace(target)
    shutil.rmtree(staging_dir(target), ignore_errors=True)
    return target.exists()


def run_inputs(config: Config) -> list[Path]:
    """The files and folders a run reads: its output folder may neither be nor hold one of them."""
    data = config.data
    inputs = [p for p in (data.train, data.validation, data.test, data.label_descriptions) if p is not None]
    model = expand(config.model.name)
    if model.exists():
        inputs.append(model)
    return inputs


def check_run_dir(config: Config, *, resume: bool, overwrite: bool) -> RunPaths:
    """Check, without writing anything, that the run may use `config.output_dir` in the requested mode.

    The folder must be new, empty, or an adaptext run folder (which `--resume` continues and `--overwrite`
    replaces); `/`, the home folder, the current folder and folders holding the run's own inputs are refused.
    """
    # An existing run passes here; whether --resume or --overwrite may use it is decided below.
    root = check_output_dir(config.output_dir, "run", overwrite=True, inputs=run_inputs(config))
    paths = RunPaths(root)
    if resume:
        if not (paths.checkpoint.exists() or backup_dir(paths.checkpoint).exists()):
            raise AdaptextError(f"{paths.root}: nothing to resume (no checkpoint); start without --resume")
    elif folder_kind(root.resolve()) == "run" and not overwrite:  # an empty folder is a new run
        raise AdaptextError(
            f"{paths.root}: already holds a run; use --resume to continue it, --overwrite to replace it, "
            "or set output_dir to another folder"
        )
    return paths


def prepare_run_dir(config: Config, *, resume: bool, overwrite: bool) -> RunPaths:
    """Check the run folder against the requested mode, then set it up: marker and resolved config."""
    paths = check_run_dir(config, resume=resume, overwrite=overwrite)
    if resume:
        recover_dir(paths.checkpoint)
        recover_dir(paths.model)
        saved = load_config(paths.config)
        _check_same_config(saved, config)
    elif paths.root.exists():
        remove_run(paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_marker(paths.root, "run")
    paths.config.write_text(config_to_yaml(config), encoding="utf-8")
    return paths


def remove_run(paths: RunPaths) -> None:
    """Delete what a run wrote into its folder, and nothing else a user may keep there."""
    for name in RUN_ARTEFACTS:
        for path in paths.root.glob(name):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _check_same_config(saved: Config, given: Config) -> None:
    # Resuming with other settings would silently mix two runs; only the run length may change. The run folder
    # itself is the one holding the checkpoint, wherever it now lies: a moved folder (`mv runs/a runs/b`) resumes.
    allowed = frozenset({"output_dir", "train.epochs", "train.max_steps", "train.early_stopping_patience"})
    changed = config_changes(saved, given, allowed)
    if changed:
        details = "; ".join(changed)
        raise AdaptextError(f"--resume with a different config ({details}); resume with the run's own config.yaml")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment_record(device: str, precision: str, processes: int = 1) -> dict[str, Any]:
    """Versions, device, processes and git revision: what is needed to tell how a run was made."""
    versions: dict[str, str | None] = {}
    for name in ENV_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "precision": precision,
        "processes": processes,
        "git_revision": _git_revision(),
        "packages": versions,
    }


def read_train_log(log_path: Path) -> list[dict[str, Any]]:
    """The records of a run's `train_log.jsonl` (empty when there is none)."""
    if not log_path.is_file():
        return []
    return [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_log(paths: RunPaths, record: dict[str, Any]) -> None:
    with paths.log.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
