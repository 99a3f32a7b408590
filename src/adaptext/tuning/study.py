"""`tune`: an optuna study of trials, each an ordinary training run, resumable from its storage.

The tune folder (the config's `output_dir`) holds the study (`study.db`, unless another storage is given), one run
folder per trial under `trials/`, and the reports (`trials.csv`, `best_config.yaml`, `plots/`, `tune.json`).
The study ends once `trials` trials are finished (complete or pruned), counting those already in the storage, so
running the same command again after an interruption continues it. Trials a killed process left running are
marked failed and do not count.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from adaptext.core.config import Config, build_config, config_changes, config_to_yaml, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.outputs import MARKER, check_output_dir, folder_kind, write_marker
from adaptext.core.run import run_inputs, write_json
from adaptext.core.task import task_of
from adaptext.data.splits import load_splits
from adaptext.evaluation.metrics import check_metric_name
from adaptext.strategies import train
from adaptext.training.strategy import STRATEGIES
from adaptext.tuning.plan import TRIALS_DIR, TuningPlan, trial_config
from adaptext.tuning.pruning import FINAL, REDUCTION, TrialPruning
from adaptext.tuning.report import BEST_CONFIG_FILE, PLOTS_DIR, SUMMARY_FILE, TRIALS_FILE, write_reports
from adaptext.tuning.space import build_space, set_dotted, suggest

logger = logging.getLogger(__name__)

BASE_CONFIG_FILE = "tune_config.yaml"


STUDY_DB = "study.db"


LOCK_FILE = ".tune.lock"


# What `tune` writes into its folder; `--overwrite` removes these and nothing else.
TUNE_ARTEFACTS = (
    MARKER,
    BASE_CONFIG_FILE,
    LOCK_FILE,
    f"{STUDY_DB}*",
    TRIALS_DIR,
    TRIALS_FILE,
    BEST_CONFIG_FILE,
    PLOTS_DIR,
    SUMMARY_FILE,
)


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneResult:
    """A finished (or continued) study: where it lies, its best trial, and what it cost."""

    root: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    trials: dict[str, int]  # trials by state: complete, pruned, fail, ...
    steps_trained: int


def tune(
    config: Config,
    *,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    jobs: int = 1,
    overwrite: bool = False,
) -> TuneResult:
    """Search `config`'s hyperparameters with optuna until `trials` trials are finished; see the module docstring.

    >>> from adaptext import load_config
    >>> from adaptext.tuning import tune
    >>> result = tune(load_config("configs/quickstart.yaml", ["output_dir=runs/tune"]), trials=20)  # doctest: +SKIP
    >>> result.best_config  # doctest: +SKIP
    PosixPath('runs/tune/best_config.yaml')
    """
    plan = plan_study(config, trials=trials, timeout=timeout, storage=storage, jobs=jobs)
    prepare_tune_dir(config, plan.root, overwrite=overwrite)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if overwrite and storage is not None:
        with contextlib.suppress(KeyError):  # no such study yet
            optuna.delete_study(study_name=plan.study_name, storage=plan.storage)
    opened = open_storage(plan.storage)
    study = optuna.create_study(
        study_name=plan.study_name, storage=opened, direction=plan.direction, load_if_exists=True
    )
    fail_stale_trials(study, opened)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    logger.info("study %s: %d of %d trials finished; %s", plan.study_name, done, plan.n_trials, plan.space.describe())
    with parent_run(config, plan.study_name) as run_id:
        plan = replace(plan, parent_run_id=run_id)
        try:
            run_workers(plan)
        finally:
            summary = write_reports(study, plan)
        log_best(summary, run_id)
    best_config = summary["best_config"]
    return TuneResult(
        root=plan.root,
        best_value=summary["best_value"],
        best_params=summary["best_params"],
        best_config=Path(best_config) if best_config else None,
        trials=summary["trials"],
        steps_trained=summary["steps_trained"],
    )


def plan_study(config: Config, *, trials: int, timeout: float | None, storage: str | None, jobs: int) -> TuningPlan:
    """Check everything a study needs before anything is written; raise a one-line error naming what is wrong."""
    if trials < 1:
        raise AdaptextError(f"--trials must be at least 1, got {trials}")
    if jobs < 1:
        raise AdaptextError(f"--jobs must be at least 1, got {jobs}")
    if timeout is not None and timeout <= 0:
        raise AdaptextError(f"--timeout must be a positive number of seconds, got {timeout}")
    if config.data.validation is None and config.data.train is None:
        raise ConfigError(
            "tuning scores every trial on validation data: set data.validation, or data.train "
            "(data.validation_fraction of it is then held out)"
        )
    metric = config.tune.metric or config.train.metric_for_best
    if config.tune.metric is not None:
        try:
            check_metric_name(metric, task_of(config))
        except ConfigError as error:
            raise ConfigError(str(error).replace("train.metric_for_best", "tune.metric")) from None
    space = build_space(config)
    strategy = STRATEGIES.get(config.strategy)
    probe = set_dotted(config.model_dump(mode="json"), "train.metric_for_best", metric)
    strategy().check(build_config(probe, "tune"))
    if not strategy().has_held_out_validation(config):
        raise ConfigError(
            f"tuning scores every trial on held-out validation data, and strategy {config.strategy} holds none out "
            "by default (every example trains): set data.validation=FILE, or data.validation_fraction=0.2"
        )
    load_splits(config)  # a data problem fails here, before anything is written
    root = check_output_dir(config.output_dir, "tune", overwrite=True, inputs=run_inputs(config))
    url = storage or f"sqlite:///{(root / STUDY_DB).resolve()}"
    return TuningPlan(
        config=config,
        space=space,
        root=root,
        study_name=root.resolve().name,
        storage=url,
        metric=metric,
        n_trials=trials,
        deadline=None if timeout is None else time.time() + timeout,
        jobs=jobs,
    )


def prepare_tune_dir(config: Config, root: Path, *, overwrite: bool) -> None:
    """Start the tune folder, continue the same study's folder, or (`overwrite`) start it over."""
    if folder_kind(root.resolve()) == "tune":
        if overwrite:
            for name in TUNE_ARTEFACTS:
                for path in root.glob(name):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            check_same_study(load_config(root / BASE_CONFIG_FILE), config, root)
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, "tune")
    (root / BASE_CONFIG_FILE).write_text(config_to_yaml(config), encoding="utf-8")


