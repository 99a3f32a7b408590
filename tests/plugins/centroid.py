"""A nearest-centroid strategy, registered from outside adaptext (docs/architecture.md shows this file).

The encoder stays frozen. Each label's centroid c_k is the mean embedding of its training texts, and the head
becomes logit_k = c_k . x - |c_k|^2 / 2, so the most probable label is the nearest centroid. The saved folder is a
plain `transformers` sequence-classification model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from adaptext.core.config import Config
from adaptext.core.errors import ConfigError
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.labels import label_targets
from adaptext.data.splits import load_splits
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import embed, encode_texts, final_linear
from adaptext.modeling.hub import load_tokenizer
from adaptext.training.callbacks import CallbackList
from adaptext.training.lifecycle import save_model
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy


@dataclass
class CentroidPrepared(Prepared):
    tokenizer: PreTrainedTokenizerBase | None = None


@STRATEGIES.register("centroid")
class Centroid(Strategy):
    """Class-mean embeddings of a frozen encoder as the classification head."""

    name = "centroid"
    ignores = ("train.class_weights", "train.eval_steps", "train.early_stopping_patience")

    def check(self, config: Config) -> None:
        super().check(config)  # refuses the `ignores` keys set away from their defaults
        if config.data.multi_label:
            raise ConfigError("strategy centroid scores single-label tasks; set data.multi_label=false")

    def prepare(self, config: Config) -> CentroidPrepared:
        splits = load_splits(config)  # a data problem fails here, before the run folder exists
        return CentroidPrepared(splits=splits, tokenizer=load_tokenizer(config.model.name))

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, CentroidPrepared) and prepared.tokenizer is not None
        config, splits, callbacks = run.config, prepared.splits, CallbackList(run.callbacks)
        model = build_model(config.model.name, splits.labels, SINGLE_LABEL)
        state = TrainingState(total_parameters=sum(p.numel() for p in model.parameters()))
        callbacks.on_train_begin(state, model)
        encoded = encode_texts(prepared.tokenizer, splits.train, config.data.max_length)
        x = torch.from_numpy(embed(model, encoded, pad_token_id=prepared.tokenizer.pad_token_id or 0))  # (n, hidden)
        y = torch.from_numpy(label_targets(splits.train, splits.labels, SINGLE_LABEL))  # (n,)
        centroids = torch.stack([x[y == k].mean(dim=0) for k in range(len(splits.labels))])  # (labels, hidden)
        head = final_linear(model)
        with torch.no_grad():
            head.weight.copy_(centroids)
            head.bias.copy_(-0.5 * centroids.pow(2).sum(dim=-1))
        save_model(model, prepared.tokenizer, config, run.paths.model)
        callbacks.on_save(model, run.paths.model)
        state.done = True
        callbacks.on_train_end(state)
        return state
