"""Sentence embeddings of a classification model: the input of its final layer, batched."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptext.data.batching import Encoded, map_batches, tokenize
from adaptext.data.examples import TextData
from adaptext.modeling.pooling import add_mean_pooling, mean_pooling_supported

logger = logging.getLogger(__name__)


def final_linear(model: PreTrainedModel) -> nn.Linear:
    """The layer that maps embeddings to label scores: the last `nn.Linear` with one output per label."""
    num_labels = len(model.config.id2label or {})
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer with {num_labels} outputs")
    return found[-1]


class EmbeddingTap:
    """Captures the input of the model's final classification layer on every forward pass."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.value: torch.Tensor | None = None
        self._handle = final_linear(model).register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.value = inputs[0]

    def close(self) -> None:
        self._handle.remove()


# The dense layer before the head is HEAD_SCALE times the identity and fixed: the tanh after it gets inputs ~1e-3,
# where it is linear to ~1e-5, so the head sees the mean-pooled embedding itself.
HEAD_SCALE = 1e-3


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """torch autocast to `dtype` on `device`'s kind, or no change when `dtype` is None (fp32)."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def embed(
    model: PreTrainedModel,
    encoded: Encoded,
    *,
    pad_token_id: int,
    batch_size: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """The final layer's input for every example (eval mode), in example order, as float32."""
    device = torch.device(model.device)
    tap = EmbeddingTap(model)
    model.eval()

    def final_input(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, autocast_dtype):
            model(**batch)
        assert tap.value is not None
        return tap.value

    try:
        return map_batches(encoded, final_input, pad_token_id=pad_token_id, device=device, batch_size=batch_size)
    finally:
        tap.close()


def prepare_encoder(model: PreTrainedModel) -> bool:
    """Give `model` a mean-pooled embedding where its architecture allows (True), else keep the [CLS] path."""
    if mean_pooling_supported(model):
        add_mean_pooling(model, head_scale=HEAD_SCALE, freeze_head_dense=True)
        return True
    logger.warning(
        "%s: no mean-pooling layer for this architecture; the embedding is the head's own input ([CLS])",
        type(model).__name__,
    )
    return False


def encode_texts(tokenizer: PreTrainedTokenizerBase, data: TextData, max_length: int) -> Encoded:
    """Tokenise once, without targets (the contrastive loss takes them separately)."""
    return Encoded(features=tokenize(tokenizer, data.texts, data.pairs, max_length), targets=None)
