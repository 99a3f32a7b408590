"""`adaptext tune`: an optuna study of tiny training runs, its reports, resuming, pruning, errors and workers."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.run import read_train_log
from adaptext.training.state import TrainingState
from adaptext.tuning import tune
from adaptext.tuning.pruning import FINAL, REDUCTION, TrialPruning, rung_steps
from adaptext.tuning.space import build_space, suggest
from adaptext.tuning.study import build_pruner

FAST = ("train.max_steps=4", "tune.pruner=none")


def read_trials(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_yaml(path: Path, config: Config, **changes: Any) -> Path:
    tree = config.model_dump(mode="json") | changes
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_a_study_writes_its_reports_and_continues_where_it_stopped(
    tiny_config: Callable[..., Config], tmp_path: Path
) -> None:
    root = tmp_path / "tune"
    config = tiny_config(*FAST, f"output_dir={root}")
    result = tune(config, trials=3)

    rows = read_trials(root)
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"complete"}
    # The config sets learning rate, batch size and max_steps: of the default space, these two are left to search.
    assert {k for k in rows[0] if "." in k} == {"train.warmup_ratio", "train.weight_decay"}
    assert all(int(r["steps"]) == 4 for r in rows)
    best = max(float(r["value"]) for r in rows)
    summary = json.loads((root / "tune.json").read_text(encoding="utf-8"))
    assert summary["best_value"] == pytest.approx(best) == result.best_value
    assert summary["trials"] == {"complete": 3} and summary["steps_trained"] == 12
    best_row = next(r for r in rows if float(r["value"]) == best)
    assert summary["best_trial"] == int(best_row["number"])
    for number in range(3):  # each trial is an ordinary run folder, marked with its outcome
        trial = root / "trials" / f"trial_{number:04d}"
        assert (trial / "model").is_dir() and (trial / "metrics.json").is_file()
        assert json.loads((trial / "trial.json").read_text(encoding="utf-8"))["state"] == "complete"

    best_config = load_config(root / "best_config.yaml")
    assert best_config.output_dir == root / "best"
    assert best_config.train.warmup_ratio == pytest.approx(float(best_row["train.warmup_ratio"]))
    assert best_config.train.weight_decay == pytest.approx(float(best_row["train.weight_decay"]))
    assert best_config.train.learning_rate == config.train.learning_rate  # fixed by the config
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (root / "plots" / f"{name}.png").stat().st_size > 1000, name
        assert (root / "plots" / f"{name}.html").is_file(), name
    assert (root / "plots" / "plotly.min.js").stat().st_size > 100_000  # the pages open offline

    # A process killed mid-trial leaves it running in the storage: the next run marks it failed, not counted.
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{root / 'study.db'}")
    study.ask()
    result = tune(config, trials=4)
    rows = read_trials(root)
    assert [r["state"] for r in rows] == ["complete", "complete", "complete", "fail", "complete"]
    assert sorted(p.name for p in (root / "trials").iterdir()) == [f"trial_{n:04d}" for n in (0, 1, 2, 4)]
    assert result.trials == {"complete": 4, "fail": 1}
    # Asked again for 4, the study is done: no trial runs.
    assert tune(config, trials=4).trials == {"complete": 4, "fail": 1}


class FakeTrial:
    def __init__(self, prune: bool) -> None:
        self.prune = prune
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


def test_the_pruning_callback_reports_at_its_rungs_and_raises_when_told() -> None:
    kept = TrialPruning(FakeTrial(prune=False), "macro_f1")
    kept.on_train_begin(TrainingState(total_steps=27), model=None)
    # It asks for evaluations after a ninth, a third and all of the 27 steps, and for none between.
    assert [s for s in range(1, 28) if kept.wants_evaluation(TrainingState(global_step=s, total_steps=27))] == [
        3,
        9,
        27,
    ]
    for step in range(1, 28):  # an evaluation every step: one report per rung, numbered by the training it stands for
        kept.on_evaluate({"step": step, "eval_macro_f1": step / 100, "eval_accuracy": 0.0})
    assert kept.trial.reports == [(0.03, 1), (0.09, 3), (0.27, FINAL)] and FINAL == 9
    assert kept.evaluations == 27

    short = TrialPruning(FakeTrial(prune=False), "macro_f1")
    short.on_train_begin(TrainingState(total_steps=8), model=None)  # rungs at the first step past 8/9 and 8/3
    assert rung_steps(8) == [1, 3, 8]

    pruned = TrialPruning(FakeTrial(prune=True), "macro_f1")
    pruned.on_train_begin(TrainingState(total_steps=18), model=None)
    pruned.on_evaluate({"step": 1, "eval_macro_f1": 0.1})  # before the first rung: nothing to report
    assert pruned.trial.reports == []
    with pytest.raises(optuna.TrialPruned):
        pruned.on_evaluate({"step": 2, "eval_macro_f1": 0.3})
    assert pruned.steps == 2 and pruned.last_value == 0.3

    last = TrialPruning(FakeTrial(prune=True), "macro_f1")
    last.on_train_begin(TrainingState(total_steps=8), model=None)
    last.on_evaluate({"step": 8, "eval_macro_f1": 0.5})  # the end of training: the trial is complete, not pruned
    assert last.trial.reports == [(0.5, FINAL)]


@pytest.mark.parametrize("pruner", ["median", "percentile", "successive_halving"])  # hyperband: hashed brackets
def test_each_pruner_acts_at_the_first_rung(tiny_config: Callable[..., Config], pruner: str) -> None:
    # Trials that score well at every rung complete; then one far behind at the first rung (a ninth) is stopped there.
    tune_section = tiny_config(f"tune.pruner={pruner}").tune
    study = optuna.create_study(direction="maximize", pruner=build_pruner(tune_section.pruner, tune_section.percentile))
    for _ in range(4):
        trial = study.ask()
        for number in (1, REDUCTION):  # asked at each rung, as TrialPruning does (successive halving notes it)
            trial.report(0.9, number)
            assert not trial.should_prune()
        trial.report(0.9, FINAL)
        study.tell(trial, 0.9)
    late = study.ask()
    late.report(0.1, 1)
    assert late.should_prune()
    study.tell(late, state=optuna.trial.TrialState.PRUNED)
    none = optuna.create_study(direction="maximize", pruner=build_pruner(tiny_config("tune.pruner=none").tune.pruner))
    trial = none.ask()
    trial.report(0.1, 1)
    assert not trial.should_prune()


def test_hyperband_brackets_stop_at_a_ninth_a_third_or_never(tiny_config: Callable[..., Config]) -> None:
    # Trials go to brackets by a hash of the study's name and their number (fixed here); each bracket's successive
    # halving has its own first rung. Trials far behind the complete ones show all three on the reports.
    study = optuna.create_study(
        direction="maximize", pruner=build_pruner(tiny_config("tune.pruner=hyperband").tune.pruner), study_name="hb"
    )
    for score in [0.9] * 12 + [0.1] * 12:
        trial, stopped = study.ask(), None
        for number in (1, REDUCTION):
            trial.report(score, number)
            if trial.should_prune():
                stopped = number
                break
        if stopped is None:
            trial.report(score, FINAL)
            study.tell(trial, score)
        else:
            assert score == 0.1  # a good trial is never stopped
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            assert trial.number >= 12
    stops = [t.intermediate_values for t in study.trials[12:] if t.state == optuna.trial.TrialState.PRUNED]
    assert {max(values) for values in stops} == {1, REDUCTION}  # stopped at a ninth and at a third
    assert len(stops) < 12  # and one bracket never stops a trial


@pytest.mark.parametrize(("percentile", "stops"), [(75.0, False), (50.0, True)])
def test_the_percentile_pruner_stops_only_below_its_share(
    tiny_config: Callable[..., Config], percentile: float, stops: bool
) -> None:
    # Complete trials scored 0.6, 0.7, 0.8, 0.9 at the first rung: 0.72 is below their median (0.75) but above their
    # bottom quarter (0.675), so it goes on when three quarters go on and stops when half of them do.
    tune_section = tiny_config("tune.pruner=percentile", f"tune.percentile={percentile}").tune
    study = optuna.create_study(direction="maximize", pruner=build_pruner(tune_section.pruner, tune_section.percentile))
    for score in (0.6, 0.7, 0.8, 0.9):
        trial = study.ask()
        for number in (1, REDUCTION, FINAL):
            trial.report(score, number)
        study.tell(trial, score)
    late = study.ask()
    late.report(0.72, 1)
    assert bool(late.should_prune()) is stops


def test_a_percentile_out_of_range_is_refused(tiny_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"tune\.percentile"):
        tiny_config("tune.pruner=percentile", "tune.percentile=0")


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_pruned_trial_stops_early_and_keeps_its_folder(
    tiny_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adaptext.tuning.study.build_pruner", lambda *_: AlwaysPrune())
    root = tmp_path / "tune"
    # No train.eval_steps: the trial's callback asks the engine to evaluate at its first rung, 18 / 9 = 2 steps.
    result = tune(tiny_config("train.max_steps=18", f"output_dir={root}"), trials=1)
    [row] = read_trials(root)
    assert row["state"] == "pruned" and row["steps"] == "2" and row["evaluations"] == "1" and row["value"]
    record = json.loads((root / "trials" / "trial_0000" / "trial.json").read_text(encoding="utf-8"))
    assert record["state"] == "pruned" and record["steps"] == 2 and record["evaluations"] == 1
    assert result.trials == {"pruned": 1} and result.best_config is None
    assert not (root / "best_config.yaml").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.space={train.lerning_rate: {type: float, low: 0.1, high: 0.2}}"], "train.lerning_rate: unknown key"),
        (["tune.space={train.batch_size: {type: float, low: 1.5, high: 8}}"], "train.batch_size"),
        (["tune.space={train.batch_size: {type: int, low: 8}}"], "tune.space.train.batch_size: type int needs low"),
        (["tune.space={train: {type: fixed, value: 3}}"], "tune.space.train: is a config section"),
        (["tune.space={output_dir: {type: fixed, value: x}}"], "tune.space.output_dir: this key cannot be tuned"),
        (["tune.space={train.epochs: {type: categorical, choices: [1, 2], bad: 1}}"], "tune.space.train.epochs: bad"),
        (["strategy=fewshot", "tune.space={train.learning_rate: {type: fixed, value: 0.1}}"], "does not use"),
        (["tune.metric=f2"], "tune.metric: 'f2' is not a metric"),
    ],
)
def test_a_bad_search_space_is_a_one_line_error_before_any_trial(
    tiny_config: Callable[..., Config], tmp_path: Path, overrides: list[str], message: str
) -> None:
    root = tmp_path / "tune"
    config = tiny_config(*FAST, f"output_dir={root}", *overrides)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        tune(config, trials=1)
    assert "\n" not in str(error.value)
    assert not root.exists()


def test_a_conditional_key_is_drawn_only_in_trials_that_meet_its_condition(
    tiny_config: Callable[..., Config],
) -> None:
    space = build_space(tiny_config("strategy=fewshot"))
    assert space.searched["fewshot.per_class"].when == {"fewshot.encoder": ["contrastive"]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [suggest(study.ask(), space) for _ in range(40)]
    encoders = {params["fewshot.encoder"] for params in drawn}
    assert encoders == {"contrastive", "finetune"}
    for params in drawn:
        assert ("fewshot.per_class" in params) == (params["fewshot.encoder"] == "contrastive"), params

    # Configured: finetune never meets the condition (the key is not searched), contrastive always does.
    finetune = build_space(tiny_config("strategy=fewshot", "fewshot.encoder=finetune"))
    assert "fewshot.per_class" not in finetune.searched and finetune.unused == ("fewshot.per_class",)
    assert "not searched (their `when` is never met) fewshot.per_class" in finetune.describe()
    contrastive = build_space(tiny_config("strategy=fewshot", "fewshot.encoder=contrastive"))
    assert all("fewshot.per_class" in suggest(study.ask(), contrastive) for _ in range(5))
    # A pinned value counts as configured; a user's own entry may carry a condition.
    pinned = build_space(
        tiny_config(
            "strategy=fewshot",
            "tune.space={fewshot.encoder: {type: fixed, value: finetune}, "
            "fewshot.head_c: {type: float, low: 0.1, high: 1, when: {fewshot.encoder: [finetune]}}}",
        )
    )
    fresh = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert pinned.unused == ("fewshot.per_class",) and "fewshot.head_c" in suggest(fresh.ask(), pinned)
    # A condition on a conditional key: where per_class is not drawn it has its configured value (4).
    chained = build_space(
        tiny_config(
            "strategy=fewshot",
            "tune.space={fewshot.head_c: {type: float, low: 0.1, high: 1, when: {fewshot.per_class: [4]}}}",
        )
    )
    other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for params in (suggest(other.ask(), chained) for _ in range(40)):
        assert ("fewshot.head_c" in params) == (params.get("fewshot.per_class", 4) == 4), params


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("{train.epochs: {type: int, low: 1, high: 2, when: {train.nope: [1]}}}", "when names train.nope: unknown"),
        (
            "{train.warmup_ratio: {type: float, low: 0, high: 0.1, when: {train.epochs: [1]}}, "
            "train.epochs: {type: int, low: 1, high: 2}}",
            "when names train.epochs, which is searched after it",
        ),
        ("{train.epochs: {type: fixed, value: 1, when: {train.batch_size: [8]}}}", "a fixed entry is always pinned"),
        ("{train.epochs: {type: int, low: 1, high: 2, when: {}}}", "when needs at least one key"),
    ],
)
def test_a_bad_condition_is_refused_before_any_trial(
    tiny_config: Callable[..., Config], entries: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_space(tiny_config(f"tune.space={entries}"))


def test_a_fewshot_study_without_held_out_validation_is_refused(
    tiny_model_dir: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    """A few-shot run holds nothing out by default, so its trials would be scored on their own training examples."""
    root = tmp_path / "tune"
    overrides = ["strategy=fewshot", f"model.name={tiny_model_dir}", f"data.train={data_files['train']}"]
    config = load_config(None, [*overrides, f"output_dir={root}"])
    with pytest.raises(ConfigError, match="strategy fewshot holds none out by default"):
        tune(config, trials=1)
    assert not root.exists()


def test_no_validation_data_is_refused(tmp_path: Path) -> None:
    config = load_config(None, ["strategy=zeroshot", "zeroshot.labels=[a, b]", f"output_dir={tmp_path / 't'}"])
    with pytest.raises(ConfigError, match=r"data\.validation"):
        tune(config, trials=1)


def test_the_command_runs_a_study_and_its_best_config_trains(
    tiny_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tune"
    path = write_yaml(tmp_path / "base.yaml", tiny_config(*FAST))
    space = "tune.space={train.learning_rate: {type: float, low: 1e-4, high: 3e-3, log: true}}"
    assert main(["tune", str(path), "--trials", "2", f"output_dir={root}", space]) == 0
    out = capsys.readouterr().out
    assert f"best config: {root / 'best_config.yaml'}" in out and "2 complete" in out
    rows = read_trials(root)
    assert len(rows) == 2 and {k for k in rows[0] if "." in k} == {"train.learning_rate"}

    # The best config is a ready-to-run training config, and trained alone it gives the best trial's value again (its
    # rung evaluations did not choose its model).
    assert main(["-q", "train", str(root / "best_config.yaml")]) == 0
    assert (root / "best" / "model").is_dir()
    best_value = json.loads((root / "tune.json").read_text(encoding="utf-8"))["best_value"]
    metric = tiny_config().train.metric_for_best
    scores = [r[f"eval_{metric}"] for r in read_train_log(root / "best" / "train_log.jsonl") if f"eval_{metric}" in r]
    assert max(scores) == best_value

    # Another config in the same folder is refused; --overwrite starts the study over.
    args = ["-q", "tune", str(path), "--trials", "1", f"output_dir={root}", space]
    assert main([*args, "train.max_steps=3"]) == EXIT_USER_ERROR
    assert "holds a study of another config (train.max_steps: 4 -> 3)" in capsys.readouterr().err
    assert main([*args, "train.max_steps=3", "--overwrite"]) == 0
    assert len(read_trials(root)) == 1 and len(list((root / "trials").iterdir())) == 1

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep", encoding="utf-8")
    assert main(["-q", "tune", str(path), "--trials", "1", f"output_dir={user}", space]) == EXIT_USER_ERROR
    assert "not a folder adaptext wrote" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_two_worker_processes_share_the_study(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    root = tmp_path / "tune"
    result = tune(tiny_config(*FAST, f"output_dir={root}"), trials=2, jobs=2)
    rows = read_trials(root)
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert rows[0]["train.weight_decay"] != rows[1]["train.weight_decay"]  # each worker draws its own
    assert result.trials == {"complete": 2}


MEMORY_SCRIPT = """
import json, resource, sys
import torch
from transformers import BertConfig, BertModel
from adaptext.core.config import load_config
import adaptext.tuning.study as study