def check_same_study(saved: Config, given: Config, root: Path) -> None:
    """Refuse to continue a study with another config: its trials would not be comparable."""
    changed = config_changes(saved, given, frozenset({"output_dir"}))
    if changed:
        details = "; ".join(changed[:5])
        raise AdaptextError(
            f"{root}: holds a study of another config ({details}); use --overwrite to start over, "
            "or set output_dir to another folder"
        )


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """optuna's storage at `url`; sqlite waits for a lock rather than failing when workers write at once."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Mark failed the trials a killed process left running: nothing runs them any more (no worker runs yet)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        logger.warning("trial %d was left running by an interrupted study: marked failed", trial.number)


def run_workers(plan: TuningPlan) -> None:
    """Run trials in this process (`jobs` 1), or in `jobs` worker processes sharing the storage."""
    if plan.jobs == 1:
        run_trials(plan, worker=0)
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch or accelerate state shared
    level = logging.getLogger().getEffectiveLevel()
    workers = [context.Process(target=_worker, args=(plan, i, level), name=f"tune-{i}") for i in range(plan.jobs)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except BaseException:
        for worker in workers:
            worker.terminate()
            worker.join()
        raise
    failed = [str(w.exitcode) for w in workers if w.exitcode != 0]
    if failed:
        raise AdaptextError(
            f"{len(failed)} of {plan.jobs} tuning workers failed (exit codes {', '.join(failed)}; their errors are "
            "above); run the same command again to continue the study"
        )


def _worker(plan: TuningPlan, worker: int, level: int) -> None:
    """A worker process: its share of the cores, the study's logging and MLflow run, then trials until done."""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s tune-{worker}: %(message)s", datefmt="%X")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.jobs))
    if plan.parent_run_id is not None:
        import mlflow

        mlflow.start_run(run_id=plan.parent_run_id)  # the trials' own MLflow runs nest under the study's
    try:
        run_trials(plan, worker)
    except AdaptextError as error:
        print(f"adaptext tune: error: {error}", file=sys.stderr)
        sys.exit(2)


