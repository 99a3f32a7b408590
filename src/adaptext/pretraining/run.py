"""`adaptext pretrain`: continued pre-training of a model on unlabelled text, as a run of the one engine.

The texts of `data.train` (a table's `data.text_column`, or a `.txt` file's lines) train the model by
`pretrain.method`; `data.validation`'s texts, or a held-out share of the training texts, give the loss on unseen
text before training and at every evaluation, which picks the model saved. The run folder is like any run's
(config, checkpoint, exact `--resume`, train log, progress bar) with `model/` holding the adapted encoder, which
every strategy takes as `model.name` (the run folder or its `model/`), `pretrain.json` and `loss.png`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from torch import nn

from adaptext.core.config import Config, TrainConfig
from adaptext.core.device import check_launch, default_device, process_state, resolve_precision
from adaptext.core.errors import ConfigError, DataError
from adaptext.core.run import (
    RunPaths,
    check_run_dir,
    environment_record,
    prepare_run_dir,
    read_train_log,
    replace_dir,
    write_json,
)
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.batching import Encoded, LengthGroupedBatches, tokenize
from adaptext.data.io import read_texts
from adaptext.evaluation.metrics import EvalReport
from adaptext.modeling.hub import load_tokenizer
from adaptext.pretraining.methods import PRETRAIN_METHODS, MethodObjective, PretrainMethod, has_mlm_head
from adaptext.training.callbacks import Callback, CallbackList
from adaptext.training.engine import TrainingJob, run_training
from adaptext.training.lifecycle import run_callbacks
from adaptext.training.optim import eval_batch_size, planned_steps
from adaptext.training.state import TrainingState
from adaptext.training.strategy import Run

logger = logging.getLogger(__name__)

PRETRAIN_JSON = "pretrain.json"
LOSS_PNG = "loss.png"
MAX_HELD_OUT = 1000
# The sentence-encoder method `auto` takes for a model without an MLM head: measured in bench/label_efficiency.py.
AUTO_ENCODER_METHOD = "simcse"
# `train.learning_rate: auto` for each method: the values of the methods' papers for BERT-sized encoders.
AUTO_LEARNING_RATE = {"mlm": 5e-5, "simcse": 3e-5, "tsdae": 3e-5}


@dataclass
class PretrainResult:
    """What a pretraining run did: its folder, the method, and the held-out loss before and after."""

    run_dir: Path
    model_dir: Path
    method: str
    texts: int
    held_out: int
    loss_before: float
    loss_after: float
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "texts": self.texts,
            "held_out": self.held_out,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
        }


def resolve_method(config: Config) -> str:
    """`pretrain.method`, with `auto` taking `mlm` for a model saved with an MLM head, else the measured best."""
    method = config.pretrain.method
    if method != "auto":
        return method
    return "mlm" if has_mlm_head(config.model.name) else AUTO_ENCODER_METHOD


def split_texts(config: Config) -> tuple[list[str], list[str]]:
    """The training texts and the held-out texts (`data.validation`'s, else a seeded share of the training texts)."""
    data = config.data
    if data.train is None:
        raise ConfigError("adaptext pretrain needs data.train: a file of unlabelled texts (table or .txt)")
    texts = read_texts(data.train, data.text_column)
    if data.validation is not None:
        return texts, read_texts(data.validation, data.text_column)
    held = min(MAX_HELD_OUT, max(1, round(config.pretrain.held_out * len(texts))))
    if len(texts) - held < 2:
        raise DataError(f"{data.train}: {len(texts)} texts; pretraining needs at least {held + 2}")
    order = np.random.default_rng(config.seed).permutation(len(texts))
    held_set = set(order[:held].tolist())
    return [t for i, t in enumerate(texts) if i not in held_set], [texts[i] for i in sorted(held_set)]


def pretrain_steps(cfg: TrainConfig, batches: int) -> int:
    """Optimizer steps of a pretraining run: `train.max_steps` or `train.epochs`; `auto` is one pass over the texts
    (the methods' papers train one epoch on 10,000 to 100,000 sentences)."""
    if cfg.epochs == "auto" and cfg.max_steps is None:
        return max(1, math.ceil(batches / cfg.grad_accum_steps))
    return planned_steps(cfg, batches)


def held_out_loss(
    method: PretrainMethod, data: Encoded, batch_size: int, seed: int
) -> Callable[[nn.Module], EvalReport]:
    """The engine's `evaluate`: the method's mean loss on the held-out texts, with the same masks, deletions,
    dropout and batches at every evaluation (its own seeded generators; the training's random state is untouched)."""
    batches = [list(range(i, min(i + batch_size, len(data)))) for i in range(0, len(data), batch_size)]

    def evaluate(model: nn.Module) -> EvalReport:
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            model.train(method.dropout_noise)
            for indices in batches:
                batch = method.collate([data[i] for i in indices])
                batch.pop("index")
                batch = {k: v.to(device) for k, v in batch.items()}
                total += float(method.loss(model, batch, generator)) * len(indices)
                count += len(indices)
        model.eval()
        loss = total / max(count, 1)
        return EvalReport(metrics={"loss": loss}, per_class=[], labels=[], task=SINGLE_LABEL, n_examples=count)

    return evaluate


def pretrain(
    config: Config, *, resume: bool = False, overwrite: bool = False, callbacks: Sequence[Callback] = ()
) -> PretrainResult:
    """Continue pre-training `config.model.name` on `config.data.train`'s texts into `config.output_dir`."""
    check_launch()
    paths = check_run_dir(config, resume=resume, overwrite=overwrite)
    cfg = config.train
    if cfg.metric_for_best not in ("macro_f1", "loss"):
        raise ConfigError(
            "adaptext pretrain chooses its model by the held-out loss; "
            f"remove train.metric_for_best={cfg.metric_for_best}"
        )
    config = config.model_copy(deep=True)
    config.train.metric_for_best = "loss"
    precision = resolve_precision(cfg.precision)
    name = resolve_method(config)
    texts, held = split_texts(config)
    tokenizer = load_tokenizer(config.model.name)
    method = PRETRAIN_METHODS.get(name)(config.model.name, tokenizer, config.pretrain)
    train_set = Encoded(tokenize(tokenizer, texts, None, config.data.max_length))
    held_set = Encoded(tokenize(tokenizer, held, None, config.data.max_length))
    process = process_state()
    if process.is_main_process:
        paths = prepare_run_dir(config, resume=resume, overwrite=overwrite)
        write_json(paths.env, environment_record(str(default_device(None)), precision, process.num_processes))
    process.wait_for_everyone()
    hooks = CallbackList([*(run_callbacks(config, paths) if process.is_main_process else []), *callbacks])
    started = time.perf_counter()
    set_seed(config.seed)
    model = method.build()
    batches = LengthGroupedBatches(train_set.lengths, cfg.batch_size, seed=config.seed)
    steps = pretrain_steps(cfg, len(batches))
    learning_rate = AUTO_LEARNING_RATE[name] if cfg.learning_rate == "auto" else float(cfg.learning_rate)
    evaluate = held_out_loss(method, held_set, eval_batch_size(cfg), config.seed)
    before = evaluate(model).metrics["loss"]
    logger.info(
        "pretraining %s by %s on %d texts (%d held out): %d steps, learning rate %g; held-out loss %.4f",
        config.model.name,
        name,
        len(texts),
        len(held),
        steps,
        learning_rate,
        before,
    )
    job = TrainingJob(
        model=model,
        dataset=train_set,
        batches=batches,
        collate=method.collate,
        objective=MethodObjective(method),
        steps=steps,
        learning_rate=learning_rate,
        warmup_ratio=cfg.warmup_ratio,
        precision=precision,
        evaluate=evaluate,
        save=lambda trained, target: replace_dir(target, lambda folder: method.save(trained, folder)),
    )
    run = Run(config, paths, resume=resume, callbacks=hooks.callbacks)
    try:
        state = run_training(job, run)
        result = summarise(config, paths, name, len(texts), len(held), before, state, time.perf_counter() - started)
    except BaseException as error:
        hooks.on_run_failed(error)
        raise
    finally:
        process.destroy_process_group()
    return result


def summarise(
    config: Config,
    paths: RunPaths,
    method: str,
    texts: int,
    held: int,
    before: float,
    state: TrainingState,
    seconds: float,
) -> PretrainResult:
    """Write `pretrain.json` and the loss curve, and return the run's result."""
    history = read_train_log(paths.log)
    result = PretrainResult(
        run_dir=paths.root,
        model_dir=paths.model,
        method=method,
        texts=texts,
        held_out=held,
        loss_before=before,
        loss_after=float(state.best_metric if state.best_metric is not None else math.nan),
        steps=state.global_step,
        seconds=seconds,
        history=history,
    )
    if process_state().is_main_process:
        write_json(paths.root / PRETRAIN_JSON, result.to_dict() | {"model": config.model.name})
        plot_loss(history, before, paths.root / LOSS_PNG, title=f"{config.model.name}: {method}")
    return result


def plot_loss(history: list[dict[str, Any]], before: float, target: Path, title: str) -> None:
    """The training loss per logged step and the held-out loss at each evaluation (step 0: before training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    held = [(0, before)] + [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#4c72b0", alpha=0.8)
    ax.plot(*zip(*held, strict=True), label="held-out loss", color="#dd8452", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
