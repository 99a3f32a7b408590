"""Fine-tuning (the default strategy): the whole model, or a peft adapter, on labelled data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from adaptext.core.config import Config
from adaptext.core.device import resolve_precision
from adaptext.data.splits import load_splits
from adaptext.evaluation.metrics import check_metric_name
from adaptext.modeling.adapters import check_method, validate
from adaptext.modeling.hub import load_tokenizer
from adaptext.training.callbacks import CallbackList
from adaptext.training.engine import fit_classifier
from adaptext.training.objectives import class_weights
from adaptext.training.optim import planned_steps
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy


@dataclass
class FinetunePrepared(Prepared):
    tokenizer: PreTrainedTokenizerBase | None = None
    weights: torch.Tensor | None = None  # per-class loss weights, if any


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    """Train the model with a classification head (or a peft adapter and the head) on the labelled data."""

    name = "finetune"
    resumable = True

    def check(self, config: Config) -> None:
        super().check(config)
        check_metric_name(config.train.metric_for_best, config.data.multi_label)
        check_method(config.peft)

    def prepare(self, config: Config) -> FinetunePrepared:
        cfg = config.train
        precision = resolve_precision(cfg.precision)  # a bad precision for this machine fails before any work
        splits = load_splits(config)  # all data problems surface here, before the run folder is touched
        weights = class_weights(cfg, splits, config.data.multi_label)  # and so does a bad class-weight mapping
        tokenizer = load_tokenizer(config.model.name)
        batches = math.ceil(len(splits.train) / cfg.batch_size)  # as many as LengthGroupedBatches makes
        validate(  # and so does a bad peft option
            config.peft,
            config.model.name,
            splits.labels,
            config.data.multi_label,
            total_steps=planned_steps(cfg, batches),
            max_length=config.data.max_length,
        )
        return FinetunePrepared(splits=splits, precision=precision, tokenizer=tokenizer, weights=weights)

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, FinetunePrepared) and prepared.tokenizer is not None
        return fit_classifier(
            run.config,
            run.paths,
            prepared.splits,
            prepared.tokenizer,
            prepared.precision,
            prepared.weights,
            resume=run.resume,
            callbacks=CallbackList(run.callbacks),
        )
