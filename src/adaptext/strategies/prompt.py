"""Prompt-based fine-tuning (PET): a masked LM fills a cloze template; verbalizer words are labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptext.core.config import ROBUST_KEYS, Config
from adaptext.core.device import resolve_precision
from adaptext.core.errors import AdaptextError
from adaptext.core.task import task_of
from adaptext.data.batching import Collator, Encoded, LengthGroupedBatches
from adaptext.data.labels import label_targets
from adaptext.data.splits import load_splits
from adaptext.modeling.cloze import PromptClassifier, build_prompt_model, encode_prompts, save_prompt_model
from adaptext.modeling.hub import load_tokenizer
from adaptext.training.engine import TrainingJob, run_training, validation
from adaptext.training.objectives import OBJECTIVES, class_weights
from adaptext.training.optim import planned_steps, resolve_learning_rate
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy, refuse_ignored

logger = logging.getLogger(__name__)


@dataclass
class PromptPrepared(Prepared):
    tokenizer: PreTrainedTokenizerBase | None = None
    model: PromptClassifier | None = None
    features: dict[str, list[list[int]]] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # per-class loss weights, if any


@STRATEGIES.register("prompt")
class Prompt(Strategy):
    """Fine-tune a masked LM through a cloze template; the verbalizer words' scores are the label logits (PET)."""

    name = "prompt"
    resumable = True
    # PET trains on the engine like fine-tuning: every other `train.*` key applies. Its masked LM's output layer
    # shares the word-embedding matrix, so freezing that matrix would freeze the verbalizer's scores as well.
    # its masked LM is built elsewhere, and its output layer is tied to the word embeddings
    ignores = ("train.freeze_embeddings", "train.embedding_rows", "train.attention_dropout")

    def check(self, config: Config) -> None:
        super().check(config)
        refuse_ignored(config, ROBUST_KEYS, self.name)  # robust training is fine-tuning's (its cross-entropy)
        if task_of(config).multi_label:
            raise AdaptextError("strategy prompt scores single-label tasks; set data.multi_label=false")

    def prepare(self, config: Config) -> PromptPrepared:
        precision = resolve_precision(config.train.precision)
        splits = load_splits(config)
        weights = class_weights(config.train, splits, task_of(config))
        tokenizer = load_tokenizer(config.model.name)
        model = build_prompt_model(config, splits.labels, tokenizer)
        features = encode_prompts(
            tokenizer, config.prompt.template, splits.train.texts, splits.train.pairs, config.data.max_length
        )
        return PromptPrepared(
            splits=splits, precision=precision, tokenizer=tokenizer, model=model, features=features, weights=weights
        )

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, PromptPrepared) and prepared.model is not None and prepared.tokenizer is not None
        model, prepared.model = prepared.model, None
        return run_training(_job(run.config, prepared, model, prepared.tokenizer), run)


def _job(
    config: Config, prepared: PromptPrepared, model: PromptClassifier, tokenizer: PreTrainedTokenizerBase
) -> TrainingJob:
    """PET as an engine job: the filled templates, the verbalizer's cross-entropy, validation and saving."""
    cfg, splits, task = config.train, prepared.splits, task_of(config)
    targets = label_targets(splits.train, splits.labels, task).tolist()
    dataset = Encoded(features=prepared.features, targets=targets)
    batches = LengthGroupedBatches(dataset.lengths, cfg.batch_size, seed=config.seed)
    steps = planned_steps(cfg, len(batches))
    learning_rate = resolve_learning_rate(cfg, model.mlm)
    logger.info(
        "prompt: %d examples, %d steps, learning rate %g, template %r",
        len(dataset),
        steps,
        learning_rate,
        config.prompt.template,
    )

    def save(trained: nn.Module, target: Path) -> None:
        save_prompt_model(trained, tokenizer, config, target)  # type: ignore[arg-type]

    return TrainingJob(
        model=model,
        dataset=dataset,
        batches=batches,
        collate=Collator(tokenizer.pad_token_id or 0, task),
        objective=OBJECTIVES.get("pet")(task, prepared.weights),
        steps=steps,
        learning_rate=learning_rate,
        warmup_ratio=cfg.warmup_ratio,
        precision=prepared.precision,
        evaluate=validation(tokenizer, config, splits.validation),
        save=save,
    )
