"""Fine-tuning: one loop on `accelerate`, from a config to an evaluated, saved run folder."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from adaptext.core.config import Config
from adaptext.core.device import limit_kernel_cache
from adaptext.core.errors import AdaptextError
from adaptext.core.run import (
    RunPaths,
    append_log,
    environment_record,
    replace_dir,
    write_json,
)
from adaptext.data.batching import Collator, LengthGroupedBatches, encode
from adaptext.data.examples import Splits, TextData
from adaptext.evaluation.metrics import EvalReport, evaluate_data, is_improvement
from adaptext.inference.predictor import Predictor
from adaptext.modeling.adapters import wrap_model
from adaptext.modeling.build import build_model, count_parameters
from adaptext.modeling.pooling import has_mean_pooling, resolve_pooling
from adaptext.training.callbacks import Callback
from adaptext.training.lifecycle import save_model
from adaptext.training.objectives import cross_entropy_loss
from adaptext.training.optim import build_optimizer, eval_batch_size, planned_steps, resolve_learning_rate
from adaptext.training.state import LOG_EVERY, STATE_FILE, TrainingState

logger = logging.getLogger(__name__)


def _truncate_log(paths: RunPaths, step: int) -> None:
    """Drop log records written after the checkpoint a run resumes from; the resumed run writes them again."""
    if not paths.log.is_file():
        return
    lines = paths.log.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    paths.log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


@contextmanager
def full_precision(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` in fp32 inside this block, though accelerate prepared it for mixed precision.

    For bf16/fp16 training accelerate replaces the model's `forward` by one under autocast (keeping the original
    as `_original_forward`); evaluation must not use it: the best checkpoint is chosen on the validation metric,
    and that metric must be the one the saved model gets from `adaptext evaluate` and `Predictor`, which run fp32.
    """
    original = model.__dict__.get("_original_forward")
    if original is None:
        yield
        return
    patched = model.__dict__["forward"]
    model.__dict__["forward"] = original
    try:
        yield
    finally:
        model.__dict__["forward"] = patched


def evaluate_and_log(
    paths: RunPaths, predictor: Predictor, data: TextData, step: int, epoch: float
) -> tuple[EvalReport, dict[str, Any]]:
    """Evaluate on `data` and append the `eval_*` record of this step to the run's train log."""
    report = evaluate_data(predictor, data)
    record = {"step": step, "epoch": epoch} | {f"eval_{k}": v for k, v in report.metrics.items()}
    append_log(paths, record)
    return report, record


