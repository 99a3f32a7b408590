"""MLflow tracking (`tracking.backend=mlflow`): what a run logs, the pyfunc model it logs, failed and nested runs,
and the default `./mlruns` store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from adaptext.core.config import Config, load_config
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from adaptext.training.callbacks import CALLBACKS, Callback
from adaptext.training.state import TrainResult
from adaptext.training.tracking import RUN_DIR_TAG, MLflowTracker, end_status, flat_params
from conftest import LABELS, read_log, write_splits

TEXTS = ["my invoice shows a double charge", "the courier lost my parcel", "login error on the screen", "help"]


def finetune_overrides(model_dir: Path, files: dict[str, Path], output_dir: Path) -> list[str]:
    return [
        f"model.name={model_dir}",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        f"data.test={files['test']}",
        f"output_dir={output_dir}",
        "data.max_length=32",
        "train.batch_size=8",
        "train.max_steps=12",
        "train.eval_steps=6",
        "train.learning_rate=1e-3",
        "train.precision=fp32",
        "seed=7",
        "tracking.backend=mlflow",
    ]


def only_run(store: str, experiment: str) -> Any:
    """The one MLflow run of `experiment` in the store `store`."""
    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {store}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def tracked(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TrainResult, Any, str]]:
    """A finetune run tracked in a temporary sqlite store: its result, its MLflow run and the store's URI."""
    folder = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        patch.chdir(folder)  # MLflow keeps a sqlite store's artifacts in ./mlruns
        patch.setattr("adaptext.training.engine.LOG_EVERY", 4)  # training records at steps 4, 8 and 12
        files = write_splits(folder, train=60, validation=15, test=15)
        config = load_config(
            None, [*finetune_overrides(tiny_model_dir, files, folder / "run"), "tracking.experiment=t"]
        )
        result = train(config)
        yield result, only_run(store, "t"), store