torch.set_num_threads(1)
tiny, out, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
# A model big enough that keeping one per trial shows: about 4.7M parameters (19 MB, 75 MB with Adam's state).
config = BertConfig.from_pretrained(tiny)
config.hidden_size, config.intermediate_size, config.num_attention_heads = 256, 4096, 4
BertModel(config).save_pretrained(out + "/model")
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(tiny).save_pretrained(out + "/model")
peaks = []
train = study.train
def measured(*args, **kwargs):
    result = train(*args, **kwargs)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result
study.train = measured
base = [f"model.name={out}/model", f"data.train={data['train']}", f"data.validation={data['validation']}",
        f"output_dir={out}/tune", "train.max_steps=3", "train.batch_size=8", "data.max_length=32",
        "train.precision=fp32", "tune.pruner=none", "tracking.backend=none"]
study.tune(load_config(None, base), trials=5)
print(json.dumps(peaks))
"""


def test_memory_stays_flat_across_trials(tiny_model_dir: Path, data_files: dict[str, Path], tmp_path: Path) -> None:
    # A fresh process: the peak resident memory of this test session would hide any growth.
    data = json.dumps({k: str(v) for k, v in data_files.items()})
    script = textwrap.dedent(MEMORY_SCRIPT)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tiny_model_dir), str(tmp_path), data],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(peaks) == 5
    # Keeping one trial's model alone would add 19 MB a trial, 57 MB from trial 2 to trial 5.
    assert peaks[4] - peaks[1] < 25, peaks


def test_trials_nest_under_the_study_mlflow_run(
    tiny_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artefacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # not mlflow.set_tracking_uri: it would outlive the test
    config = tiny_config(
        *FAST, f"output_dir={tmp_path / 'tune'}", "tracking.backend=mlflow", "tracking.log_model=false"
    )
    result = tune(config, trials=2)
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("adaptext")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert parent.data.metrics["best_macro_f1"] == pytest.approx(result.best_value)


def test_an_existing_run_folder_is_not_a_tune_folder(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".adaptext").write_text(json.dumps({"kind": "run", "format": 1}), encoding="utf-8")
    (run / "config.yaml").write_text("{}", encoding="utf-8")
    with pytest.raises(AdaptextError, match="training run folder, not an adaptext tuning study folder"):
        tune(tiny_config(*FAST, f"output_dir={run}"), trials=1)
