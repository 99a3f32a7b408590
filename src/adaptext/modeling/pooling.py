"""Mean pooling as a plain `transformers` layer, for sentence-transformers encoders."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any, cast

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
    dense = cast(nn.Linear, pre_head_dense(model))
    with torch.no_grad():
        for path, weight in _pooling_weights(linears).items():
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
    use_direct_mean(layer)
    return parameters


def use_direct_mean_pooling(model: nn.Module) -> bool:
    """`use_direct_mean` on the pooling layer of `model` when its config says it has one; False otherwise."""
    config = getattr(model, "config", None)
    if not getattr(config, "adaptext_mean_pooling", False):
        return False
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    return isinstance(layers, nn.ModuleList) and len(layers) > 0 and use_direct_mean(layers[-1])


def use_direct_mean(layer: nn.Module) -> bool:
    """Make the pooling `layer` compute its result directly: the masked mean of the token states, scaled, and its
    two LayerNorms, without the full layer's matrix products; return False (and leave it alone) when its weights are
    not the pooling layer's.

    The saved weights do not change, and the result is the layer's own (plain `transformers` runs the full layer and
    gets the same logits to float rounding), but here the layer costs O(tokens x hidden) instead of a full layer's
    products (one layer in seven for MiniLM: docs/benchmarks.md), and an ONNX export carries a mean, a scaling and
    two LayerNorms instead of the layer's matrix products. The check runs again at each call, so a layer that an
    adapter wraps later (a LoRA on its query) falls back to the layer's own forward.
    """
    if not _is_pooling_layer(layer):
        return False
    # bound to the instance (no closure), so a deep copy of the model rebinds it to the copy's own modules
    layer.forward = types.MethodType(_direct_mean_forward, layer)
    return True


def _direct_mean_forward(
    self: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any
) -> Any:
    """The pooling layer's output, (batch, tokens, hidden), computed as the layer computes it with its constant
    weights: uniform attention gives the mean of the attended tokens, the output weights multiply it by POOL_SCALE,
    the residual and the first LayerNorm follow, and the zero feed-forward leaves the second LayerNorm. The layer's
    own forward for a mask of another kind or wrapped weights."""
    weights = _query_row_weights(attention_mask, hidden_states)
    if weights is None or not _plain_linears(self):
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)
    # (batch, tokens, hidden) -> (batch, 1, hidden): the mean over the tokens the [CLS] query attends to
    mean = (hidden_states * weights.unsqueeze(-1)).sum(dim=1, keepdim=True) / weights.sum(dim=1).view(-1, 1, 1)
    attended = self.get_submodule("attention.output.LayerNorm")(mean * POOL_SCALE + hidden_states)
    return self.get_submodule("output.LayerNorm")(attended)


def _plain_linears(layer: nn.Module) -> bool:
    return all(type(layer.get_submodule(path)) is nn.Linear for path in _POOLING_LINEARS)


def _is_pooling_layer(layer: nn.Module) -> bool:
    """True when `layer`'s weights are those `add_mean_pooling` sets: zero queries, keys and feed-forward, identity
    values and a scaled identity output."""
    try:
        if not _plain_linears(layer):
            return False
        linears = {path: cast(nn.Linear, layer.get_submodule(path)) for path in _POOLING_LINEARS}
    except AttributeError:
        return False
    with torch.no_grad():
        same = all(
            torch.equal(linears[path].weight.cpu(), weight) for path, weight in _pooling_weights(linears).items()
        )
        no_bias = not any(bool(linear.bias.any()) for linear in linears.values() if linear.bias is not None)
    return same and no_bias


def _pooling_weights(linears: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """The pooling layer's weight for each of its linears (shaped and typed as they are; every bias is zero): zero
    queries and keys (every score 0, so attention is uniform over the unmasked tokens), identity values, a
    POOL_SCALE identity output, and no feed-forward."""
    value = linears["attention.self.value"].weight
    eye = torch.eye(value.shape[0], dtype=value.dtype)
    return {
        "attention.self.query": torch.zeros_like(eye),
        "attention.self.key": torch.zeros_like(eye),
        "attention.self.value": eye,
        "attention.output.dense": eye * POOL_SCALE,
        "intermediate.dense": torch.zeros_like(linears["intermediate.dense"].weight, device="cpu"),
        "output.dense": torch.zeros_like(linears["output.dense"].weight, device="cpu"),
    }


def _query_row_weights(attention_mask: Any, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """(batch, tokens) weights, 1 for each token the first query attends to and 0 for the others, from the mask the
    encoder hands its layers: None (no padding), a boolean or additive (batch, 1, queries, tokens) mask, or a
    (batch, tokens) one; None for any other kind."""
    if attention_mask is None:
        return hidden_states.new_ones(hidden_states.shape[:2])
    if not isinstance(attention_mask, torch.Tensor):
        return None
    if attention_mask.dim() == 2 and attention_mask.is_floating_point():
        return None  # 1-for-kept or additive: cannot tell
    row = attention_mask[:, 0, 0, :] if attention_mask.dim() == 4 else attention_mask
    if row.dim() != 2:
        return None
    kept = row if row.dtype == torch.bool else row == 0 if row.is_floating_point() else row != 0
    return kept.to(hidden_states.dtype)
