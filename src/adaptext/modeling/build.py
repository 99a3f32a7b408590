"""Resolving a model name and building a sequence classifier whose config carries the label names.

A sequence-classification model reads the [CLS] state. Sentence-transformers models (the bundled `minilm`
among them) were trained to represent a text by the mean of its token states instead, and their [CLS] state and
pooler were never trained for it, so `add_mean_pooling` can append one encoder layer that computes the mean into
the [CLS] position (uniform attention over the unpadded tokens, identity values, no feed-forward). The result is
still a plain `transformers` model: `pipeline`, export and serving take it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from adaptext.core.errors import AdaptextError
from adaptext.core.task import Task
from adaptext.modeling.embedding import final_linear
from adaptext.modeling.hub import _first_line, check_classifier_folder, resolve_model_name
from adaptext.modeling.pooling import _fix_pooling_layer, add_mean_pooling, has_mean_pooling, mean_pooling_supported
from adaptext.modeling.used_rows import ROWS

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


HEAD_PREFIXES = ("classifier", "score", "pre_classifier")


# The config keys that hold the dropout on the attention probabilities, by model family (BERT and its kin, then
# DistilBERT / BART / Llama-style, then GPT-2-style).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def build_model(
    name: str, labels: list[str], task: Task, pooling: str = "cls", attention_dropout: float | None = None
) -> PreTrainedModel:
    """A pretrained encoder with a fresh classification head for `labels`, reading the [CLS] state or (`pooling`
    `mean`, see `resolve_pooling`) the mean of the token states; with `attention_dropout`, that dropout on its
    attention probabilities instead of the model's own (`train.attention_dropout`).

    The label names go into the model config (`id2label`), so plain `transformers.pipeline` reports them. A model
    folder that already has adaptext's pooling layer keeps it (frozen), whatever `pooling` says.
    """
    path = resolve_model_name(name)
    config = model_config(name, labels, task)
    if attention_dropout is not None:
        key = next((key for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)), None)
        if key is None:
            raise AdaptextError(
                f"train.attention_dropout: {name} ({config.model_type}) has no attention dropout in its config "
                f"(looked for {', '.join(ATTENTION_DROPOUT_KEYS)}); leave it unset"
            )
        setattr(config, key, attention_dropout)
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
    if has_mean_pooling(model):
        _fix_pooling_layer(model)
    elif pooling == "mean":
        if not mean_pooling_supported(model):
            raise AdaptextError(
                f"{name}: model.pooling=mean needs a BERT-style encoder (BERT, MiniLM, RoBERTa, XLM-R) with a dense "
                "layer before the head; use model.pooling=cls"
            )
        add_mean_pooling(model)
    return model


def model_config(name: str, labels: list[str], task: Task) -> PretrainedConfig:
    """The config of model `name` with a head for `labels` (their names in `id2label`) answering `task`."""
    try:
        return AutoConfig.from_pretrained(
            resolve_model_name(name),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type=task.problem_type,
        )
    except OSError as error:
        raise AdaptextError(
            f"cannot load model {name!r}: {_first_line(error)}. Give a local folder, a cached hub id, "
            "or model.name=minilm for the bundled model."
        ) from None


def answer_config(labels: Sequence[str], task: Task) -> PretrainedConfig:
    """A bare config naming `labels` and `task`'s problem type: what a module that answers like a transformers
    classifier without being one (an ensemble, a routed model) shows to `Predictor`."""
    return PretrainedConfig(
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=task.problem_type,  # type: ignore[arg-type]  # one of transformers' literals, as a str
    )


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts. For a peft model the total is base plus adapter, with the head counted
    once (peft keeps the original head beside the trained copy), and word embeddings that train only their used
    rows (`UsedRowsEmbedding`) count their full matrix once."""
    named = [(name, p) for name, p in model.named_parameters() if ".original_module." not in name]
    total = sum(p.numel() for name, p in named if not name.endswith(f".{ROWS}"))
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    return trainable, total


def label_config(base: PretrainedConfig, labels: list[str]) -> PretrainedConfig:
    """`base` with `labels` as its label names (single-label)."""
    config = base.__class__.from_dict(base.to_dict())
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    config.problem_type = "single_label_classification"
    return config


def grow_head(model: PreTrainedModel, labels: list[str]) -> int:
    """Give `model`'s head a row for each label of `labels` it lacks; returns how many labels it had.

    `labels` must start with the model's own labels in their order: those keep their rows (weights and bias) and
    ids exactly, and each new label gets a fresh row initialised as transformers initialises a head.
    """
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    old = [id2label[i] for i in range(len(id2label))]
    if labels[: len(old)] != old:
        raise AdaptextError(f"the new labels {labels[:5]}... must start with the model's labels {old[:5]}...")
    if len(labels) == len(old):
        return len(old)
    layer = final_linear(model)
    grown = nn.Linear(layer.in_features, len(labels), bias=layer.bias is not None)
    grown.to(device=layer.weight.device, dtype=layer.weight.dtype)
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        grown.weight.normal_(0.0, std)
        grown.weight[: len(old)] = layer.weight
        if layer.bias is not None:
            grown.bias.zero_()
            grown.bias[: len(old)] = layer.bias
    parent_name, _, child = next(name for name, module in model.named_modules() if module is layer).rpartition(".")
    setattr(model.get_submodule(parent_name), child, grown)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.config.num_labels = len(labels)
    if isinstance(getattr(model, "num_labels", None), int):
        model.num_labels = len(labels)  # type: ignore[assignment]
    return len(old)


def load_trained(folder: str | Path) -> PreTrainedModel:
    """A fine-tuned classifier folder (full weights, head included) ready to train further: its mean-pooling layer,
    if it has one, frozen as `build_model` leaves it."""
    try:
        check_classifier_folder(Path(folder))
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise AdaptextError(f"cannot load the model in {folder}: {_first_line(error)}") from None
    if has_mean_pooling(model):
        _fix_pooling_layer(model)
    return model