def fit_classifier(
    config: Config,
    paths: RunPaths,
    splits: Splits,
    tokenizer: PreTrainedTokenizerBase,
    precision: str,
    weights: torch.Tensor | None,
    *,
    resume: bool,
    callbacks: Callback,
) -> TrainingState:
    """The training loop: epochs x batches, evaluation, best model, checkpoints; returns the final state.

    `precision` is accelerate's mixed-precision mode; `weights` the per-class loss weights, if any.
    """
    cfg = config.train
    multi_label = config.data.multi_label
    set_seed(config.seed)
    limit_kernel_cache()
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with="tensorboard",
        project_dir=str(paths.root),
    )
    if accelerator.num_processes > 1:
        raise AdaptextError(
            "multi-process training is not supported yet: run `adaptext train` as one process (one GPU or CPU)"
        )
    accelerator.init_trackers("tensorboard")
    write_json(paths.env, environment_record(str(accelerator.device), precision))

    train_enc = encode(tokenizer, splits.train, splits.labels, config.data.max_length, multi_label)
    sampler = LengthGroupedBatches(train_enc.lengths, cfg.batch_size, seed=config.seed)
    total_steps = planned_steps(cfg, len(sampler))
    method = config.peft.method
    pooling = resolve_pooling(config.model.name, config.model.pooling, method)
    model = build_model(config.model.name, splits.labels, multi_label, pooling)
    if method != "none":
        model = wrap_model(config.peft, model, total_steps=total_steps, max_length=config.data.max_length)
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
    loader = DataLoader(
        train_enc,
        # Its own generator: drawing worker seeds from the global RNG would shift dropout masks after a resume.
        generator=torch.Generator().manual_seed(config.seed),
        batch_sampler=sampler,
        collate_fn=Collator(tokenizer.pad_token_id or 0, multi_label),
        num_workers=cfg.num_workers,
    )
    learning_rate = resolve_learning_rate(cfg, model, method)
    optimizer = build_optimizer(model, cfg, learning_rate)
    logger.info(
        "training: %d optimizer steps (%.1f epochs of %d batches), learning rate %g, precision %s",
        total_steps,
        total_steps * cfg.grad_accum_steps / len(sampler),
        len(sampler),
        learning_rate,
        precision,
    )
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if weights is not None:
        weights = weights.to(accelerator.device)

    state = TrainingState(trainable_parameters=trainable, total_parameters=total)
    if resume:
        accelerator.load_state(str(paths.checkpoint))
        state = TrainingState(**json.loads((paths.checkpoint / STATE_FILE).read_text(encoding="utf-8")))
        _truncate_log(paths, state.global_step)
        logger.info("resumed at step %d (epoch %d, batch %d)", state.global_step, state.epoch, state.batch_in_epoch)

    # Evaluation runs in fp32 whatever the training precision (see `full_precision`).
    eval_predictor = Predictor(
        accelerator.unwrap_model(model),
        tokenizer,
        max_length=config.data.max_length,
        threshold=cfg.threshold,
        batch_size=eval_batch_size(cfg),
    )

    saved_at = state.global_step if resume else -1  # the step of the last checkpoint written

    def save_checkpoint() -> None:
        nonlocal saved_at

        def write(folder: Path) -> None:
            accelerator.save_state(str(folder))
            write_json(folder / STATE_FILE, state.__dict__)

        replace_dir(paths.checkpoint, write)
        saved_at = state.global_step

    def evaluate_now() -> None:
        epoch = state.epoch + state.batch_in_epoch / len(sampler)
        with full_precision(eval_predictor.model):
            report, record = evaluate_and_log(paths, eval_predictor, splits.validation, state.global_step, epoch)
            callbacks.on_evaluate(record)
        model.train()
        value = report.metrics[cfg.metric_for_best]
        state.history.append(record)
        accelerator.log({f"eval/{k}": v for k, v in report.metrics.items()}, step=state.global_step)
        if is_improvement(cfg.metric_for_best, value, state.best_metric):
            state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
            save_model(accelerator.unwrap_model(model), tokenizer, config, paths.model)
            callbacks.on_save(accelerator.unwrap_model(model), paths.model)
        else:
            state.bad_evals += 1
        logger.info(
            "step %d: validation %s=%.4f (best %.4f at step %d)",
            state.global_step,
            cfg.metric_for_best,
            value,
            state.best_metric,
            state.best_step,
        )
        if cfg.early_stopping_patience is not None and state.bad_evals >= cfg.early_stopping_patience:
            state.stopped_early = state.done = True
            logger.info("early stopping: no improvement in %d evaluations", state.bad_evals)

    callbacks.on_train_begin(state, accelerator.unwrap_model(model))
    model.train()
    bar = tqdm(total=total_steps, initial=state.global_step, desc="train", unit="step", disable=None)
    window_start = time.perf_counter()
    while not state.done and state.global_step < total_steps:
        # The prepared loader re-seeds the sampler with its own epoch counter on every pass.
        loader.set_epoch(state.epoch)
        epoch_loader = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in epoch_loader:
            targets = batch.pop("labels")
            batch.pop("index")
            with accelerator.accumulate(model):
                if method == "adalora":
                    # AdaLoRA adds its orthogonality penalty to the loss the model computes itself; keep that
                    # penalty (the model's loss minus its plain cross-entropy) on top of our (weighted) loss.
                    outputs = model(**batch, labels=targets)
                    logits = outputs.logits
                    penalty = outputs.loss - cross_entropy_loss(logits, targets, None, multi_label)
                    loss = cross_entropy_loss(logits, targets, weights, multi_label) + penalty
                else:
                    logits = model(**batch).logits
                    loss = cross_entropy_loss(logits, targets, weights, multi_label)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                if method == "adalora" and accelerator.sync_gradients:
                    # Rank budgeting reads the gradients of this step, so it runs before they are cleared.
                    accelerator.unwrap_model(model).base_model.update_and_allocate(state.global_step)
                optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            state.window_loss += loss.item() * len(targets)
            state.window_examples += len(targets)
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            bar.update(1)
            if state.global_step % LOG_EVERY == 0 or state.global_step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": state.global_step,
                    "epoch": state.epoch + state.batch_in_epoch / len(sampler),
                    "loss": state.window_loss / state.window_examples,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "samples_per_second": state.window_examples / max(elapsed, 1e-9),
                }
                append_log(paths, record)
                callbacks.on_log(record)
                accelerator.log(
                    {"train/loss": record["loss"], "train/learning_rate": record["learning_rate"]},
                    step=state.global_step,
                )
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                state.window_loss, state.window_examples, window_start = 0.0, 0, time.perf_counter()
            end_of_epoch = state.batch_in_epoch >= len(sampler)
            if end_of_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if (
                end_of_epoch
                or state.global_step == total_steps
                or (cfg.eval_steps is not None and state.global_step % cfg.eval_steps == 0)
            ):
                evaluate_now()
                if state.global_step >= total_steps:
                    state.done = True
                save_checkpoint()
            elif state.global_step % cfg.checkpoint_steps == 0:
                save_checkpoint()
            callbacks.on_step_end(state)
            if state.done or state.global_step >= total_steps:
                break
    bar.close()
    if not state.done or saved_at != state.global_step:
        state.done = True
        save_checkpoint()
    callbacks.on_train_end(state)
    accelerator.end_training()
    accelerator.free_memory()
    return state
