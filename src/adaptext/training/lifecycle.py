"""The run lifecycle shared by every strategy: run folder, saving the model, final evaluation, report.

`run_strategy` is how every config becomes a run folder: output-folder checks, the strategy's own checks and
preparation (every failure before the folder is touched), the folder with its config, labels and environment
record, the strategy's `fit`, then the final evaluation of the saved model, the report and `run_stats.json`.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptext.core.config import Config
from adaptext.core.device import check_launch, default_device, process_state, release_freed_memory
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo
from adaptext.core.run import (
    RunPaths,
    check_run_dir,
    environment_record,
    prepare_run_dir,
    read_train_log,
    replace_dir,
    write_json,
)
from adaptext.data.examples import Splits
from adaptext.evaluation.metrics import evaluate_data
from adaptext.inference.predictor import Predictor
from adaptext.modeling.adapters import adapter_size_bytes
from adaptext.modeling.hub import resolve_model_name
from adaptext.training.callbacks import CALLBACKS, Callback, CallbackList
from adaptext.training.optim import eval_batch_size
from adaptext.training.self_training import check_self_training, read_pool, report_section, self_train
from adaptext.training.state import STATS_FILE, TrainingState, TrainResult
from adaptext.training.strategy import Run, Strategy

logger = logging.getLogger(__name__)


def run_strategy(
    strategy: Strategy,
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Run `strategy` on `config` from the checks to the report; see the module's docstring."""
    check_launch()
    paths = check_run_dir(config, resume=resume, overwrite=overwrite)  # a refused output folder fails first
    if resume and not strategy.resumable:
        raise AdaptextError(f"strategy {config.strategy} runs are not resumable; start without --resume")
    check_self_training(strategy, config, resume=resume)
    strategy.check(config)
    prepared = strategy.prepare(config)
    splits = prepared.splits
    pool = read_pool(config, splits) if config.self_training.rounds else None  # its problems fail here too
    # One process sets up the run folder; the others (under accelerate or torchrun) wait until it is there.
    process = process_state()
    if process.is_main_process:
        paths = prepare_run_dir(config, resume=resume, overwrite=overwrite)
        write_json(paths.labels, splits.labels)
        write_json(paths.env, environment_record(str(default_device(None)), prepared.precision, process.num_processes))
    process.wait_for_everyone()
    hooks = CallbackList([*(run_callbacks(config, paths) if process.is_main_process else []), *callbacks])
    try:
        started = time.perf_counter()
        # Every strategy builds its model from the same seeded state: a new head's initial weights depend on it.
        set_seed(config.seed)
        run = Run(config, paths, resume=resume, callbacks=hooks.callbacks)
        state = strategy.fit(prepared, run) if pool is None else self_train(strategy, prepared, run, pool)
        state.train_seconds = time.perf_counter() - started
        # The training copies (model, gradients, optimizer state) are gone with fit's frame; collect them and give
        # their pages back before the final evaluation loads the saved model, so the run's peak memory is that of
        # training alone.
        del prepared
        release_freed_memory()
        result = finish(
            config,
            paths,
            splits,
            state,
            sections=lambda predictor: [*strategy.report_sections(predictor, run), *report_section(paths.root)],
        )
    except BaseException as error:
        hooks.on_run_failed(error)
        raise
    finally:
        process.destroy_process_group()  # a no-op for one process
    hooks.on_run_end(result)
    return result


