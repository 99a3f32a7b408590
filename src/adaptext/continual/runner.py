"""Running continual learning: `extend` (one increment of a saved run) and `run_plan` (a sequence of tasks).

A plan's output folder is a run folder like any other (its `model/` is the model after the last task, so
`evaluate`, `predict`, `export`, `serve` and `Predictor.from_dir` use it) with, besides the final evaluation's
report, `continual_metrics.json` (the accuracy matrix and its summaries, per-task times), `continual_heatmap.png`
and `tasks/NN-name/`: each task's own run folder. A plan interrupted between tasks continues with `--resume`
from the first task whose run is not complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from adaptext.continual.memory import STATE_DIR, concat
from adaptext.continual.metrics import summarise
from adaptext.continual.plan import ContinualPlan, check_plan
from adaptext.continual.strategy import Continue, Previous, previous_run
from adaptext.core.config import Config, _merge, build_config, config_to_yaml
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_dir, expand, write_marker
from adaptext.core.run import RunPaths, remove_run, replace_dir, write_json
from adaptext.data.examples import TextData
from adaptext.data.splits import load_splits
from adaptext.evaluation.metrics import evaluate_data
from adaptext.evaluation.report import write_report
from adaptext.inference.predictor import Predictor
from adaptext.inference.routed import ROUTER_STATS_FILE
from adaptext.training.lifecycle import run_strategy
from adaptext.training.state import TrainResult

logger = logging.getLogger(__name__)

METRICS_FILE = "continual_metrics.json"
HEATMAP_FILE = "continual_heatmap.png"
TASKS_DIR = "tasks"


def extend(
    run: str | Path,
    config: Config,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> TrainResult:
    """Continue the run (or model folder) `run` on `config.data` into `config.output_dir` with `config.continual`.

    `config` is the previous run's config with the new data and output folder (what `adaptext extend` builds);
    for `joint`, the model is retrained from the chain's base on the old training data plus the new.
    """
    previous = previous_run(run)
    if config.continual.method == "joint":
        old = previous.config
        if old is None or old.data.train is None or not Path(old.data.train).is_file():
            raise AdaptextError(f"{run}: continual.method=joint needs the old training file, which is not readable")
        earlier = load_splits(old).train
        base = config.model_copy(update={"model": config.model.model_copy(update={"name": previous.base_model})})
        strategy = Continue(previous, earlier=earlier, earlier_tasks=[str(run)] * len(earlier))
        return run_strategy(strategy, base, overwrite=overwrite, resume=resume)
    return run_strategy(Continue(previous), config, overwrite=overwrite, resume=resume)


def extend_config(previous: Previous, overrides: dict[str, Any]) -> Config:
    """The previous run's config with `overrides` (a nested mapping: the new data, output folder, any key=value),
    continuing from the previous model."""
    base = previous.config.model_dump(mode="json") if previous.config is not None else {}
    base.setdefault("data", {}).update(validation=None, test=None, test_fraction=None)
    base.setdefault("model", {})["name"] = str(previous.model_dir)
    if previous.info.routed is not None and base.get("continual", {}).get("method", "auto") == "auto":
        base.setdefault("continual", {})["method"] = "adapters"  # what a routed model continues with
    return build_config(_merge(base, overrides), source="extend")


@dataclass
class PlanResult:
    run_dir: Path
    metrics: dict[str, Any]


def run_plan(plan: ContinualPlan, *, resume: bool = False, overwrite: bool = False) -> PlanResult:
    """Train `plan`'s tasks one after another; see the module's docstring."""
    given = plan.output_dir
    files = [p for task in plan.tasks for p in (task.train, task.validation, task.test) if p is not None]
    model_name = expand(str(plan.base.get("model", {}).get("name", "")))
    inputs = [*files, *([model_name] if str(model_name) and model_name.exists() else [])]
    root = check_output_dir(given, "run", overwrite=overwrite or resume, inputs=inputs)
    paths = RunPaths(root)
    task_dirs = [root / TASKS_DIR / f"{i + 1:02d}-{task.name}" for i, task in enumerate(plan.tasks)]
    configs = [plan.task_config(i, folder) for i, folder in enumerate(task_dirs)]
    labels_per_task = check_plan(plan, configs)  # every file read and checked before anything is trained
    all_labels = list(dict.fromkeys(name for names in labels_per_task for name in names))
    method = configs[0].continual.resolved(configs[0].data.multi_label)
    saved = _read_metrics(root) if resume else None
    if not resume:
        if root.exists():
            remove_run(paths)
            shutil.rmtree(root / TASKS_DIR, ignore_errors=True)
            for name in (METRICS_FILE, HEATMAP_FILE, STATE_DIR):
                target = root / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        write_marker(root, "run")
    evaluations = [load_splits(config, known=all_labels).evaluation for config in configs]
    tasks = len(plan.tasks)
    matrix: list[list[float | None]] = [[None] * tasks for _ in range(tasks)]
    seconds: list[dict[str, Any]] = []
    if saved is not None:
        for i, row in enumerate(saved.get("matrix", [])[:tasks]):
            matrix[i] = list(row)
        seconds = list(saved.get("seconds", []))
    known: list[str] = []
    for i, (task, config, folder) in enumerate(zip(plan.tasks, configs, task_dirs, strict=True)):
        # A task is done once its row of the matrix is in; its model is kept until the next task is done.
        done = (
            i < len(seconds) and all(v is not None for v in matrix[i][: i + 1]) and (folder / "labels.json").is_file()
        )
        if done:
            known = _labels_of(folder)
            continue
        logger.info("continual: task %d of %d (%s), method %s", i + 1, tasks, task.name, method)
        started = time.perf_counter()
        strategy = _task_strategy(plan, config, i, task_dirs, configs, known)
        partial = (folder / "checkpoint").is_dir()
        result = run_strategy(strategy, config, resume=partial, overwrite=not partial)
        train_seconds = time.perf_counter() - started
        known = _labels_of(folder)
        predictor = Predictor.from_dir(folder / "model")
        for j in range(i + 1):
            matrix[i][j] = float(evaluate_data(predictor, evaluations[j]).metrics["accuracy"])
        del predictor
        record: dict[str, Any] = {
            "task": task.name,
            "examples": len(strategy.prepared.splits.train) if strategy.prepared else 0,
            "total_s": round(time.perf_counter() - started, 2),
            "train_s": round(float(result.stats.get("train_seconds", train_seconds)), 2),
        }
        seconds = [*seconds[:i], record | {k: round(v, 2) for k, v in strategy.seconds.items()}]
        _tidy(folder, keep_model=True)
        if i > 0 and not plan.keep_task_models:
            shutil.rmtree(task_dirs[i - 1] / "model", ignore_errors=True)
            (task_dirs[i - 1] / STATE_DIR / ROUTER_STATS_FILE).unlink(missing_ok=True)  # features^2 numbers each
        _write_metrics(root, plan, method, matrix, seconds, complete=False)
        logger.info(
            "continual: after %s, accuracy per task %s", task.name, " ".join(f"{v:.3f}" for v in matrix[i][: i + 1])
        )
    return _finish(plan, root, task_dirs[-1], configs[-1], evaluations, matrix, seconds, method)


def _task_strategy(
    plan: ContinualPlan, config: Config, i: int, task_dirs: list[Path], configs: list[Config], known: list[str]
) -> Continue:
    name = plan.tasks[i].name
    if i == 0:
        return Continue(None, task_name=name, compare=False)
    if config.continual.method == "joint":
        earlier = [load_splits(configs[j], known=known).train for j in range(i)]
        tasks = [plan.tasks[j].name for j, part in enumerate(earlier) for _ in range(len(part))]
        return Continue(
            None,
            task_name=name,
            earlier=concat(earlier, "earlier tasks"),
            earlier_tasks=tasks,
            known_labels=known,
            compare=False,
        )
    return Continue(previous_run(task_dirs[i - 1]), task_name=name, compare=False)


def _labels_of(folder: Path) -> list[str]:
    return list(json.loads((folder / "labels.json").read_text(encoding="utf-8")))


def _tidy(folder: Path, *, keep_model: bool) -> None:
    # A finished task is resumed by task, never by step: its checkpoint (the model and optimizer state) goes.
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        shutil.rmtree(folder / name, ignore_errors=True)
    if not keep_model:
        shutil.rmtree(folder / "model", ignore_errors=True)


def _read_metrics(root: Path) -> dict[str, Any] | None:
    path = root / METRICS_FILE
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def _write_metrics(
    root: Path,
    plan: ContinualPlan,
    method: str,
    matrix: list[list[float | None]],
    seconds: list[dict[str, Any]],
    *,
    complete: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "method": method,
        "tasks": [task.name for task in plan.tasks],
        "matrix": matrix,
        "seconds": seconds,
        "complete": complete,
    }
    if complete:
        payload |= summarise(matrix)
    payload |= extra or {}
    write_json(root / METRICS_FILE, payload)
    return payload


def _finish(
    plan: ContinualPlan,
    root: Path,
    last: Path,
    config: Config,
    evaluations: list[TextData],
    matrix: list[list[float | None]],
    seconds: list[dict[str, Any]],
    method: str,
) -> PlanResult:
    """The final model at the plan's `model/`, scored on every task's evaluation data together; the report."""
    for name in ("model", STATE_DIR):
        if (last / name).is_dir():
            replace_dir(root / name, partial(_copy, last / name))
    shutil.copy2(last / "labels.json", root / "labels.json")
    final_config = config.model_copy(update={"output_dir": root})
    (root / "config.yaml").write_text(config_to_yaml(final_config), encoding="utf-8")
    predictor = Predictor.from_dir(root / "model")
    everything = concat(evaluations, "every task's evaluation data")
    report = evaluate_data(predictor, everything)
    times = [float(s["total_s"]) for s in seconds]
    metrics = _write_metrics(
        root,
        plan,
        method,
        matrix,
        seconds,
        complete=True,
        extra={
            "final_accuracy": report.metrics["accuracy"],
            "final_macro_f1": report.metrics.get("macro_f1"),
            "mean_seconds_per_task": sum(times) / len(times),
        },
    )
    plot_heatmap(matrix, [task.name for task in plan.tasks], root / HEATMAP_FILE)
    write_report(
        report,
        root,
        title=f"Continual learning ({method}), {len(plan.tasks)} tasks: the model after the last task",
        sections=[("Continual learning", continual_section(metrics))],
    )
    return PlanResult(run_dir=root, metrics=metrics)


def _copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)


def plot_heatmap(matrix: list[list[float | None]], names: list[str], path: Path) -> None:
    """The accuracy matrix as a heatmap PNG (rows: after task i; columns: task j)."""
    import matplotlib

    matrix_values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(matrix_values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("accuracy on task")
    ax.set_ylabel("after training task")
    if len(names) <= 16:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value is not None:
                    ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def continual_section(metrics: dict[str, Any]) -> str:
    """The report's continual-learning part: summaries, the heatmap, and the per-task table."""

    def pct(value: Any) -> str:
        return "" if value is None else f"{100 * float(value):.1f}"

    summary = "".join(
        f"<tr><td>{label}</td><td>{pct(metrics.get(key))}</td></tr>"
        for label, key in (
            ("final accuracy over every task's data (%)", "final_accuracy"),
            ("average accuracy (%)", "average_accuracy"),
            ("average incremental accuracy (%)", "average_incremental_accuracy"),
            ("backward transfer (points)", "backward_transfer"),
            ("forgetting (points)", "forgetting"),
        )
    )
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{s['task']}</td><td>{s['examples']}</td><td>{s['total_s']:.1f}</td>"
        f"<td>{pct(metrics['matrix'][i][i])}</td><td>{pct(metrics['matrix'][-1][i])}</td></tr>"
        for i, s in enumerate(metrics["seconds"])
    )
    return (
        f"<p>Method <code>{metrics['method']}</code>. Accuracy on task j after training task i: "
        f"{HEATMAP_FILE}; every number in {METRICS_FILE}.</p>"
        f"<table><tbody>{summary}</tbody></table>"
        f"<img src='{HEATMAP_FILE}' alt='accuracy matrix'>"
        "<table><thead><tr><th>#</th><th>task</th><th>examples</th><th>seconds</th><th>accuracy just after (%)</th>"
        f"<th>after the last task (%)</th></tr></thead><tbody>{rows}</tbody></table>"
    )
