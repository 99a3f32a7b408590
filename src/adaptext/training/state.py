"""What a run carries from step to step (and across a resume), and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    total_steps: int = 0  # optimizer steps planned for the run (a resumed run may change its length)
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