def run_callbacks(config: Config, paths: RunPaths) -> list[Callback]:
    """The callbacks every run gets on its main process: the progress bar and the `tracking.backend`."""
    names = ["progress"] + ([] if config.tracking.backend == "none" else [config.tracking.backend])
    if "mlflow" in names:
        from adaptext.training import tracking  # noqa: F401  (registers `mlflow`; loads mlflow only when asked)
    return [CALLBACKS.get(name)(paths) for name in names]


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: Config,
    target: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save a model folder that plain `transformers` loads, with label names in its config.

    For an adapter run `model` is a peft model and the folder holds the adapter and the head only; `adaptext.json`
    then records the base model and the label names needed to rebuild it. `extra` adds strategy-specific fields
    of `ModelInfo` (`temperature`, `scorer`, ...) to `adaptext.json`.
    """
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    labels = [id2label[i] for i in range(len(id2label))]

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        # Plain `transformers` users then truncate where adaptext trained and predicts.
        tokenizer.model_max_length = config.data.max_length
        tokenizer.save_pretrained(folder)
        info = ModelInfo(
            base_model=config.model.name,
            base_model_path=resolve_model_name(config.model.name),
            strategy=config.strategy,
            peft_method=config.peft.method,
            labels=labels,
            problem_type=model.config.problem_type,
            max_length=config.data.max_length,
            threshold=config.train.threshold,
            text_column=config.data.text_column,
            text_pair_column=config.data.text_pair_column,
            label_column=config.data.label_column,
            label_delimiter=config.data.label_delimiter,
        )
        info.extended(**(extra or {})).write(folder)

    replace_dir(target, write)


def finish(
    config: Config,
    paths: RunPaths,
    splits: Splits,
    state: TrainingState,
    sections: Callable[[Predictor], list[tuple[str, str]]] | None = None,
) -> TrainResult:
    """Evaluate the best saved model on the test split (or validation) and write the run's report, with the
    strategy's own `sections` in it."""
    from adaptext.evaluation.errors import explained_errors
    from adaptext.evaluation.report import write_report  # matplotlib is loaded only once training memory is freed

    process = process_state()
    if process.is_main_process:
        after_training(config, paths.model, splits)
        release_freed_memory()  # the model copies of calibration and the detector are freed: give their pages back
    process.wait_for_everyone()
    predictor = Predictor.from_dir(paths.model, batch_size=eval_batch_size(config.train))
    data = splits.evaluation
    # Without a test file or held-out validation (a true few-shot run), the only scores are on the training examples:
    # they are reported, and named, as such.
    split = "test" if splits.test is not None else "validation" if splits.validation_held_out else "train"
    probs = predictor.predict_proba(data.texts, data.pairs)
    report = evaluate_data(predictor, data, probs)
    stats = run_stats(config, paths, state, splits)
    if process.is_main_process:  # every process evaluates; one writes
        write_json(paths.root / STATS_FILE, stats)
        errors = []
        if config.train.report_errors:
            validation = splits.validation
            if split != "validation":
                probs = predictor.predict_proba(validation.texts, validation.pairs)
            errors = explained_errors(predictor, validation, probs, config.train.report_errors)
        write_report(
            report,
            paths.root,
            history=read_train_log(paths.log),
            title=f"{config.model.name} on {split}: {data.source}",
            run_info=stats,
            errors=errors,
            errors_source=f"the validation split ({splits.validation.source})",
            sections=[*calibration_section(predictor, split), *(sections(predictor) if sections is not None else ())],
        )
    logger.info("%s %s", split, headline(report.metrics))
    return TrainResult(
        run_dir=paths.root,
        model_dir=paths.model,
        best_step=state.best_step,
        best_metric=float(state.best_metric if state.best_metric is not None else float("nan")),
        global_step=state.global_step,
        stopped_early=state.stopped_early,
        metrics=report.metrics,
        eval_split=split,
        history=state.history,
        stats=stats,
    )


def headline(metrics: dict[str, float]) -> str:
    """The one line that sums up an evaluation: accuracy and macro-F1, or for regression MSE and correlations."""
    if "mse" in metrics:
        return (
            f"mse {metrics['mse']:.4f}, pearson {metrics.get('pearson', float('nan')):.4f}, "
            f"spearman {metrics.get('spearman', float('nan')):.4f}"
        )
    return f"accuracy {metrics['accuracy']:.4f}, macro_f1 {metrics.get('macro_f1', float('nan')):.4f}"


def after_training(config: Config, model_dir: Path, splits: Splits) -> None:
    """The post-hoc steps on the saved model, each recorded in its folder: the softmax temperature fitted on
    validation (`calibrate`), then the out-of-scope detector (`ood`), which reads the calibrated probabilities."""
    from adaptext.evaluation.calibration import calibrate_saved
    from adaptext.evaluation.detectors import fit_saved

    batch_size = eval_batch_size(config.train)
    if config.calibrate and not config.data.multi_label and config.data.problem != "regression":
        calibrate_saved(model_dir, splits.validation, batch_size)
    if config.ood.method != "none":
        fit_saved(model_dir, splits.train, splits.validation, config.ood, batch_size)


def calibration_section(predictor: Predictor, split: str) -> list[tuple[str, str]]:
    """The report's calibration summary: the temperature and the validation ECE before and after it."""
    record = predictor.info.calibration
    if not record:
        return []
    body = (
        f"<p>Temperature scaling: the probabilities are softmax(logits / {record['temperature']:.3g}), fitted on "
        f"{record['n']} validation texts. Validation ECE {100 * record['ece_before']:.2f}% before, "
        f"{100 * record['ece_after']:.2f}% after; negative log-likelihood {record['nll_before']:.4f} before, "
        f"{record['nll_after']:.4f} after. The summary above and the reliability diagram below are on the {split} "
        "split, with the temperature applied"
        f"{' (the same texts it was fitted on)' if split == 'validation' else ''}.</p>"
    )
    return [("Calibration", body)]


def run_stats(config: Config, paths: RunPaths, state: TrainingState, splits: Splits | None = None) -> dict[str, Any]:
    """What the run cost: parameters trained, size on disk of what it saved, and peak memory of the process;
    with `splits`, also how many validation/test examples are exact duplicates of training texts."""
    stats: dict[str, Any] = {
        "strategy": config.strategy,
        "method": config.peft.method,
        "trainable_parameters": state.trainable_parameters,
        "total_parameters": state.total_parameters,
        "trainable_percent": round(100 * state.trainable_parameters / max(state.total_parameters, 1), 4),
        "model_size_bytes": adapter_size_bytes(paths.model),
        # ru_maxrss is in KiB on Linux: the peak resident memory of this process so far.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_seconds": round(state.train_seconds, 2),
    }
    if torch.cuda.is_available():
        stats["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if splits is not None:
        for name, count in splits.in_train.items():
            stats[f"{name}_duplicates_of_train"] = count
    return stats
