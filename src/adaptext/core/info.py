"""Model folders: where a run keeps its model, and the `adaptext.json` record saved next to the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptext.core.errors import AdaptextError

MODEL_SUBDIR = "model"
METADATA_FILE = "adaptext.json"
ADAPTER_CONFIG = "adapter_config.json"  # peft's


def is_adapter_folder(path: Path) -> bool:
    """True for a peft adapter folder (weights of the adapter and head only, on top of a base model)."""
    return (path / ADAPTER_CONFIG).is_file()


def find_model_dir(path: str | Path) -> Path:
    """The model folder for `path`: a run folder (its `model/` inside), a model folder or an adapter folder."""
    path = Path(path)
    if not path.exists():
        raise AdaptextError(f"{path}: no such model or run folder")
    for folder in (path / MODEL_SUBDIR, path):
        if (folder / "config.json").is_file() or is_adapter_folder(folder):
            return folder
    raise AdaptextError(
        f"{path}: not a run folder (no {MODEL_SUBDIR}/ inside) nor a model folder (no config.json or {ADAPTER_CONFIG})"
    )


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """The `adaptext.json` saved beside a model (empty for a folder adaptext did not write)."""
    path = model_dir / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