def run_trials(plan: TuningPlan, worker: int) -> None:
    """Ask for and run trials until the study has `n_trials` finished (or running) trials, or time is up."""
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage))
    # Seeded per worker and by the trials so far: a continued study does not draw its first trials again.
    seed = plan.config.seed + 7919 * worker + len(study.get_trials(deepcopy=False))
    study.sampler = build_sampler(plan.config, seed)
    study.pruner = build_pruner(plan.config.tune.pruner, plan.config.tune.percentile)
    while plan.deadline is None or time.time() < plan.deadline:
        with _claim(plan):
            counted = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
            if len(counted) >= plan.n_trials:
                return
            trial = study.ask()
        run_trial(study, trial, plan)
    logger.info("--timeout reached: no new trials are started")


@contextlib.contextmanager
def _claim(plan: TuningPlan) -> Iterator[None]:
    # Workers count the trials and start one under a file lock, so together they never start more than asked.
    if plan.jobs == 1:
        yield
        return
    import fcntl

    with (plan.root / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_sampler(config: Config, seed: int) -> optuna.samplers.BaseSampler:
    if config.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(name: str, percentile: float = 75.0) -> optuna.pruners.BasePruner:
    """The pruner `tune.pruner` names, on a trial's reports at its rungs (see `adaptext.tuning.pruning`).

    `percentile` is `tune.percentile`, the share of trials (in percent) the `percentile` pruner lets go on.
    """
    if name == "median":
        # Three trials give a median worth comparing to; from the first report on, a trial below it stops.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "percentile":
        # As the median pruner, with the bar at the complete trials' (100 - percentile)th percentile instead.
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=3, n_warmup_steps=1)
    if name == "successive_halving":
        # At each rung, a trial goes on when it is in the best third of the trials that reached that rung so far.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=FINAL, reduction_factor=REDUCTION)
    return optuna.pruners.NopPruner()


def run_trial(study: optuna.Study, trial: optuna.Trial, plan: TuningPlan) -> None:
    """Train one trial's run folder, report it to the study and log one line."""
    folder = plan.trial_dir(trial.number)
    pruning = TrialPruning(trial, plan.metric)
    value: float | None = None
    state = TrialState.FAIL
    try:
        config = trial_config(plan, suggest(trial, plan.space), folder)
        value = train(config, callbacks=[pruning]).best_metric
        state = TrialState.COMPLETE if math.isfinite(value) else TrialState.FAIL
    except optuna.TrialPruned:
        state, value = TrialState.PRUNED, pruning.last_value
    finally:
        # The trial's model and optimizer are gone with train's frames; collect them before the next trial.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        trial.set_user_attr("steps", pruning.steps)
        trial.set_user_attr("evaluations", pruning.evaluations)
        trial.set_user_attr("folder", str(folder))
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        if folder.is_dir():
            shutil.rmtree(folder / "checkpoint", ignore_errors=True)  # a trial is never resumed: save the disk
            record = {"number": trial.number, "state": state.name.lower(), "value": value, "params": trial.params}
            write_json(folder / "trial.json", record | {"steps": pruning.steps, "evaluations": pruning.evaluations})
        log_trial(study, trial.number, state, value, plan.metric)


def log_trial(study: optuna.Study, number: int, state: TrialState, value: float | None, metric: str) -> None:
    shown = "n/a" if value is None else f"{value:.4f}"
    try:
        best = f"best {study.best_value:.4f} in trial {study.best_trial.number}"
    except ValueError:  # no complete trial yet
        best = "no complete trial yet"
    logger.info("trial %d %s: %s=%s (%s)", number, state.name.lower(), metric, shown, best)


@contextlib.contextmanager
def parent_run(config: Config, study_name: str) -> Iterator[str | None]:
    """The study's MLflow run, around its trials' runs, when `tracking.backend` is mlflow (else nothing)."""
    if config.tracking.backend != "mlflow":
        yield None
        return
    import mlflow

    from adaptext.training.tracking import experiment_id, use_default_store

    use_default_store()
    with mlflow.start_run(run_name=study_name, experiment_id=experiment_id(config.tracking.experiment)) as run:
        yield run.info.run_id


def log_best(summary: dict[str, Any], run_id: str | None) -> None:
    """Log the study's best value and parameters to its MLflow run."""
    if run_id is None or summary["best_value"] is None:
        return
    import mlflow

    mlflow.log_params({f"best.{k}": v for k, v in summary["best_params"].items()}, run_id=run_id)
    mlflow.log_metric(f"best_{summary['metric']}", summary["best_value"], run_id=run_id)
    for state, count in summary["trials"].items():
        mlflow.log_metric(f"trials_{state}", count, run_id=run_id)
    mlflow.log_metric("steps_trained", summary["steps_trained"], run_id=run_id)
