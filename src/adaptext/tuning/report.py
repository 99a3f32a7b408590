"""What a study leaves in its folder: `trials.csv`, `best_config.yaml`, optuna's plots and `tune.json`."""

from __future__ import annotations

import csv
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adaptext.core.config import config_to_yaml
from adaptext.core.run import write_json
from adaptext.tuning.plan import TuningPlan, trial_config

logger = logging.getLogger(__name__)

SUMMARY_FILE = "tune.json"


BEST_CONFIG_FILE = "best_config.yaml"


TRIALS_FILE = "trials.csv"


PLOTS_DIR = "plots"


def write_reports(study: optuna.Study, plan: TuningPlan) -> dict[str, Any]:
    """Write every report of the study into `plan.root`; returns the summary written to `tune.json`."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    write_trials_csv(trials, plan.root / TRIALS_FILE)
    best = study.best_trial if complete else None
    if best is not None:
        config = trial_config(plan, best.params, plan.root / "best")
        (plan.root / BEST_CONFIG_FILE).write_text(config_to_yaml(config), encoding="utf-8")
        write_plots(study, plan.root / PLOTS_DIR, n_complete=len(complete))
    summary = {
        "study_name": plan.study_name,
        "storage": plan.storage,
        "metric": plan.metric,
        "direction": plan.direction,
        "best_value": best.value if best else None,
        "best_params": best.params if best else {},
        "best_trial": best.number if best else None,
        "best_config": str(plan.root / BEST_CONFIG_FILE) if best else None,
        "trials": dict(Counter(t.state.name.lower() for t in trials)),
        "steps_trained": sum(int(t.user_attrs.get("steps", 0)) for t in trials),
        "space": {key: param.model_dump(exclude_defaults=True) for key, param in plan.space.searched.items()},
        "fixed": plan.space.fixed,
    }
    write_json(plan.root / SUMMARY_FILE, summary)
    return summary


def write_trials_csv(trials: list[FrozenTrial], path: Path) -> None:
    """One row per trial: number, state, value, seconds, steps trained, validation passes, then its parameters."""
    keys = sorted({key for t in trials for key in t.params})
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", "duration_s", "steps", "evaluations", *keys])
        for t in trials:
            seconds = t.duration.total_seconds() if t.duration is not None else None
            writer.writerow(
                [
                    t.number,
                    t.state.name.lower(),
                    "" if t.value is None else t.value,
                    "" if seconds is None else round(seconds, 2),
                    t.user_attrs.get("steps", ""),
                    t.user_attrs.get("evaluations", ""),
                    *(t.params.get(key, "") for key in keys),
                ]
            )


def write_plots(study: optuna.Study, folder: Path, *, n_complete: int) -> None:
    """optuna's plots as PNG (matplotlib) and HTML (plotly, with plotly.js beside them: they open offline)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from optuna import visualization as interactive
    from optuna.visualization import matplotlib as static

    folder.mkdir(parents=True, exist_ok=True)
    plots = ["optimization_history", "parallel_coordinate"]
    if n_complete >= 2:  # importances need at least two finished trials to compare
        plots.append("param_importances")
    for name in plots:
        with warnings.catch_warnings():
            # optuna warns that these plots are experimental, or that importances tie on few trials: no action needed.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = getattr(static, f"plot_{name}")(study)
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                figure.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(figure)
                # "directory": plotly.min.js is written once into `folder`, and each page loads it from there.
                page = getattr(interactive, f"plot_{name}")(study)
                page.write_html(folder / f"{name}.html", include_plotlyjs="directory")
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # A plot optuna cannot draw for this study (e.g. a parameter with one value) is skipped, not fatal.
                logger.warning("plot %s skipped: %s", name, error)
