"""The training engine: one loop on `accelerate` for every strategy that trains.

A strategy describes its job (`TrainingJob`: the model, the data and how it is batched, the objective, how to save
and how to evaluate the model) and `run_training` does the rest the same way for all of them:

    seed -> optimizer and schedule -> accelerate -> (resume) -> epochs x batches:
        forward and loss (the objective), backward, clip, step (every `train.grad_accum_steps` batches)
        -> log every LOG_EVERY steps -> evaluate every `train.eval_steps` steps, at epoch ends and when a callback asks
        -> best model saved, early stopping -> checkpoint
    -> final checkpoint -> (SWA: the averaged weights evaluated and saved) -> the final `TrainingState`

A job that knows every token its batches can hold trains only those rows of the word embeddings
(`train.embedding_rows: used`, `modeling/used_rows.py`): the same training, without a gradient and optimizer
moments for rows no batch uses.

Checkpoints hold the model, optimizer, schedule, random states and the loop's counters, and the batch order is a
pure function of (seed, epoch), so a resumed run continues exactly where the interrupted one was.

With `train.swa_start`, the trainable weights are also averaged over the last part of the run (`training/swa.py`);
the average is saved with each checkpoint, and at the end it replaces the model: it is evaluated and saved as the
run's model in place of the best checkpoint.

Several processes (`accelerate launch`, `torchrun`) train data-parallel: each takes its slice of every batch
(`ShardedBatches`: `train.batch_size` stays the global batch), gradients are averaged as if the whole batch were in
one process, every process evaluates and all follow the main process's decision, and logs, checkpoints and the model
folder are written by the main process only (docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.data_loader import DataLoaderShard
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list
from torch import nn
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase, get_scheduler

from adaptext.core.config import Config
from adaptext.core.device import limit_kernel_cache, on_cpu_only
from adaptext.core.errors import AdaptextError
from adaptext.core.run import RunPaths, append_log, replace_dir, staging_dir, write_json
from adaptext.data.batching import ShardedBatches
from adaptext.data.examples import TextData
from adaptext.evaluation.metrics import EvalReport, evaluate_data, is_improvement
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import count_parameters
from adaptext.modeling.used_rows import compact_moments, restore_embedding, train_used_rows
from adaptext.training.callbacks import Callback, CallbackList
from adaptext.training.objectives import Objective
from adaptext.training.optim import build_optimizer, eval_batch_size
from adaptext.training.state import LOG_EVERY, STATE_FILE, TrainingState
from adaptext.training.strategy import Run
from adaptext.training.swa import WeightAverage

logger = logging.getLogger(__name__)

# In a checkpoint of several processes: each process's loss since the last log record.
WINDOW_FILE = "window_{rank}.json"


class BatchSampler(Protocol):
    """Batches of example indices, in an order that is a pure function of (seed, epoch)."""

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class TrainingJob:
    """What a strategy trains and how; the engine takes everything else from `config.train`.

    Attributes:
        model: The model to train (moved to the device and prepared by accelerate).
        dataset: Encoded examples; `collate` turns a list of them into a batch with `labels`.
        batches: Which examples go together; one pass over it is an epoch.
        collate: Pads a list of examples into a batch of tensors.
        objective: The loss of a batch, and what happens after each optimizer step.
        steps: Optimizer steps of the whole run.
        learning_rate: Peak learning rate of the linear schedule.
        warmup_ratio: Share of `steps` spent warming up.
        precision: accelerate's mixed-precision mode (`no`, `bf16`, `fp16`).
        evaluate: Scores the model on validation data (called in fp32 with the unwrapped model); None when the
            job has no validation of its own, and then no best model is chosen or saved.
        save: Writes the model folder (the unwrapped model, the target folder); called for each new best model.
        finish: A last stage after the final step that completes the model and scores it on validation data (in
            fp32, like `evaluate`); the model it leaves is the one saved. Few-shot fits its head here.
        epochs_per_pass: Passes over the data that one pass of `batches` makes (for the `epoch` of log records).
        token_ids: Every token id the training batches can hold, when known before training: with
            `train.embedding_rows: used` only those rows of the word embeddings train (`modeling/used_rows.py`).
    """

    model: nn.Module
    dataset: Dataset[Any]
    batches: BatchSampler
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    objective: Objective
    steps: int
    learning_rate: float
    warmup_ratio: float
    precision: str = "no"
    evaluate: Callable[[nn.Module], EvalReport] | None = None
    save: Callable[[nn.Module, Path], None] | None = None
    finish: Callable[[nn.Module], EvalReport] | None = None
    epochs_per_pass: float = 1.0
    token_ids: torch.Tensor | None = None


def run_training(job: TrainingJob, run: Run) -> TrainingState:
    """Train `job` in `run` (see the module's docstring) and return the final state.

    >>> state = run_training(job, run)  # doctest: +SKIP
    >>> state.global_step == job.steps or state.stopped_early  # doctest: +SKIP
    True
    """
    cfg = run.config.train
    # No seeding here: `run_strategy` seeded once before the strategy built its model, so initialisation and
    # then dropout draw from one stream, as in an uninterrupted run (a resume restores the stream itself).
    limit_kernel_cache()
    accelerator = Accelerator(
        cpu=on_cpu_only(),  # several CPU processes train as one data-parallel group (`process_state`)
        mixed_precision=job.precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        # The batches are split across processes by `ShardedBatches`: one schedule step per optimizer step.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if accelerator.num_processes > 1 and not job.objective.example_wise:
        raise AdaptextError(
            f"strategy {run.config.strategy} trains on pairs within each batch, which splitting the batch across "
            f"{accelerator.num_processes} processes would change: run it as one process"
        )
    used_rows = job.token_ids is not None and cfg.embedding_rows == "used" and train_used_rows(job.model, job.token_ids)
    optimizer = build_optimizer(job.model, cfg, job.learning_rate)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(job.warmup_ratio * job.steps), num_training_steps=job.steps
    )
    model, optimizer, scheduler = accelerator.prepare(job.model, optimizer, scheduler)
    loader = batch_loader(job, run, accelerator)
    loop = Loop(job, run, accelerator, model, optimizer, loader, scheduler, CallbackList(run.callbacks))
    try:
        if run.resume:
            loop.restore()
        loop.train()
    finally:
        if used_rows:
            restore_embedding(job.model)  # the model saved and the one in memory: a plain word-embedding layer
    # The process group outlives training: the run's post-hoc steps and evaluation still synchronise the processes
    # (`run_strategy` ends it). adaptext starts no accelerate trackers, the rest of what `end_training` does.
    accelerator.free_memory()
    return loop.state


def batch_loader(job: TrainingJob, run: Run, accelerator: Accelerator) -> DataLoaderShard:
    """This process's batches of the job, on its device.

    Built here rather than by `accelerator.prepare`, whose sharding drops any short batch that is not the last one
    (`LengthGroupedBatches` shuffles its one short batch anywhere); `DataLoaderShard` is the loader `prepare` would
    make, so gradient accumulation still ends with each epoch.
    """
    batches = job.batches
    if accelerator.num_processes > 1:
        batches = ShardedBatches(job.batches, accelerator.process_index, accelerator.num_processes)  # type: ignore[arg-type]
    return DataLoaderShard(
        job.dataset,
        device=accelerator.device,
        # Its own generator: drawing worker seeds from the global RNG would shift dropout masks after a resume.
        generator=torch.Generator().manual_seed(run.config.seed),
        batch_sampler=batches,
        collate_fn=job.collate,
        num_workers=run.config.train.num_workers,
    )


class Loop:
    """The loop's moving parts and its steps, each a short method; `train` reads top to bottom."""

    def __init__(
        self,
        job: TrainingJob,
        run: Run,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        scheduler: Any,
        callbacks: Callback,
    ) -> None:
        self.job, self.paths, self.cfg = job, run.paths, run.config.train
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.loader, self.scheduler, self.callbacks = loader, scheduler, callbacks
        self.unwrapped: nn.Module = accelerator.unwrap_model(model)
        self.batches_per_epoch = len(loader)
        self.processes = accelerator.num_processes
        trainable, total = count_parameters(self.unwrapped)
        self.state = TrainingState(total_steps=job.steps, trainable_parameters=trainable, total_parameters=total)
        self.swa = WeightAverage.for_run(self.unwrapped, run.config.train, job.steps)
        self.saved_at = -1  # the step of the last checkpoint written
        self.window_start = time.perf_counter()

    def train(self) -> None:
        """Epochs x batches until the planned steps are done or early stopping ends the run."""
        state, objective = self.state, self.job.objective
        objective.bind(self.unwrapped, self.accelerator.device)
        objective.train_mode(self.unwrapped)
        self.callbacks.on_train_begin(state, self.unwrapped)
        try:
            while not state.done and state.global_step < state.total_steps:
                self.train_epoch()
        finally:
            objective.close()
        if self.saved_at != state.global_step or not state.done:
            state.done = True
            self.save_checkpoint()
        if self.swa is not None:
            self.use_average()
        if self.job.finish is not None:
            self.finish()
        self.callbacks.on_train_end(state)

    def train_epoch(self) -> None:
        """One pass over the batches (the rest of it after a resume), an optimizer step every few batches."""
        state = self.state
        # The prepared loader re-seeds the batch sampler with its own epoch counter on every pass.
        self.loader.set_epoch(state.epoch)
        batches = self.loader
        if state.batch_in_epoch:
            batches = self.accelerator.skip_first_batches(self.loader, state.batch_in_epoch)
        for batch in batches:
            self.train_on(batch)
            if not self.accelerator.sync_gradients:
                continue  # gradients accumulate over more batches before the optimizer steps
            self.end_step()
            if state.done or state.global_step >= state.total_steps:
                break

    def train_on(self, batch: dict[str, torch.Tensor]) -> None:
        """Forward, backward and (when the accumulated batches are complete) clip and optimizer step."""
        accelerator, state = self.accelerator, self.state
        targets = batch.pop("labels")
        self.job.objective.next_batch(batch.pop("index"))
        with accelerator.accumulate(self.model):
            loss, examples = self.job.objective.loss(self.model, batch, targets)
            accelerator.backward(self.global_mean(loss, examples))
            if accelerator.sync_gradients and self.cfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if accelerator.sync_gradients:
                self.job.objective.after_step(state.global_step)
            self.optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        state.window_loss += loss.item() * examples
        state.window_examples += examples

    def global_mean(self, loss: torch.Tensor, examples: int) -> torch.Tensor:
        """The part of the global batch's mean loss that this process's slice carries, scaled for DDP.

        DDP averages the processes' gradients; slices of unequal size (a batch of 33 on two processes) must weigh
        by their examples for the average to be the gradient of the whole batch's mean loss.
        """
        if self.processes == 1:
            return loss
        total = self.accelerator.reduce(torch.tensor(float(examples), device=loss.device), reduction="sum")
        return loss * (examples * self.processes / total)

    def end_step(self) -> None:
        """After an optimizer step: count it, log, evaluate and checkpoint when due."""
        state, cfg = self.state, self.cfg
        state.global_step += 1
        if self.swa is not None and self.swa.due(state.global_step):
            self.swa.update()  # before this step's checkpoint, which saves the average
        last = state.global_step >= state.total_steps
        if state.global_step % LOG_EVERY == 0 or last:
            self.log_training()
        end_of_epoch = state.batch_in_epoch >= self.batches_per_epoch
        if end_of_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        scheduled = end_of_epoch or last or (cfg.eval_steps is not None and state.global_step % cfg.eval_steps == 0)
        if self.job.evaluate is not None and scheduled:
            self.evaluate()
            state.done = state.done or last
            self.save_checkpoint()
        else:
            if self.job.evaluate is not None and self.callbacks.wants_evaluation(state):
                self.evaluate(choose=False)
            if last:
                state.done = True
                self.save_checkpoint()
            elif state.global_step % cfg.checkpoint_steps == 0:
                self.save_checkpoint()
        self.callbacks.on_step_end(state)

    def progress(self) -> float:
        """Epochs done so far, fractional: passes over the training data."""
        passes = self.state.epoch + self.state.batch_in_epoch / self.batches_per_epoch
        return passes * self.job.epochs_per_pass

    def log_training(self) -> None:
        """Write the training record of the steps since the last one (their loss is weighed by examples)."""
        state = self.state
        elapsed = time.perf_counter() - self.window_start
        loss_sum, examples = state.window_loss, float(state.window_examples)
        if self.processes > 1:  # the record is the global batch's: every process's slices together
            window = torch.tensor([loss_sum, examples], device=self.accelerator.device, dtype=torch.float64)
            loss_sum, examples = (float(v) for v in self.accelerator.reduce(window, reduction="sum"))
        record = {
            "step": state.global_step,
            "epoch": self.progress(),
            "loss": loss_sum / max(examples, 1),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "samples_per_second": examples / max(elapsed, 1e-9),
        }
        if self.accelerator.is_main_process:
            append_log(self.paths, record)
        self.callbacks.on_log(record)
        state.window_loss, state.window_examples, self.window_start = 0.0, 0, time.perf_counter()

    def evaluate(self, *, choose: bool = True) -> None:
        """Score the model on validation data, keep it if it is the best so far, and decide on early stopping.

        `choose=False`: an evaluation a callback asked for (a tune trial's rung), logged and given to the callbacks
        only. The best model and early stopping are decided by the config's own evaluations alone, so a run trains,
        stops and keeps the same model with or without the callbacks that watch it (a trial's value is what its
        config gives when trained alone).
        """
        assert self.job.evaluate is not None
        state, cfg = self.state, self.cfg
        # Every process evaluates, so that all of them take the same best-model and early-stopping decisions.
        with full_precision(self.unwrapped):
            report = self.job.evaluate(self.unwrapped)
        self.job.objective.train_mode(self.unwrapped)
        value = self.record_evaluation(report)
        if not choose:
            logger.info(
                "step %d: validation %s=%.4f (asked by a callback)", state.global_step, cfg.metric_for_best, value
            )
            return
        if is_improvement(cfg.metric_for_best, value, state.best_metric):
            state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
            self.save_model()
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

    def use_average(self) -> None:
        """Put SWA's averaged weights into the model, then evaluate and save it as the run's model (a job's `finish`
        stage, when it has one, does both). Runs after the final checkpoint, which keeps the last trained weights and
        the average, so a resumed run repeats this and arrives at the same model."""
        assert self.swa is not None
        swa, state = self.swa, self.state
        if swa.count == 0:
            logger.warning(
                "SWA: training ended at step %d, before the first averaged step %d; the model is kept as without SWA",
                state.global_step,
                swa.first_step,
            )
            return
        swa.apply()
        logger.info(
            "SWA: the model is the mean of the weights of %d steps (from step %d, every %d)",
            swa.count,
            swa.first_step,
            swa.every,
        )
        if self.job.finish is not None:
            return
        if self.job.evaluate is not None:
            with full_precision(self.unwrapped):
                report = self.job.evaluate(self.unwrapped)
            state.best_metric = self.record_evaluation(report, swa=True)
        state.best_step = state.global_step
        self.save_model()

    def finish(self) -> None:
        """The job's last stage after the final checkpoint (few-shot fits its head): its model is the one kept."""
        assert self.job.finish is not None
        with full_precision(self.unwrapped):
            report = self.job.finish(self.unwrapped)
        self.state.best_metric = self.record_evaluation(report)
        self.state.best_step = self.state.global_step
        self.save_model()

    def record_evaluation(self, report: EvalReport, *, swa: bool = False) -> float:
        """Log a validation report of this step (`swa`: of the averaged weights, marked so in the record); returns
        its value of `train.metric_for_best`."""
        record = eval_record(report, self.state.global_step, self.progress()) | ({"swa": True} if swa else {})
        if self.accelerator.is_main_process:
            append_log(self.paths, record)
        self.callbacks.on_evaluate(record)
        self.state.history.append(record)
        value = float(report.metrics[self.cfg.metric_for_best])
        if self.processes > 1:
            # Every process scored the same weights on the same data; the main process's value decides for all,
            # so the best model and early stopping can never differ between processes.
            value = broadcast_object_list([value], from_process=0)[0]
        return value

    def save_model(self) -> None:
        """Write the run's model folder with the job's `save` (main process), and tell the callbacks."""
        if self.job.save is None:
            return
        if self.accelerator.is_main_process:
            self.job.save(self.unwrapped, self.paths.model)
        self.accelerator.wait_for_everyone()
        self.callbacks.on_save(self.unwrapped, self.paths.model)

    def save_checkpoint(self) -> None:
        """Replace the checkpoint folder with the model, optimizer, schedule, random states and counters."""
        accelerator, state = self.accelerator, self.state
        staging = staging_dir(self.paths.checkpoint)

        def write(folder: Path) -> None:
            accelerator.wait_for_everyone()  # the folder exists: the other processes may add their random states
            accelerator.save_state(str(folder))
            write_json(folder / STATE_FILE, asdict(state))
            if self.swa is not None:
                self.swa.save(folder)
            self.save_window(folder)
            accelerator.wait_for_everyone()  # every process's files are in before the folder is swapped in

        if accelerator.is_main_process:
            replace_dir(self.paths.checkpoint, write)
        else:
            # `save_state` is collective: every process writes its own random states into the staging folder.
            accelerator.wait_for_everyone()
            accelerator.save_state(str(staging))
            self.save_window(staging)
            accelerator.wait_for_everyone()
        accelerator.wait_for_everyone()
        self.saved_at = state.global_step

    def save_window(self, folder: Path) -> None:
        """With several processes, each one's share of the loss since the last log record (its own slices)."""
        if self.processes > 1:
            window = {"window_loss": self.state.window_loss, "window_examples": self.state.window_examples}
            write_json(folder / WINDOW_FILE.format(rank=self.accelerator.process_index), window)

    def restore(self) -> None:
        """Load the last checkpoint: weights, optimizer, schedule, random states and the loop's counters."""
        checkpoint = self.paths.checkpoint
        self.accelerator.load_state(str(checkpoint))
        if compact_moments(self.unwrapped, self.optimizer):
            logger.info(
                "the checkpoint trained every word-embedding row (an earlier adaptext, or train.embedding_rows=all): "
                "its optimizer moments are cut to the rows this run trains, the rest were zero"
            )
        if self.swa is not None:
            self.swa.load(checkpoint)
        saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        if self.processes > 1:  # the main process's state, with this process's own share of the log window
            window = checkpoint / WINDOW_FILE.format(rank=self.accelerator.process_index)
            saved |= json.loads(window.read_text(encoding="utf-8"))
        self.state = TrainingState(**saved | {"total_steps": self.job.steps})  # the run length may change
        if self.accelerator.is_main_process:
            finished = self.state.done and self.job.finish is not None
            truncate_log(self.paths, self.state.global_step, evaluated=not finished)
        self.accelerator.wait_for_everyone()
        self.saved_at = self.state.global_step
        state = self.state
        logger.info("resumed at step %d (epoch %d, batch %d)", state.global_step, state.epoch, state.batch_in_epoch)


def in_memory_predictor(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: Config) -> Predictor:
    """A `Predictor` over the model being trained, set up as the final evaluation sets up the saved one."""
    return Predictor(
        model,  # type: ignore[arg-type]  # a classifier module: the call interface is what Predictor uses
        tokenizer,
        max_length=config.data.max_length,
        threshold=config.train.threshold,
        batch_size=eval_batch_size(config.train),
    )


def validation(tokenizer: PreTrainedTokenizerBase, config: Config, data: TextData) -> Callable[[nn.Module], EvalReport]:
    """A job's `evaluate`: the model being trained scored on `data` (the validation split)."""
    return lambda model: evaluate_data(in_memory_predictor(model, tokenizer, config), data)


def eval_record(report: EvalReport, step: int, epoch: float) -> dict[str, Any]:
    """The train-log record of a validation: step, epoch and every metric as `eval_<name>`."""
    return {"step": step, "epoch": epoch} | {f"eval_{k}": v for k, v in report.metrics.items()}


def truncate_log(paths: RunPaths, step: int, *, evaluated: bool = True) -> None:
    """Drop log records written after the checkpoint a run resumes from; the resumed run writes them again.

    `evaluated`: whether the checkpoint of `step` comes after that step's evaluation (a job's `finish` stage
    evaluates after the final checkpoint, so a resumed run writes that record again). The evaluation of SWA's
    averaged weights also follows the final checkpoint: its record (`swa: true`) is always written again.
    """
    if not paths.log.is_file():
        return

    def kept(record: dict[str, Any]) -> bool:
        is_eval = any(key.startswith("eval_") for key in record)
        if record.get("swa"):
            return record["step"] < step
        return record["step"] < step or (record["step"] == step and (evaluated or not is_eval))

    lines = paths.log.read_text(encoding="utf-8").splitlines()
    kept_lines = [line for line in lines if line.strip() and kept(json.loads(line))]
    paths.log.write_text("".join(line + "\n" for line in kept_lines), encoding="utf-8")


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
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
