"""Fine-tuning: one loop on `accelerate`, from a config to an evaluated, saved run folder."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from adaptext import adapters
from adaptext.batching import Collator, LengthGroupedBatches, encode
from adaptext.config import (
    AUTO_MAX_EPOCHS,
    AUTO_MIN_EPOCHS,
    AUTO_TARGET_STEPS,
    AdaptextError,
    Config,
    ConfigError,
    TrainConfig,
)
from adaptext.data import Splits, TextData, label_targets, load_splits
from adaptext.evaluate import EvalReport, check_metric_name, evaluate_data, is_improvement, read_train_log
from adaptext.model import (
    build_model,
    count_parameters,
    has_mean_pooling,
    load_tokenizer,
    resolve_model_name,
    resolve_pooling,
)
from adaptext.predict import METADATA_FILE, Predictor
from adaptext.run import RunPaths, check_run_dir, environment_record, prepare_run_dir, replace_dir, write_json

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
STATS_FILE = "run_stats.json"
LOG_EVERY = 20


@dataclass
class TrainResult:
    """What a finished run produced. `metrics` is the final evaluation (test split if any, else validation)."""

    run_dir: Path
    model_dir: Path
    best_step: int
    best_metric: float
    global_step: int
    stopped_early: bool
    metrics: dict[str, float]
    eval_split: str
    history: list[dict[str, Any]] = field(default_factory=list)
    # trainable / total parameters, model (or adapter) size on disk, peak memory: also in run_stats.json
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingState:
    """Counters a checkpoint must restore for the resumed run to continue exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    done: bool = False
    stopped_early: bool = False
    trainable_parameters: int = 0
    total_parameters: int = 0
    window_loss: float = 0.0  # summed loss of the steps since the last log record
    window_examples: int = 0
    train_seconds: float = 0.0  # wall time of training (this process), evaluation and checkpoints included
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_precision(requested: str) -> str:
    """The accelerate mixed-precision mode for `train.precision` on this machine."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "no"
    if requested == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    return "no" if requested == "fp32" else requested


# oneDNN, which runs torch's CPU matrix products in bf16, keeps a compiled kernel for every shape it has seen,
# 1,024 by default. Dynamic padding makes a shape of every batch length, and on the SST-2 speed benchmark those
# kernels held about 120 MB at the peak; 64 kept the same speed (docs/benchmarks.md). A value the user set wins.
KERNEL_CACHE = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def limit_kernel_cache() -> None:
    """Bound oneDNN's per-shape kernel cache for this process unless the environment already sets it."""
    os.environ.setdefault(*KERNEL_CACHE)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def class_weights(cfg: TrainConfig, splits: Splits, multi_label: bool) -> torch.Tensor | None:
    """Loss weights per class: inverse frequency for `auto`, the user's mapping, or None."""
    if cfg.class_weights == "none":
        return None
    labels = splits.labels
    if isinstance(cfg.class_weights, dict):
        unknown = sorted(set(cfg.class_weights) - set(labels))
        if unknown:
            raise ConfigError(f"train.class_weights: unknown label(s) {unknown}; the labels are {labels}")
        return torch.tensor([float(cfg.class_weights.get(name, 1.0)) for name in labels])
    targets = label_targets(splits.train, labels, multi_label)
    counts = targets.sum(axis=0) if multi_label else np.bincount(targets, minlength=len(labels))
    n = len(splits.train)
    if multi_label:  # BCE pos_weight: negatives per positive
        return torch.tensor((n - counts) / np.maximum(counts, 1), dtype=torch.float32)
    return torch.tensor(n / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)


def _loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, multi_label: bool) -> torch.Tensor:
    # (batch, num_labels) logits against class ids (batch,) or multi-hot (batch, num_labels)
    logits = logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    return F.cross_entropy(logits, targets, weight=weights)


def resolve_learning_rate(cfg: TrainConfig, model: PreTrainedModel, method: str = "none") -> float:
    """`train.learning_rate`, with `auto` chosen by the peft method, else by the model's width (measured:
    docs/benchmarks.md)."""
    if cfg.learning_rate != "auto":
        return float(cfg.learning_rate)
    if method != "none":
        return adapters.auto_learning_rate(method)
    hidden = int(getattr(model.config, "hidden_size", 768) or 768)
    if hidden <= 512:
        return 2e-4
    return 5e-5 if hidden <= 768 else 2e-5


