"""Fine-tuning (the default strategy): the whole model, or a peft adapter, on labelled data."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptext.core.config import Config
from adaptext.core.device import resolve_precision
from adaptext.core.errors import ConfigError
from adaptext.core.task import task_of
from adaptext.data.batching import Collator, LengthGroupedBatches, encode
from adaptext.data.splits import load_splits
from adaptext.evaluation.metrics import check_metric_name
from adaptext.modeling.adapters import check_method, validate, wrap_model
from adaptext.modeling.build import build_model, count_parameters
from adaptext.modeling.hub import load_tokenizer
from adaptext.modeling.pooling import has_mean_pooling, resolve_pooling
from adaptext.training.augment import augmented, build_augmenter, check_augment
from adaptext.training.engine import BatchSampler, TrainingJob, run_training, validation
from adaptext.training.lifecycle import save_model
from adaptext.training.objectives import OBJECTIVES, class_weights
from adaptext.training.optim import planned_steps, resolve_learning_rate
from adaptext.training.robust import robust_objective
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy

logger = logging.getLogger(__name__)


@dataclass
class FinetunePrepared(Prepared):
    tokenizer: PreTrainedTokenizerBase | None = None
    weights: torch.Tensor | None = None  # per-class loss weights, if any


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    """Train the model with a classification head (or a peft adapter and the head) on the labelled data."""

    name = "finetune"
    resumable = True
    regression = True
    self_trainable = True
    objective: ClassVar[str] = "cross_entropy"  # a name in `OBJECTIVES`

    def check(self, config: Config) -> None:
        super().check(config)
        check_metric_name(config.train.metric_for_best, task_of(config))
        if task_of(config).regression:
            check_regression_options(config)
        check_method(config.peft)
        check_augment(config.robust.augment)

    def prepare(self, config: Config) -> FinetunePrepared:
        cfg = config.train
        task = task_of(config)
        precision = resolve_precision(cfg.precision)  # a bad precision for this machine fails before any work
        splits = load_splits(config)  # all data problems surface here, before the run folder is touched
        weights = class_weights(cfg, splits, task)  # and so does a bad class-weight mapping
        tokenizer = load_tokenizer(config.model.name)
        batches = math.ceil(len(splits.train) / cfg.batch_size)  # as many as LengthGroupedBatches makes
        validate(  # and so does a bad peft option
            config.peft,
            config.model.name,
            splits.labels,
            task,
            total_steps=planned_steps(cfg, batches),
            max_length=config.data.max_length,
        )
        return FinetunePrepared(splits=splits, precision=precision, tokenizer=tokenizer, weights=weights)

    def objective_name(self, config: Config) -> str:
        """The objective this run trains with: AdaLoRA needs its own (a penalty term and rank budgeting)."""
        return "adalora" if config.peft.method == "adalora" else self.objective

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, FinetunePrepared) and prepared.tokenizer is not None
        config, cfg, tokenizer = run.config, run.config.train, prepared.tokenizer
        task, splits = task_of(config), prepared.splits
        train_set = encode(tokenizer, splits.train, splits.labels, config.data.max_length, task)
        batches: BatchSampler = LengthGroupedBatches(train_set.lengths, cfg.batch_size, seed=config.seed)
        steps = planned_steps(cfg, len(batches))
        model = classifier(config, splits.labels, steps)
        dataset: Dataset[Any] = train_set
        augment = config.robust.augment
        if augment.method != "none":  # on the fly, training data only; the batches and run length stay the same
            augmenter = build_augmenter(augment, model, tokenizer, splits.train, train_set, config.data.max_length)
            dataset, batches = augmented(train_set, batches, augmenter, augment.probability, config.seed)
        learning_rate = resolve_learning_rate(cfg, model, config.peft.method)
        logger.info(
            "training: %d optimizer steps (%.1f epochs of %d batches), learning rate %g, precision %s",
            steps,
            steps * cfg.grad_accum_steps / len(batches),
            len(batches),
            learning_rate,
            prepared.precision,
        )

        def save(trained: nn.Module, target: Path) -> None:
            save_model(trained, tokenizer, config, target)  # type: ignore[arg-type]

        job = TrainingJob(
            model=model,
            dataset=dataset,
            batches=batches,
            collate=Collator(tokenizer.pad_token_id or 0, task),
            objective=robust_objective(
                OBJECTIVES.get(self.objective_name(config))(task, prepared.weights), config.robust
            ),
            steps=steps,
            learning_rate=learning_rate,
            warmup_ratio=cfg.warmup_ratio,
            precision=prepared.precision,
            evaluate=validation(tokenizer, config, splits.validation),
            save=save,
            # on-the-fly augmentation can bring any token; without it the batches hold the encoded texts' tokens
            token_ids=train_set.token_ids(tokenizer.pad_token_id or 0) if augment.method == "none" else None,
        )
        return run_training(job, run)


def check_regression_options(config: Config) -> None:
    """Refuse the options that only mean something for labels when the run predicts a value (`data.problem`)."""
    robust = config.robust
    for key, value in (("robust.rdrop", robust.rdrop), ("robust.label_smoothing", robust.label_smoothing)):
        if value:
            raise ConfigError(f"{key} works on label probabilities; data.problem=regression predicts a value")
    if config.train.class_weights != "none":
        raise ConfigError("train.class_weights weighs classes; data.problem=regression has none")


def classifier(config: Config, labels: list[str], steps: int) -> PreTrainedModel:
    """The model to fine-tune: the pretrained encoder with a new head, wrapped in the peft method if any."""
    method = config.peft.method
    pooling = resolve_pooling(config.model.name, config.model.pooling, method)
    model = build_model(config.model.name, labels, task_of(config), pooling, config.train.attention_dropout)
    if method != "none":
        model = wrap_model(config.peft, model, total_steps=steps, max_length=config.data.max_length)
    elif config.train.freeze_embeddings:
        freeze_word_embeddings(model)
    trainable, total = count_parameters(model)
    logger.info(
        "model: %s%s, head on the %s, %d of %d parameters trainable (%.2f%%)",
        config.model.name,
        f" with {method}" if method != "none" else "",
        "mean of the token states" if has_mean_pooling(model) else "[CLS] state",
        trainable,
        total,
        100 * trainable / total,
    )
    return model


def freeze_word_embeddings(model: PreTrainedModel) -> None:
    """Keep `model`'s word-embedding matrix as it is (`train.freeze_embeddings`).

    Only the rows of a batch's tokens would get a gradient, yet the gradient and AdamW's two moments are full
    matrices: for MiniLM that is 11.7M of its 22.7M parameters, about 140 MB of training memory.
    """
    embeddings = model.get_input_embeddings()
    if embeddings is None or not hasattr(embeddings, "weight"):
        raise ConfigError(f"train.freeze_embeddings: {type(model).__name__} has no word-embedding matrix to freeze")
    embeddings.weight.requires_grad_(False)
