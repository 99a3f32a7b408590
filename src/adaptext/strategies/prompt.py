"""Prompt-based fine-tuning (PET): a masked LM fills a cloze template; verbalizer words are labels."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from adaptext.core.config import Config
from adaptext.core.device import default_device, resolve_precision
from adaptext.core.errors import AdaptextError
from adaptext.core.run import append_log
from adaptext.data.batching import Collator, LengthGroupedBatches
from adaptext.data.examples import Splits
from adaptext.data.labels import label_targets
from adaptext.data.splits import load_splits
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import count_parameters
from adaptext.modeling.cloze import PromptClassifier, build_prompt_model, encode_prompts, save_prompt_model
from adaptext.modeling.hub import load_tokenizer
from adaptext.training.callbacks import CallbackList
from adaptext.training.engine import evaluate_and_log
from adaptext.training.optim import resolve_epochs, resolve_learning_rate
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy

logger = logging.getLogger(__name__)


@dataclass
class PromptPrepared(Prepared):
    tokenizer: PreTrainedTokenizerBase | None = None
    model: PromptClassifier | None = None
    features: dict[str, list[list[int]]] = field(default_factory=dict)


@STRATEGIES.register("prompt")
class Prompt(Strategy):
    """Fine-tune a masked LM through a cloze template; the verbalizer words' scores are the label logits (PET)."""

    name = "prompt"
    ignores = (
        "train.grad_accum_steps",
        "train.class_weights",
        "train.eval_steps",
        "train.early_stopping_patience",
        "train.checkpoint_steps",
    )

    def check(self, config: Config) -> None:
        super().check(config)
        if config.data.multi_label:
            raise AdaptextError("strategy prompt scores single-label tasks; set data.multi_label=false")

    def prepare(self, config: Config) -> PromptPrepared:
        precision = resolve_precision(config.train.precision)
        splits = load_splits(config)
        tokenizer = load_tokenizer(config.model.name)
        model = build_prompt_model(config, splits.labels, tokenizer)
        features = encode_prompts(
            tokenizer, config.prompt.template, splits.train.texts, splits.train.pairs, config.data.max_length
        )
        return PromptPrepared(splits=splits, precision=precision, tokenizer=tokenizer, model=model, features=features)

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, PromptPrepared) and prepared.model is not None and prepared.tokenizer is not None
        model, prepared.model = prepared.model, None
        return _fit_prompt(run, prepared.splits, prepared.tokenizer, model, prepared.features, prepared.precision)


def _fit_prompt(
    run: Run,
    splits: Splits,
    tokenizer: PreTrainedTokenizerBase,
    model: PromptClassifier,
    features: dict[str, list[list[int]]],
    precision: str,
) -> TrainingState:
    """PET fine-tuning for `train.epochs`, then the validation record; the model is saved into the run folder."""
    config, paths, cfg = run.config, run.paths, run.config.train
    callbacks = CallbackList(run.callbacks)
    torch.manual_seed(config.seed)
    device = default_device(None)
    model.to(device)
    trainable, total = count_parameters(model.mlm)
    targets = label_targets(splits.train, splits.labels, False)
    lengths = [len(ids) for ids in features["input_ids"]]
    sampler = LengthGroupedBatches(lengths, cfg.batch_size, seed=config.seed)
    steps_per_epoch = len(sampler)
    epochs = resolve_epochs(cfg, steps_per_epoch)
    total_steps = cfg.max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    learning_rate = resolve_learning_rate(cfg, model.mlm)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=learning_rate, weight_decay=cfg.weight_decay
    )
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=autocast_dtype))
        if autocast_dtype is not None
        else nullcontext
    )
    collate = Collator(tokenizer.pad_token_id or 0)
    logger.info(
        "prompt: %d examples, %d steps, learning rate %g, template %r",
        len(lengths),
        total_steps,
        learning_rate,
        config.prompt.template,
    )
    callbacks.on_train_begin(TrainingState(), model)
    model.train()
    step, epoch, window = 0, 0, []
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=None)
    tick = time.perf_counter()
    while step < total_steps:
        sampler.set_epoch(epoch)
        for indices in sampler:
            items = [{k: v[i] for k, v in features.items()} | {"index": i} for i in indices]
            batch = {k: v.to(device) for k, v in collate(items).items() if k != "index"}
            with autocast():
                logits = model(**batch).logits
            loss = F.cross_entropy(logits.float(), torch.as_tensor(targets[indices], device=device))
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window.append(loss.item())
            bar.update(1)
            callbacks.on_step_end(TrainingState(global_step=step, epoch=epoch))
            if step % 20 == 0 or step == total_steps:
                record = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "loss": float(np.mean(window)),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "samples_per_second": len(window) * cfg.batch_size / (time.perf_counter() - tick),
                }
                append_log(paths, record)
                callbacks.on_log(record)
                window, tick = [], time.perf_counter()
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    model.eval()
    predictor = Predictor(model, tokenizer, max_length=config.data.max_length)  # type: ignore[arg-type]
    report, record = evaluate_and_log(paths, predictor, splits.validation, step, step / steps_per_epoch)
    callbacks.on_evaluate(record)
    save_prompt_model(model, tokenizer, config, paths.model)
    callbacks.on_save(model, paths.model)
    state = TrainingState(
        global_step=step,
        best_step=step,
        best_metric=report.metrics[cfg.metric_for_best],
        done=True,
        trainable_parameters=trainable,
        total_parameters=total,
    )
    callbacks.on_train_end(state)
    return state