def resolve_epochs(cfg: TrainConfig, steps_per_epoch: int) -> float:
    """`train.epochs`, with `auto` giving about AUTO_TARGET_STEPS optimizer steps within the allowed range."""
    if cfg.epochs != "auto":
        return float(cfg.epochs)
    return float(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_TARGET_STEPS / steps_per_epoch))))


def _optimizer(model: PreTrainedModel, cfg: TrainConfig, learning_rate: float) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass: on CPU the optimizer step took about a third of a
    # MiniLM training step with the foreach implementation (see docs/benchmarks.md).
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: Config,
    target: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save a model folder that plain `transformers` loads, with label names in its config.

    For an adapter run `model` is a peft model and the folder holds the adapter and the head only; `adaptext.json`
    then records the base model and the label names needed to rebuild it. `extra` adds strategy-specific keys to
    `adaptext.json`.
    """
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    labels = [id2label[i] for i in range(len(id2label))]

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        # Plain `transformers` users then truncate where adaptext trained and predicts.
        tokenizer.model_max_length = config.data.max_length
        tokenizer.save_pretrained(folder)
        write_json(
            folder / METADATA_FILE,
            {
                "format_version": 1,
                "base_model": config.model.name,
                "base_model_path": resolve_model_name(config.model.name),
                "strategy": config.strategy,
                "peft_method": config.peft.method,
                "labels": labels,
                "problem_type": model.config.problem_type,
                "max_length": config.data.max_length,
                "threshold": config.train.threshold,
                "text_column": config.data.text_column,
                "text_pair_column": config.data.text_pair_column,
                "label_column": config.data.label_column,
                "label_delimiter": config.data.label_delimiter,
            }
            | (extra or {}),
        )

    replace_dir(target, write)


def _total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(resolve_epochs(cfg, steps_per_epoch) * steps_per_epoch))


def _truncate_log(paths: RunPaths, step: int) -> None:
    """Drop log records written after the checkpoint a run resumes from; the resumed run writes them again."""
    if not paths.log.is_file():
        return
    lines = paths.log.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    paths.log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def append_log(paths: RunPaths, record: dict[str, Any]) -> None:
    with paths.log.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def eval_batch_size(cfg: TrainConfig) -> int:
    """Examples per batch when evaluating, the same during training and in the final evaluation: padding
    depends on how examples are batched, so another batch size gives slightly different logits."""
    return cfg.eval_batch_size or cfg.batch_size * 2


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


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune `config.model.name` on `config.data`, keep the best checkpoint, evaluate and report.

    `on_step(global_step)` is called after every optimizer step (used by tests to interrupt a run).

    >>> from adaptext.config import load_config
    >>> result = train(load_config("configs/quickstart.yaml"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
    0.9
    """
    check_run_dir(config, resume=resume, overwrite=overwrite)  # a refused output folder fails before any work
    if config.strategy != "finetune":
        if resume:
            raise AdaptextError(f"strategy {config.strategy} runs are short and not resumable; start without --resume")
        from adaptext import fewshot, prompting, zeroshot

        runners = {
            "fewshot": fewshot.train_fewshot,
            "zeroshot": zeroshot.build_zeroshot,
            "prompt": prompting.train_prompt,
        }
        return runners[config.strategy](config, overwrite=overwrite)
    cfg = config.train
    multi_label = config.data.multi_label
    check_metric_name(cfg.metric_for_best, multi_label)
    adapters.check_method(config.peft)
    precision = resolve_precision(cfg.precision)  # a bad precision for this machine fails before any work
    splits = load_splits(config)  # all data problems surface here, before the run folder is touched
    weights = class_weights(cfg, splits, multi_label)  # and so does a bad class-weight mapping
    tokenizer = load_tokenizer(config.model.name)
    batches = math.ceil(len(splits.train) / cfg.batch_size)  # as many as LengthGroupedBatches makes
    adapters.validate(  # and so does a bad peft option
        config.peft,
        config.model.name,
        splits.labels,
        multi_label,
        total_steps=_total_steps(cfg, batches),
        max_length=config.data.max_length,
    )
    paths = prepare_run_dir(config, resume=resume, overwrite=overwrite)
    write_json(paths.labels, splits.labels)
    started = time.perf_counter()
    state = _fit(config, paths, splits, tokenizer, precision, weights, resume=resume, on_step=on_step)
    state.train_seconds = time.perf_counter() - started
    # The training copies (model, gradients, optimizer state) are gone with _fit's frame; collect them before
    # the final evaluation loads the saved model, so the run's peak memory is that of training alone.
    gc.collect()
    return finish(config, paths, splits, state)


