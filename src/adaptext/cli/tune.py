"""`adaptext tune CONFIG --trials N [key.path=value ...]`: a hyperparameter search, each trial a training run."""

from __future__ import annotations

import argparse

from adaptext.core.config import load_config
from adaptext.core.console import DEBUG_LOG, keep_debug_log
from adaptext.core.errors import require_extra


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters with optuna",
        description="Run an optuna study in output_dir: each trial trains a run folder under trials/; the best "
        "trial's config is written to best_config.yaml. Running the same command again continues the study.",
    )
    p.add_argument("config", help="YAML config file (see configs/); its tune section sets the search")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides (fixed, not searched)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study ends at, counting earlier ones")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--storage", help="optuna storage URL (default: sqlite:///<output_dir>/study.db)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once, each in its own process (default 1)")
    p.add_argument("--overwrite", action="store_true", help="start the study in output_dir over")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_extra("optuna", "adaptext tune")
    from adaptext.tuning import tune  # optuna and torch are imported only once a command runs

    config = load_config(args.config, args.overrides)
    result = tune(
        config,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        jobs=args.jobs,
        overwrite=args.overwrite,
    )
    keep_debug_log(result.root / DEBUG_LOG, append=not args.overwrite)  # a continued study adds to its log
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.trials.items()))
    print(f"tune folder: {result.root}  ({counts}; {result.steps_trained} steps trained)")
    if result.best_config is None:
        print("no trial completed: no best config")
        return 0
    metric = config.tune.metric or config.train.metric_for_best
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(f"best:        {metric}={result.best_value:.4f} with {params}")
    print(f"best config: {result.best_config}  (adaptext train {result.best_config})")
    return 0
