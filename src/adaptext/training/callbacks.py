"""Callbacks: observers of a training run (logging, progress, checkpoints seen from outside, interruption).

A callback never changes the model or the batch behind the loop's back; it sees the state after each step, each
log record, each evaluation and each saved model. `CALLBACKS` names the ones a config or a caller can ask for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adaptext.core.registry import Registry
from adaptext.training.state import TrainingState


class Callback:
    """Base class: every hook does nothing, so a callback overrides only what it observes."""

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        """Before the first step (or the first step after a resume), with the model about to be trained."""

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


CALLBACKS: Registry[type[Callback]] = Registry("callback")


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(state, model)

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


class OnStep(Callback):
    """Calls `function(global_step)` after every optimizer step (the `on_step` argument of `train`)."""

    def __init__(self, function: Callable[[int], None]) -> None:
        self.function = function

    def on_step_end(self, state: TrainingState) -> None:
        self.function(state.global_step)