def _fit(
    config: Config,
    paths: RunPaths,
    splits: Splits,
    tokenizer: PreTrainedTokenizerBase,
    precision: str,
    weights: torch.Tensor | None,
    *,
    resume: bool,
    on_step: Callable[[int], None] | None,
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
    total_steps = _total_steps(cfg, len(sampler))
    method = config.peft.method
    pooling = resolve_pooling(config.model.name, config.model.pooling, method)
    model = build_model(config.model.name, splits.labels, multi_label, pooling)
    if method != "none":
        model = adapters.wrap_model(config.peft, model, total_steps=total_steps, max_length=config.data.max_length)
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
    optimizer = _optimizer(model, cfg, learning_rate)
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
        model.train()
        value = report.metrics[cfg.metric_for_best]
        state.history.append(record)
        accelerator.log({f"eval/{k}": v for k, v in report.metrics.items()}, step=state.global_step)
        if is_improvement(cfg.metric_for_best, value, state.best_metric):
            state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
            save_model(accelerator.unwrap_model(model), tokenizer, config, paths.model)
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
                    penalty = outputs.loss - _loss(logits, targets, None, multi_label)
                    loss = _loss(logits, targets, weights, multi_label) + penalty
                else:
                    logits = model(**batch).logits
                    loss = _loss(logits, targets, weights, multi_label)
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
            if on_step is not None:
                on_step(state.global_step)
            if state.done or state.global_step >= total_steps:
                break
    bar.close()
    if not state.done or saved_at != state.global_step:
        state.done = True
        save_checkpoint()
    accelerator.end_training()
    accelerator.free_memory()
    return state


def finish(config: Config, paths: RunPaths, splits: Splits, state: TrainingState) -> TrainResult:
    """Evaluate the best saved model on the test split (or validation) and write the run's report."""
    from adaptext.report import write_report  # matplotlib is loaded only once training memory is freed

    predictor = Predictor.from_dir(paths.model, batch_size=eval_batch_size(config.train))
    data = splits.test if splits.test is not None else splits.validation
    split = "test" if splits.test is not None else "validation"
    report = evaluate_data(predictor, data)
    stats = run_stats(config, paths, state, splits)
    write_json(paths.root / STATS_FILE, stats)
    write_report(
        report,
        paths.root,
        history=read_train_log(paths.log),
        title=f"{config.model.name} on {split}: {data.source}",
        run_info=stats,
    )
    logger.info(
        "%s accuracy %.4f, macro_f1 %.4f",
        split,
        report.metrics["accuracy"],
        report.metrics.get("macro_f1", float("nan")),
    )
    return TrainResult(
        run_dir=paths.root,
        model_dir=paths.model,
        best_step=state.best_step,
        best_metric=float(state.best_metric if state.best_metric is not None else float("nan")),
        global_step=state.global_step,
        stopped_early=state.stopped_early,
        metrics=report.metrics,
        eval_split=split,
        history=state.history,
        stats=stats,
    )


def run_stats(config: Config, paths: RunPaths, state: TrainingState, splits: Splits | None = None) -> dict[str, Any]:
    """What the run cost: parameters trained, size on disk of what it saved, and peak memory of the process;
    with `splits`, also how many validation/test examples are exact duplicates of training texts."""
    stats: dict[str, Any] = {
        "strategy": config.strategy,
        "method": config.peft.method,
        "trainable_parameters": state.trainable_parameters,
        "total_parameters": state.total_parameters,
        "trainable_percent": round(100 * state.trainable_parameters / max(state.total_parameters, 1), 4),
        "model_size_bytes": adapters.adapter_size_bytes(paths.model),
        # ru_maxrss is in KiB on Linux: the peak resident memory of this process so far.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_seconds": round(state.train_seconds, 2),
    }
    if torch.cuda.is_available():
        stats["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if splits is not None:
        for name, count in splits.in_train.items():
            stats[f"{name}_duplicates_of_train"] = count
    return stats
