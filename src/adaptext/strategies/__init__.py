"""The strategies adaptext ships, and `train`: a config in, an evaluated run folder out.

Importing this package registers `finetune`, `fewshot`, `zeroshot` and `prompt` in
`adaptext.training.strategy.STRATEGIES`; a strategy of one's own registers itself the same way (see
docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from adaptext.core.config import Config, ContinualSection
from adaptext.core.errors import ConfigError
from adaptext.strategies import fewshot, finetune, prompt, zeroshot
from adaptext.training.callbacks import Callback, OnStep
from adaptext.training.lifecycle import run_strategy
from adaptext.training.state import TrainResult
from adaptext.training.strategy import STRATEGIES

__all__ = ["fewshot", "finetune", "prompt", "train", "zeroshot"]


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train with `config.strategy`, keep the best model, evaluate it and write the run folder's report.

    `callbacks` observe the run (see `adaptext.training.callbacks`); `on_step(global_step)` is a shorthand for a
    callback called after every optimizer step.

    >>> from adaptext import load_config, train
    >>> result = train(load_config("configs/quickstart.yaml"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
    0.9
    """
    if config.continual != ContinualSection():
        raise ConfigError(
            "continual.* is read by `adaptext extend` and `adaptext continual`; remove it from a config for train"
        )
    hooks = [*callbacks, *([OnStep(on_step)] if on_step is not None else [])]
    strategy = STRATEGIES.get(config.strategy)()
    return run_strategy(strategy, config, resume=resume, overwrite=overwrite, callbacks=hooks)
