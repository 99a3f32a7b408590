"""A zero-shot scorer as a plain classifier: label embeddings as the head, scaled cosines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
)

from adaptext.core.config import Config
from adaptext.core.device import default_device
from adaptext.core.errors import AdaptextError
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.examples import TextData
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import HEAD_SCALE, embed, encode_texts, final_linear
from adaptext.modeling.hub import load_tokenizer
from adaptext.modeling.pooling import add_mean_pooling, mean_pooling_supported

if TYPE_CHECKING:
    pass


def similarity_model(config: Config, labels: list[str], sentences: list[str]) -> PreTrainedModel:
    """A sequence-classification model whose logits are the cosine similarities between a text's mean-pooled
    embedding and each label sentence's, at temperature 1 (`set_temperature` changes it).

    The mean pooling is the layer `model.add_mean_pooling` appends; every embedding it gives has the same norm
    (sqrt(hidden) * HEAD_SCALE), so a dot product with unit label vectors divided by that norm is the cosine, and
    the head stays one linear layer of a plain `transformers` model.
    """
    model = build_model(config.model.name, labels, SINGLE_LABEL)
    if not mean_pooling_supported(model):
        raise AdaptextError(
            f"{config.model.name}: zero-shot similarity needs a BERT-style encoder (BERT, MiniLM, RoBERTa, XLM-R); "
            "give zeroshot.nli_model for NLI scoring instead"
        )
    add_mean_pooling(model, head_scale=HEAD_SCALE, freeze_head_dense=True)
    model.to(default_device(None))  # type: ignore[arg-type]
    model.eval()
    tokenizer = load_tokenizer(config.model.name)
    encoded = encode_texts(tokenizer, TextData(texts=sentences, source="labels"), config.data.max_length)
    embeddings = embed(model, encoded, pad_token_id=tokenizer.pad_token_id or 0)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    head = final_linear(model)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(embeddings / norms / float(np.median(norms)), dtype=head.weight.dtype))
        head.bias.zero_()
    return model


def set_temperature(model: PreTrainedModel, temperature: float) -> None:
    """Divide the similarity head's logits by `temperature` (from temperature 1)."""
    head = final_linear(model)
    with torch.no_grad():
        head.weight.div_(temperature)
