"""The sentence embeddings an audit works on: a saved classifier's encoder, or a pretrained encoder.

With a run or model folder saved by adaptext (`--model`), the embedding is the input of the model's final linear
layer, the representation its own head reads. Without one, a pretrained encoder (`--encoder`, by default the
bundled `minilm`) is mean-pooled as in few-shot training. Both are L2-normalised, so a dot product is a cosine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from adaptext.core.console import progress_bar
from adaptext.core.device import default_device
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo, find_model_dir
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.batching import Encoded, tokenize
from adaptext.data.examples import TextData
from adaptext.inference.loaders import FolderLoader, OnnxLoader, TransformersLoader, loader_for
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import embed, final_linear, prepare_encoder
from adaptext.modeling.hub import check_classifier_folder, load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "minilm"
EMBED_CHUNK = 2048  # texts per `embed` call: one progress step, and a bound on the tokenized features held at once


@dataclass
class Encoder:
    """A model whose final layer's input is the embedding, with its tokenizer and text length."""

    model: Any
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    source: str  # what the embeddings come from, for the report


def check_model_folder(path: str | Path) -> tuple[Path, FolderLoader, ModelInfo]:
    """The model folder of a run or model folder and its loader, or an `AdaptextError` when it has no encoder to
    read embeddings from (an ONNX export, a prompt or NLI model). Cheap: reads no weights."""
    model_dir = find_model_dir(path)
    info = ModelInfo.read(model_dir)
    loader = loader_for(model_dir, info)
    if isinstance(loader, OnnxLoader) or not loader.plain_classifier:
        raise AdaptextError(
            f"{path}: is a {loader.description} model, which has no encoder whose embeddings an audit can read; "
            "give a run or model folder of a fine-tuned, few-shot or adapter classifier, or omit --model"
        )
    return model_dir, loader, info


def load_encoder(model: str | Path | None, encoder: str, *, max_length: int, device: str | None = None) -> Encoder:
    """The encoder of saved classifier `model`, else the mean-pooled pretrained encoder `encoder`; a `model` folder
    that holds an encoder without a classifier head (an `adaptext pretrain` run's) is read as that encoder."""
    if model is not None and _is_encoder_folder(folder := find_model_dir(model)):
        return load_encoder(None, str(folder), max_length=max_length, device=device)
    if model is not None:
        check_model_folder(model)  # an ONNX, prompt or NLI folder is refused before its weights are read
        predictor = Predictor.from_dir(model, device=device)
        predictor.require_classifier("audit")
        try:
            final_linear(predictor.model)
        except ValueError:
            raise AdaptextError(f"{model}: no final linear layer to read embeddings from") from None
        return Encoder(
            model=predictor.model, tokenizer=predictor.tokenizer, max_length=predictor.max_length, source=str(model)
        )
    tokenizer = load_tokenizer(encoder)
    # Two placeholder labels: the head is never used, only its input (the mean-pooled embedding).
    net = build_model(encoder, ["a", "b"], SINGLE_LABEL)
    prepare_encoder(net)
    net.to(default_device(device))  # type: ignore[arg-type]  # transformers types `to` for dtype-or-device
    net.eval()
    return Encoder(model=net, tokenizer=tokenizer, max_length=max_length, source=encoder)


def _is_encoder_folder(model_dir: Path) -> bool:
    if not isinstance(loader_for(model_dir, ModelInfo.read(model_dir)), TransformersLoader):
        return False
    try:
        check_classifier_folder(model_dir)
    except ValueError:
        return True
    return False


def embed_data(encoder: Encoder, data: TextData, *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """L2-normalised embeddings (n, dim) of `data`'s texts (and pairs), in file order, as float32."""
    pad_id = encoder.tokenizer.pad_token_id
    device = torch.device(encoder.model.device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    parts = []
    chunks = range(0, len(data), EMBED_CHUNK)
    bar = progress_bar(total=len(data), show=progress, desc=f"embed {Path(data.source).name}", unit="text")
    for start in chunks:
        stop = start + EMBED_CHUNK
        pairs = data.pairs[start:stop] if data.pairs is not None else None
        features = tokenize(encoder.tokenizer, data.texts[start:stop], pairs, encoder.max_length)
        parts.append(
            embed(
                encoder.model,
                Encoded(features=features, targets=None),
                pad_token_id=0 if pad_id is None else pad_id,
                batch_size=batch_size,
                autocast_dtype=dtype,
            )
        )
        bar.update(len(parts[-1]))
    bar.close()
    vectors = np.concatenate(parts)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
