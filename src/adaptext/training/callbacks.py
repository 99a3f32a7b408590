"""Callbacks: observers of a training run (logging, progress, checkpoints seen from outside, interruption).

A callback never changes the model or the batch behind the loop's back; it sees the state after each step, each
log record, each evaluation and each saved model, and may ask for an evaluation after a step (`wants_evaluation`).
`CALLBACKS` names the ones a caller can ask for by name; each is built as `cls(paths)` with the run's folders. The
run lifecycle runs `progress` and the `tracking.backend` (`tensorboard` by default, `mlflow`) on the main process of
every run; callbacks passed to `train` run on every process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adaptext.core.console import progress_bar
from adaptext.core.registry import Registry
from adaptext.core.run import RunPaths
from adaptext.training.state import TrainingState, TrainResult


class Callback:
    """Base class: every hook does nothing, so a callback overrides only what it observes."""

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        """Before the first step (or the first step after a resume), with the model about to be trained."""

    def wants_evaluation(self, state: TrainingState) -> bool:
        """True to evaluate after this step besides the schedule (a tuning trial's rungs); asked every step.

        The answer must depend on `state` alone, so that every process of a run evaluates at the same steps. Such an
        evaluation is logged and given to `on_evaluate`, but it neither chooses the run's model nor counts toward
        early stopping: those follow the config's own evaluations, whatever the callbacks watch.
        """
        return False

    def on_step_end(self, state: TrainingState) -> None:
        """After every optimizer step, once `state.global_step` counts it."""

    def on_log(self, record: dict[str, Any]) -> None:
        """A training record (step, loss, learning rate, throughput) was written to the run's log."""

    def on_evaluate(self, record: dict[str, Any]) -> None:
        """A validation record (`eval_*` metrics of one step) was written to the run's log."""

    def on_save(self, model: Any, target: Path) -> None:
        """`model` (the in-memory model, unwrapped) was just saved as the run's model folder `target`."""

    def on_train_end(self, state: TrainingState) -> None:
        """After the last step and the last checkpoint."""

    def on_run_end(self, result: TrainResult) -> None:
        """After the final evaluation: the run folder holds its model, metrics and report."""

    def on_run_failed(self, error: BaseException) -> None:
        """The run stopped with `error` (an interruption, a failure, or a tuning trial pruned)."""


CALLBACKS: Registry[Callable[[RunPaths], Callback]] = Registry("callback")


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(state, model)

    def wants_evaluation(self, state: TrainingState) -> bool:
        return any(callback.wants_evaluation(state) for callback in self.callbacks)

    def on_step_end(self, state: TrainingState) -> None:
        for callback in self.callbacks:
            callback.on_step_end(state)

    def on_log(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(record)

    def on_evaluate(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_evaluate(record)

    def on_save(self, model: Any, target: Path) -> None:
        for callback in self.callbacks:
            callback.on_save(model, target)

    def on_train_end(self, state: TrainingState) -> None:
        for callback in self.callbacks:
            callback.on_train_end(state)

    def on_run_end(self, result: TrainResult) -> None:
        for callback in self.callbacks:
            callback.on_run_end(result)

    def on_run_failed(self, error: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_run_failed(error)


@CALLBACKS.register("progress")
class ProgressBar(Callback):
    """A tqdm bar of optimizer steps, with the last logged loss (off when quiet or not on a terminal)."""

    def __init__(self, paths: RunPaths | None = None) -> None:
        self.bar: Any = None

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        self.bar = progress_bar(total=state.total_steps, initial=state.global_step, desc="train", unit="step")

    def on_step_end(self, state: TrainingState) -> None:
        self.bar.update(1)

    def on_log(self, record: dict[str, Any]) -> None:
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")

    def on_train_end(self, state: TrainingState) -> None:
        self.bar.close()

    def on_run_failed(self, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()  # a stopped run (a crash, Ctrl-C, a pruned tuning trial) leaves no bar behind


@CALLBACKS.register("tensorboard")
class TensorBoard(Callback):
    """Training loss, learning rate and validation metrics as TensorBoard scalars in the run's `tensorboard/`."""

    def __init__(self, paths: RunPaths) -> None:
        self.log_dir = paths.root / "tensorboard"
        self.writer: Any = None
        self.step = 0

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter  # loads tensorboard: only when a run starts

        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def on_log(self, record: dict[str, Any]) -> None:
        self.writer.add_scalar("train/loss", record["loss"], record["step"])
        self.writer.add_scalar("train/learning_rate", record["learning_rate"], record["step"])

    def on_evaluate(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key.startswith("eval_"):
                self.writer.add_scalar(f"eval/{key.removeprefix('eval_')}", value, record["step"])

    def on_train_end(self, state: TrainingState) -> None:
        self.writer.close()

    def on_run_failed(self, error: BaseException) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes what was logged and stops the writer's thread


class OnStep(Callback):
    """Calls `function(global_step)` after every optimizer step (the `on_step` argument of `train`)."""

    def __init__(self, function: Callable[[int], None]) -> None:
        self.function = function

    def on_step_end(self, state: TrainingState) -> None:
        self.function(state.global_step)
