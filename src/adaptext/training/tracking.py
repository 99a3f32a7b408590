"""Experiment tracking with MLflow: the `mlflow` callback (`tracking.backend: mlflow`).

Importing this module registers the callback and stays cheap; mlflow itself is imported when a tracker is built.
A run's MLflow run holds the flat config as params, the training and validation records as metrics (at their
steps), the final metrics and run statistics, the run folder's report files, and the saved model as an MLflow
pyfunc model that predicts through `Predictor`. See docs/tracking.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from adaptext.core.config import build_config
from adaptext.core.errors import require_extra
from adaptext.core.run import RunPaths
from adaptext.training.callbacks import CALLBACKS, Callback
from adaptext.training.state import STATS_FILE, TrainResult

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "adaptext"
DEFAULT_STORE = Path("mlruns")  # relative to the working directory, like MLflow's own default
MODEL_NAME = "model"
RUN_DIR_TAG = "adaptext.run_dir"
# What the run folder holds besides the model: the report and the records it is made from.
REPORT_FILES = (
    "report.html",
    "metrics.json",
    "per_class.csv",
    STATS_FILE,
    "train_log.jsonl",
    "config.yaml",
    "labels.json",
    "env.json",
)
# Exceptions that stop a run on purpose: the MLflow run ends KILLED rather than FAILED. Matched by class name, so
# that optuna need not be imported.
STOPPED_ON_PURPOSE = frozenset({"KeyboardInterrupt", "TrialPruned"})
# Models from code (MLflow's recommended form): this file is stored with the model and run when it is loaded.
PYFUNC_CODE = """\
from mlflow.models import set_model

from adaptext.training.tracking import pyfunc_model

set_model(pyfunc_model())
"""


def use_default_store() -> str:
    """Use a local `./mlruns` store unless a tracking URI was chosen (`MLFLOW_TRACKING_URI`, or
    `mlflow.set_tracking_uri`); returns the tracking URI in use.

    The store is `sqlite:///<cwd>/mlruns/mlflow.db` with artifacts beside it in `./mlruns`: MLflow 3 refuses
    the plain file store unless `MLFLOW_ALLOW_FILE_STORE=true`.
    """
    import mlflow

    if not mlflow.is_tracking_uri_set():
        store = DEFAULT_STORE.absolute()
        store.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    return str(mlflow.get_tracking_uri())


def experiment_id(name: str | None) -> str:
    """The id of the MLflow experiment `name`, else `MLFLOW_EXPERIMENT_NAME`, else `adaptext`; created when new.

    Looked up by name rather than with `mlflow.set_experiment`, which would change the active experiment of a
    program that uses MLflow around adaptext.
    """
    import mlflow

    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except mlflow.exceptions.MlflowException:  # another process created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def flat_params(tree: dict[str, Any], limit: int) -> dict[str, str]:
    """The config tree as MLflow params: `section.key` -> the value as YAML would read it back, cut to `limit`.

    Sections are flattened one level; a value that is itself a mapping or list (`peft.options`, `tune.space`)
    stays one JSON param, since its keys are user data that MLflow may not accept as param names.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    params = {}
    for key, value in flat.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        params[key] = text if len(text) <= limit else text[: limit - 3] + "..."
    return params


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of `values` (bools and strings left out) as floats, names prefixed by `prefix`."""
    return {
        f"{prefix}{key}": float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def end_status(error: BaseException) -> str:
    """The MLflow run status of a run stopped by `error`: KILLED when it was stopped on purpose, else FAILED."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return "KILLED" if names & STOPPED_ON_PURPOSE else "FAILED"


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO chatter (store creation, new experiments, run links) kept out of the user's console,
    unless `MLFLOW_LOGGING_LEVEL` asks for it."""
    if os.environ.get("MLFLOW_LOGGING_LEVEL"):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the "🏃 View run ... at" links of a tracking server
            yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


@CALLBACKS.register("mlflow")
class MLflowTracker(Callback):
    """Params, metrics, report and model of a run in an MLflow run, started when the tracker is built.

    >>> train(load_config("configs/quickstart.yaml", ["tracking.backend=mlflow"]))  # doctest: +SKIP
    """

    def __init__(self, paths: RunPaths) -> None:
        # MLflow's artefact progress bars ("Downloading artifacts" as it logs the model) stay off unless asked for.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        require_extra("mlflow", "tracking.backend=mlflow")
        import mlflow  # only here: `adaptext --help` and runs without MLflow never load it

        self.mlflow = mlflow
        self.paths = paths
        self.tree: dict[str, Any] = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
        self.settings = build_config(self.tree, str(paths.config)).tracking
        # The run (store, experiment, params) is set up as the run lifecycle builds its callbacks, before the
        # training clock starts: the loop itself then only queues metrics (bench/tracking_hooks.py).
        self.run_id = self.start()

    def start(self) -> str:
        """Start the MLflow run (nested under an active one) and log the params; returns its id."""
        mlflow = self.mlflow
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        parent = mlflow.active_run()
        with quiet_mlflow():
            # A nested run lives in its parent's store and experiment, so that MLflow shows it under the parent.
            uri = mlflow.get_tracking_uri() if parent is not None else use_default_store()
            experiment_id = parent.info.experiment_id if parent is not None else self.experiment_id()
            run = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=self.settings.run_name or self.paths.root.name,
                nested=parent is not None,
                tags={RUN_DIR_TAG: str(self.paths.root.resolve())},
            )
            run_id = str(run.info.run_id)
            params = list(flat_params(self.tree, MAX_PARAM_VAL_LENGTH).items())
            for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
                mlflow.log_params(dict(params[start : start + MAX_PARAMS_TAGS_PER_BATCH]), run_id=run_id)
        logger.info("MLflow run %s (tracking URI %s)", run_id, uri)
        return run_id

    def experiment_id(self) -> str:
        """The id of the run's experiment (created when new)."""
        return experiment_id(self.settings.experiment)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # Asynchronous: a remote tracking server's round trip never holds up the training loop.
        if metrics:
            self.mlflow.log_metrics(metrics, step=step, synchronous=False, run_id=self.run_id)

    def on_log(self, record: dict[str, Any]) -> None:
        self.log_metrics(numeric({k: v for k, v in record.items() if k != "step"}), step=int(record["step"]))

    def on_evaluate(self, record: dict[str, Any]) -> None:
        self.log_metrics(numeric({k: v for k, v in record.items() if k.startswith("eval_")}), int(record["step"]))

    def on_run_end(self, result: TrainResult) -> None:
        run_id = self.run_id
        mlflow = self.mlflow
        with quiet_mlflow():
            final = numeric(result.metrics, prefix=f"{result.eval_split}_") | numeric(result.stats)
            mlflow.log_metrics(final, step=result.global_step, run_id=run_id)
            files = [result.run_dir / name for name in REPORT_FILES] + sorted(result.run_dir.glob("*.png"))
            for file in files:
                if file.is_file():
                    mlflow.log_artifact(str(file), run_id=run_id)
            if self.settings.log_model:
                self.log_model(result.model_dir)
            mlflow.flush_async_logging()
            self.end("FINISHED")

    def on_run_failed(self, error: BaseException) -> None:
        try:
            with quiet_mlflow():
                self.mlflow.flush_async_logging()
                self.end(end_status(error))
        except Exception:  # the run's own error is the one to raise
            logger.warning("could not mark MLflow run %s as ended", self.run_id, exc_info=True)

    def end(self, status: str) -> None:
        """End this run with `status`, leaving a parent run (or any run started after this one) open."""
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run(status=status)
        else:
            self.mlflow.MlflowClient().set_terminated(self.run_id, status=status)

    def log_model(self, model_dir: Path) -> str:
        """Log `model_dir` as an MLflow pyfunc model named `model`; returns its `models:/<model_id>` URI."""
        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        from adaptext.core.info import ModelInfo

        info = ModelInfo.read(model_dir)
        # One text: an unnamed string column, so a list of strings, a Series or a one-column DataFrame all pass
        # MLflow's schema check; a pair: the two named columns.
        columns = [info.text_column, info.text_pair_column] if info.text_pair_column else [None]
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", column) for column in columns]),
            outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
        )
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
            # Without an input example MLflow warns; an example would make it load and run the model once more.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            code = Path(scratch) / "adaptext_pyfunc.py"
            code.write_text(PYFUNC_CODE, encoding="utf-8")
            logged = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(code),
                artifacts={MODEL_NAME: str(model_dir)},
                signature=signature,
                # Given, so that MLflow does not load the model in a subprocess to guess them.
                pip_requirements=[f"adaptext=={metadata.version('adaptext')}"],
            )
        return str(logged.model_uri)


