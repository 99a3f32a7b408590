"""Mean pooling as a plain `transformers` layer, for sentence-transformers encoders."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import cast

import torch
from torch import nn
from transformers import (
    PreTrainedModel,
)

from adaptext.modeling.hub import resolve_model_name


def sentence_pooling(name: str) -> str | None:
    """How the sentence-transformers model `name` pools token states (`mean`, `cls`, `max`, ...), from its
    `modules.json` and pooling config; None when `name` is no local sentence-transformers folder."""
    folder = Path(resolve_model_name(name))
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        pooling = next(m for m in modules if str(m.get("type", "")).endswith("models.Pooling"))
        settings = json.loads((folder / pooling["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return None
    modes = [
        key.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
        for key, on in settings.items()
        if key.startswith("pooling_mode_") and on is True
    ]
    return modes[0] if len(modes) == 1 else None


def resolve_pooling(name: str, requested: str, peft_method: str = "none") -> str:
    """`cls` or `mean` for `model.pooling`: `auto` takes `mean` for a sentence-transformers model trained with mean
    pooling when the whole model is fine-tuned (a peft method would adapt the pooling layer too)."""
    if requested != "auto":
        return requested
    return "mean" if peft_method == "none" and sentence_pooling(name) == "mean" else "cls"


# The pooling layer's attention output is scaled so far above the residual [CLS] state that the LayerNorm after
# it sees the mean alone (relative error ~1e-5 in fp32).
POOL_SCALE = 1e6


def pre_head_dense(model: PreTrainedModel) -> nn.Linear | None:
    """The dense layer (followed by tanh) between the [CLS] state and the head: BERT's pooler, RoBERTa's head."""
    pooler = getattr(model.base_model, "pooler", None)
    dense = getattr(pooler, "dense", None) or getattr(getattr(model, "classifier", None), "dense", None)
    return dense if isinstance(dense, nn.Linear) else None


def mean_pooling_supported(model: PreTrainedModel) -> bool:
    """True for BERT-style encoders (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA-like layers) with a tanh dense layer
    before the head."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or pre_head_dense(model) is None:
        return False
    last = layers[-1]
    try:
        return all(
            isinstance(last.get_submodule(path), nn.Linear | nn.LayerNorm) for path in (*_POOLING_LINEARS, *_NORMS)
        )
    except AttributeError:
        return False


_POOLING_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


def has_mean_pooling(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "adaptext_mean_pooling", False))


def add_mean_pooling(
    model: PreTrainedModel, head_scale: float = 1.0, freeze_head_dense: bool = False
) -> list[nn.Parameter]:
    """Append a layer that puts the mean of the token states (padding excluded) into the [CLS] position, and make
    the dense layer before the head `head_scale` times the identity; return the parameters that must stay fixed
    (the new layer's, and the dense layer's if `freeze_head_dense`).

    The [CLS] state after the new layer is LayerNorm(mean), so the dense layer's output is
    head_scale * LayerNorm(mean) before its tanh: the mean-pooled sentence embedding, centred and scaled to norm
    sqrt(hidden) * head_scale. For fine-tuning the dense layer starts as the identity and trains (BERT's pooler
    on the mean); few-shot training makes it small and fixed so the tanh stays linear.
    """
    if not mean_pooling_supported(model):
        raise ValueError(f"{type(model).__name__}: mean pooling needs BERT-style encoder layers and a pooler")
    layers = cast(nn.ModuleList, model.base_model.encoder.layer)  # type: ignore[union-attr]
    layer = copy.deepcopy(layers[-1])
    size = int(model.config.hidden_size)
    eye = torch.eye(size)
    linears = cast(dict[str, nn.Linear], {path: layer.get_submodule(path) for path in _POOLING_LINEARS})
    settings = {
        "attention.self.query": torch.zeros(size, size),  # every score 0: uniform over unmasked tokens
        "attention.self.key": torch.zeros(size, size),
        "attention.self.value": eye,
        "attention.output.dense": eye * POOL_SCALE,
        "intermediate.dense": torch.zeros_like(linears["intermediate.dense"].weight),
        "output.dense": torch.zeros_like(linears["output.dense"].weight),
    }
    dense = cast(nn.Linear, pre_head_dense(model))
    with torch.no_grad():
        for path, weight in settings.items():
            linears[path].weight.copy_(weight)
            linears[path].bias.zero_()
        for path in _NORMS:
            norm = cast(nn.LayerNorm, layer.get_submodule(path))
            norm.weight.fill_(1.0)
            norm.bias.fill_(0.0)
        dense.weight.copy_(eye * head_scale)
        dense.bias.zero_()
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            setattr(module, "layer_idx", len(layers))  # noqa: B010
    layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    model.config.adaptext_mean_pooling = True  # saved in config.json: the last layer is this pooling layer
    fixed = _fix_pooling_layer(model)
    if freeze_head_dense:
        for parameter in dense.parameters():
            parameter.requires_grad_(False)
        fixed += list(dense.parameters())
    return fixed


def _fix_pooling_layer(model: PreTrainedModel) -> list[nn.Parameter]:
    """Freeze the pooling layer and switch off its dropout (dropped attention weights or features would make the
    mean random in training); return its parameters."""
    layer = cast(nn.Module, model.base_model.encoder.layer[-1])  # type: ignore[union-attr,index]
    for module in layer.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    parameters = list(layer.parameters())
    for parameter in parameters:
        parameter.requires_grad_(False)
    return parameters
