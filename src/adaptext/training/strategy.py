"""The strategy interface: how a config becomes a trained, saved model folder.

A strategy (fine-tuning, few-shot, zero-shot, prompt-based, or one a user adds) says three things:

- `check(config)`: cross-field rules of its own, and a refusal of config keys it would ignore;
- `prepare(config)`: everything that can fail on the user's input (data, tokenizer, models) before the run
  folder is touched;
- `fit(prepared, run)`: the training itself, which saves the model into `run.paths.model`.

`run_strategy` (in `lifecycle`) does the rest the same way for every strategy: the output-folder checks, the run
folder, labels, environment record, final evaluation, report and `run_stats.json`.

>>> from adaptext.training.strategy import STRATEGIES, Strategy
>>> @STRATEGIES.register("mine")  # doctest: +SKIP
... class Mine(Strategy): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, cast

from adaptext.core import registry
from adaptext.core.config import Config, default_value, dotted_value
from adaptext.core.errors import ConfigError
from adaptext.core.registry import Registry
from adaptext.core.run import RunPaths
from adaptext.data.examples import Splits
from adaptext.inference.predictor import Predictor
from adaptext.training.callbacks import Callback
from adaptext.training.state import TrainingState


@dataclass
class Prepared:
    """What `Strategy.prepare` found and built; strategies subclass it to carry more."""

    splits: Splits
    precision: str = "no"  # accelerate's mixed-precision mode the run trains in


@dataclass
class Run:
    """The run a strategy fits in: its config, folder, mode and observers."""

    config: Config
    paths: RunPaths
    resume: bool = False
    callbacks: list[Callback] = field(default_factory=list)


class Strategy(ABC):
    """One way of turning a config into a saved model folder. Register subclasses in `STRATEGIES`."""

    name: ClassVar[str] = ""
    resumable: ClassVar[bool] = False
    # Dotted config keys this strategy never reads: setting one away from its default is refused by `check`.
    ignores: ClassVar[tuple[str, ...]] = ()
    # Whether it can train a model that predicts one value (`data.problem: regression`); `check` refuses if not.
    regression: ClassVar[bool] = False
    # Whether it trains on `prepare`'s `splits.train`, so that self-training (`self_training.rounds`) can add
    # pseudo-labelled examples to it and fit again; `run_strategy` refuses self-training otherwise.
    self_trainable: ClassVar[bool] = False

    def holds_out_validation(self, config: Config) -> bool:
        """Whether, without a validation file, `prepare` carves `data.validation_fraction` of train off as validation
        (False: the validation split is the training data itself, `Splits.validation_held_out` False)."""
        return True

    def has_held_out_validation(self, config: Config) -> bool:
        """Whether a run of `config` has validation texts it did not train on: a validation file, or a split carved
        off the training file."""
        return config.data.validation is not None or self.holds_out_validation(config)

    def check(self, config: Config) -> None:
        """Refuse a config this strategy cannot honour; the default refuses the keys it `ignores`, and regression
        unless the strategy supports it."""
        name = self.name or config.strategy
        if config.data.problem == "regression" and not self.regression:
            raise ConfigError(
                f"strategy {name} trains classifiers; data.problem=regression needs strategy finetune "
                "(or set data.problem=classification)"
            )
        refuse_ignored(config, self.ignores, name)

    @abstractmethod
    def prepare(self, config: Config) -> Prepared:
        """Read and check everything the run needs; raise before anything is written."""

    @abstractmethod
    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        """Train, save the model into `run.paths.model`, and return the final state."""

    def report_sections(self, predictor: Predictor, run: Run) -> list[tuple[str, str]]:
        """(heading, HTML) sections this strategy adds to the run's report, computed with the saved model (main
        process, after the final evaluation); none by default."""
        return []


STRATEGIES = cast("Registry[type[Strategy]]", registry.STRATEGIES)


def refuse_ignored(config: Config, keys: Sequence[str], strategy: str) -> None:
    """A `ConfigError` naming every key in `keys` that the config sets away from its default."""
    tree = config.model_dump(mode="json")
    changed = []
    for key in keys:
        value = dotted_value(tree, key)
        if value != default_value(key):
            written = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
            changed.append(f"{key}={written}")  # as the config file or the command line would say it
    if changed:
        raise ConfigError(
            f"strategy {strategy} does not use {', '.join(changed)}; remove "
            f"{'it' if len(changed) == 1 else 'them'} from the config"
        )