@pytest.fixture
def tracked_config(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Config]:
    """A tracked finetune config (experiment `t`, no model logged) whose store is `tmp_path/mlflow.db`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    files = write_splits(tmp_path, train=40, validation=10, test=10)

    def make(*overrides: str) -> Config:
        base = finetune_overrides(tiny_model_dir, files, tmp_path / "run")
        return load_config(None, [*base, "tracking.experiment=t", "tracking.log_model=false", *overrides])

    return make


def test_the_run_logs_its_config_as_flat_params(tracked: tuple[TrainResult, Any, str], tiny_model_dir: Path) -> None:
    result, run, _ = tracked
    params = run.data.params
    assert params["train.batch_size"] == "8"
    assert params["train.max_steps"] == "12"
    assert params["model.name"] == str(tiny_model_dir)
    assert params["tracking.backend"] == "mlflow"
    assert params["data.text_pair_column"] == "null"  # as YAML reads it back in a `key=value` override
    assert params["peft.options"] == "{}"
    assert run.info.run_name == "run"  # the run folder's name
    assert run.data.tags[RUN_DIR_TAG] == str(result.run_dir.resolve())
    assert run.info.status == "FINISHED"


def test_the_run_logs_every_training_and_validation_record(tracked: tuple[TrainResult, Any, str]) -> None:
    result, run, store = tracked
    client = MlflowClient(store)
    records = read_log(result.run_dir)
    train_records = [r for r in records if "loss" in r]
    eval_records = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in train_records] == [4, 8, 12]
    assert len(eval_records) >= 2  # every 6 steps, and at the end of each epoch
    for name, wanted in (("loss", train_records), ("learning_rate", train_records), ("eval_macro_f1", eval_records)):
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [r["step"] for r in wanted], name
        assert [m.value for m in history] == pytest.approx([r[name] for r in wanted]), name
    assert "samples_per_second" in run.data.metrics
    assert "step" not in run.data.metrics


def test_the_run_logs_final_metrics_stats_and_report(tracked: tuple[TrainResult, Any, str]) -> None:
    result, run, store = tracked
    metrics = run.data.metrics
    assert result.eval_split == "test"
    assert metrics["test_accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert metrics["test_macro_f1"] == pytest.approx(result.metrics["macro_f1"])
    assert metrics["trainable_parameters"] == result.stats["trainable_parameters"]
    assert metrics["train_seconds"] == pytest.approx(result.stats["train_seconds"])
    names = {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)}
    assert {"report.html", "metrics.json", "run_stats.json", "train_log.jsonl", "config.yaml"} <= names
    plots = {path.name for path in result.run_dir.glob("*.png")}
    assert plots and plots <= names
    assert not (result.run_dir / "tensorboard").exists()  # one backend: MLflow instead of TensorBoard


def test_the_logged_model_predicts_what_the_run_folder_predicts(tracked: tuple[TrainResult, Any, str]) -> None:
    result, run, _ = tracked
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [(m.name, m.source_run_id) for m in models] == [("model", run.info.run_id)]
    expected = Predictor.from_dir(result.model_dir).predict(TEXTS)
    for uri in (f"models:/{models[0].model_id}", f"runs:/{run.info.run_id}/model"):
        logged = mlflow.pyfunc.load_model(uri)
        answer = logged.predict(pd.DataFrame({"text": TEXTS}))
        assert list(answer.columns) == ["label", "score"]
        assert answer["label"].tolist() == [p.label for p in expected]
        assert answer["score"].tolist() == pytest.approx([p.score for p in expected], abs=1e-5)
        assert set(answer["label"]) <= set(LABELS)
    assert logged.predict(pd.Series(TEXTS))["label"].tolist() == [p.label for p in expected]
    assert logged.predict(TEXTS)["label"].tolist() == [p.label for p in expected]


class CrashError(Exception):
    pass


class TrialPruned(Exception):  # noqa: N818  (optuna's name: the tracker matches it by name)
    pass


class RaiseAt(Callback):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def on_step_end(self, state: Any) -> None:
        if state.global_step == 2:
            raise self.error


@pytest.mark.parametrize(("error", "status"), [(CrashError("boom"), "FAILED"), (TrialPruned("pruned"), "KILLED")])
def test_a_run_that_stops_ends_its_mlflow_run(
    tracked_config: Callable[..., Config], tmp_path: Path, error: Exception, status: str
) -> None:
    with pytest.raises(type(error)):
        train(tracked_config(), callbacks=[RaiseAt(error)])
    run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "t")
    assert run.info.status == status
    assert mlflow.active_run() is None


def test_end_status_names_interruptions_killed() -> None:
    assert end_status(KeyboardInterrupt()) == "KILLED"
    assert end_status(TrialPruned()) == "KILLED"
    assert end_status(RuntimeError()) == "FAILED"


def test_a_run_inside_an_active_mlflow_run_is_nested_under_it(
    tracked_config: Callable[..., Config], tmp_path: Path
) -> None:
    with mlflow.start_run(run_name="parent") as parent:
        train(tracked_config())
        active = mlflow.active_run()
        assert active is not None and active.info.run_id == parent.info.run_id  # the parent stays open
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = client.search_runs([parent.info.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    assert len(children) == 1
    assert children[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert children[0].info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_backend_none_writes_no_tensorboard_events_and_no_mlflow_run(
    tracked_config: Callable[..., Config], tmp_path: Path
) -> None:
    result = train(tracked_config("tracking.backend=none"))
    assert (result.run_dir / "report.html").is_file()
    assert not (result.run_dir / "tensorboard").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.fixture
def no_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    yield
    mlflow.set_tracking_uri(None)  # the tracker chose the default store for the whole process


def test_a_zeroshot_run_goes_to_a_local_mlruns_store_by_default(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tracking_uri: None, capfd: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    files = write_splits(tmp_path, train=0, validation=10, test=10)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.validation={files['validation']}",
            f"data.test={files['test']}",
            f"output_dir={tmp_path / 'zs'}",
            "data.max_length=32",
            "strategy=zeroshot",
            "tracking.backend=mlflow",
            "zeroshot.labels=[billing, shipping, technical]",
            "tracking.run_name=zero",
            "tracking.log_model=false",
        ],
    )
    result = train(config)  # no training: the run starts at the model's save
    store = tmp_path / "mlruns" / "mlflow.db"
    assert store.is_file()
    run = only_run(f"sqlite:///{store}", "adaptext")
    assert run.info.run_name == "zero" and run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "mlruns")
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "report.html").is_file()
    out, err = capfd.readouterr()
    assert "Creating initial MLflow database tables" not in out + err  # MLflow's own INFO lines stay quiet


def test_flat_params_are_yaml_values_cut_to_the_limit() -> None:
    tree = {"seed": 7, "train": {"learning_rate": 0.001, "epochs": None, "fp": True}, "tune": {"space": {"a": 1}}}
    tree["data"] = {"text_column": "x" * 50}
    params = flat_params(tree, limit=20)
    assert params["seed"] == "7"
    assert params["train.learning_rate"] == "0.001"
    assert params["train.epochs"] == "null" and params["train.fp"] == "true"
    assert json.loads(params["tune.space"]) == {"a": 1}
    assert params["data.text_column"] == "x" * 17 + "..."


def test_mlflow_is_registered_and_loaded_only_when_a_tracker_is_built() -> None:
    assert CALLBACKS.get("mlflow") is MLflowTracker
    code = "import sys, adaptext.training.tracking; print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