def pyfunc_model() -> Any:
    """The MLflow `PythonModel` of a logged adaptext model (built here so that importing this module stays cheap).

    It takes a DataFrame with the model's text column (and text-pair column), a Series or a list of strings,
    and returns a DataFrame with the predicted `label` and its `score` per row.
    """
    import pandas as pd
    from mlflow.pyfunc import PythonModel

    from adaptext.core.errors import AdaptextError
    from adaptext.inference.predictor import Predictor

    class AdaptextModel(PythonModel):
        def load_context(self, context: Any) -> None:
            self.predictor = Predictor.from_dir(context.artifacts[MODEL_NAME])

        def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
            texts, pairs = self.read_input(model_input)
            predictions = self.predictor.predict(texts, pairs)
            return pd.DataFrame({"label": [p.label for p in predictions], "score": [p.score for p in predictions]})

        # MLflow reads these hints (`get_type_hints`, in this module's namespace, where pandas is not imported) as
        # the class is made: DataFrames tell it, without a warning, to leave input checks to the logged signature.
        predict.__annotations__.update({"model_input": pd.DataFrame, "return": pd.DataFrame})

        def read_input(self, model_input: Any) -> tuple[list[str], list[str] | None]:
            info = self.predictor.info
            if isinstance(model_input, pd.DataFrame):
                column = info.text_column if info.text_column in model_input.columns else None
                if column is None and len(model_input.columns) == 1:
                    column = model_input.columns[0]
                if column is None:
                    raise AdaptextError(
                        f"the input has no text column {info.text_column!r}; columns: {list(model_input.columns)}"
                    )
                pair = info.text_pair_column
                pairs = model_input[pair].astype(str).tolist() if pair and pair in model_input.columns else None
                return model_input[column].astype(str).tolist(), pairs
            if isinstance(model_input, pd.Series):
                return model_input.astype(str).tolist(), None
            if isinstance(model_input, str):
                return [model_input], None
            return [str(text) for text in model_input], None

    return AdaptextModel()
