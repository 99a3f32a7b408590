"""Contract tests of training: the run folder, save/reload, learning, seeding, resuming and options."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from adaptext.core.config import Config, config_to_yaml, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.task import SINGLE_LABEL, task_for
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.hub import load_tokenizer
from adaptext.strategies import train
from adaptext.strategies.finetune import Finetune
from adaptext.strategies.finetune import classifier as finetune_classifier
from adaptext.training.callbacks import Callback
from adaptext.training.lifecycle import run_strategy
from adaptext.training.objectives import OBJECTIVES, CrossEntropy, class_weights
from adaptext.training.state import TrainResult
from conftest import (
    CHINESE_LABELS,
    FILLER,
    KEYWORDS,
    LABELS,
    LEARNABLE,
    SimulatedCrashError,
    folded_temperature,
    make_chinese_rows,
    make_pair_rows,
    make_rows,
    read_log,
    stop_at,
    write_splits,
)

PROBE_TEXTS = [
    "my invoice is wrong again",
    "where is my parcel today",
    "login error with the screen",
    "please help with the refund",
    "the courier did not arrive with my package",
    "why is my password an error again",
]
# Batches per epoch of the default 120-row training file at batch size 8.
BATCHES_PER_EPOCH = 15


def loss_records(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(run_dir) if "loss" in r]


def logits_of(run_dir: Path, texts: list[str] = PROBE_TEXTS) -> np.ndarray:
    return Predictor.from_dir(run_dir).predict_logits(texts)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ordinary 3-epoch run on the keyword task, with the model object captured at each save."""
    folder = tmp_path_factory.mktemp("trained")
    files = write_splits(folder)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={files['train']}",
            f"data.validation={files['validation']}",
            f"data.test={files['test']}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            *LEARNABLE,
            "train.precision=fp32",
            "seed=7",
        ],
    )
    saved: list[torch.nn.Module] = []

    class KeepSaved(Callback):
        def on_save(self, model: Any, target: Path) -> None:
            saved.append(copy.deepcopy(model).eval())

    result = train(config, callbacks=[KeepSaved()])
    return {"config": config, "result": result, "saved_models": saved, "files": files}


# (a) the run folder ---------------------------------------------------------------------------


def test_run_folder_holds_exactly_the_promised_files(trained: dict[str, Any]) -> None:
    result: TrainResult = trained["result"]
    run = result.run_dir
    assert result.model_dir == run / "model"
    assert {p.name for p in run.iterdir()} == {
        ".adaptext",
        "config.yaml",
        "labels.json",
        "metrics.json",
        "run_stats.json",
        "env.json",
        "train_log.jsonl",
        "tensorboard",
        "report.html",
        "per_class.csv",
        "confusion_matrix.png",
        "calibration.png",
        "training_curves.png",
        "model",
        "checkpoint",
    }  # in particular no *.tmp / *.old leftovers of the atomic writes

    assert load_config(run / "config.yaml") == trained["config"]
    assert json.loads((run / "labels.json").read_text(encoding="utf-8")) == LABELS

    stats = json.loads((run / "run_stats.json").read_text(encoding="utf-8"))
    assert stats == result.stats
    assert stats["method"] == "none"
    # full fine-tuning, but the rows of word embeddings no training text uses do not train (train.embedding_rows)
    assert 0.9 * stats["total_parameters"] < stats["trainable_parameters"] < stats["total_parameters"]
    assert stats["model_size_bytes"] >= 4 * stats["total_parameters"]  # fp32 weights
    assert stats["peak_rss_mb"] > 0

    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_examples"] == 30
    assert metrics == pytest.approx(result.metrics | {"n_examples": 30})
    for key in ("accuracy", "loss", "macro_f1", "micro_f1", "weighted_f1"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "loss" else 10.0)
    assert result.eval_split == "test"

    env = json.loads((run / "env.json").read_text(encoding="utf-8"))
    assert env["device"] == "cpu"
    assert env["precision"] == "no"
    assert "git_revision" in env
    assert env["git_revision"] is None or isinstance(env["git_revision"], str)
    for package in ("adaptext", "torch", "transformers", "accelerate", "tokenizers"):
        assert env["packages"][package], package
    assert env["packages"]["adaptext"] == "0.1.0"

    log = read_log(run)
    train_records = [r for r in log if "loss" in r]
    eval_records = [r for r in log if "eval_accuracy" in r]
    assert train_records, "no training loss records"
    assert [r["step"] for r in eval_records] == [30, 60, 90, 120, 150, 180]  # one evaluation per epoch
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] >= 0 for r in train_records)
    assert all("eval_loss" in r and "eval_macro_f1" in r for r in eval_records)
    assert train_records[-1]["step"] == result.global_step == 180  # 6 epochs of 120 rows at batch 4

    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event files"
    assert all(p.stat().st_size > 0 for p in events)

    report = (run / "report.html").read_text(encoding="utf-8")
    assert report.startswith("<!doctype html>")
    for image in ("confusion_matrix.png", "training_curves.png", "calibration.png"):
        assert image in report
        assert (run / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model_dir = run / "model"
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert model_config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert model_config["label2id"] == {name: i for i, name in enumerate(LABELS)}
    assert model_config["problem_type"] == "single_label_classification"
    assert (model_dir / "model.safetensors").stat().st_size > 0
    assert (model_dir / "tokenizer_config.json").is_file()
    assert (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.txt").is_file()
    metadata = json.loads((model_dir / "adaptext.json").read_text(encoding="utf-8"))
    assert metadata["max_length"] == 32
    assert metadata["text_column"] == "text"

    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["done"] is True
    assert state["global_step"] == result.global_step
    assert state["best_step"] == result.best_step
    assert any((run / "checkpoint").glob("*.safetensors")) or any((run / "checkpoint").glob("*.bin"))


def test_env_git_revision_is_none_when_git_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptext.core import run as run_module

    def failing_git(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        # What `git rev-parse HEAD` does in a repository without commits: echo HEAD, exit 128.
        return subprocess.CompletedProcess(args, 128, stdout="HEAD\n", stderr="fatal: ambiguous argument")

    monkeypatch.setattr(run_module.subprocess, "run", failing_git)
    assert run_module.environment_record("cpu", "no")["git_revision"] is None


def test_env_git_revision_is_a_commit_hash_when_known() -> None:
    import adaptext
    from adaptext.core.run import environment_record

    source = Path(adaptext.__file__).resolve().parent
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=False)
    expected = git.stdout.strip() if git.returncode == 0 else None
    revision = environment_record("cpu", "no")["git_revision"]
    assert revision == expected
    if expected is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", revision)


# (b) save -> reload ---------------------------------------------------------------------------


def test_reloaded_model_gives_the_same_logits_as_the_in_memory_model(trained: dict[str, Any]) -> None:
    result: TrainResult = trained["result"]
    in_memory = trained["saved_models"][-1]  # the last save is the best model, the one in run/model
    reloaded = Predictor.from_dir(result.run_dir)
    texts = [*PROBE_TEXTS, "a much longer text about the invoice and the parcel and the login error today"]
    direct = Predictor(in_memory, reloaded.tokenizer, max_length=reloaded.max_length)
    expected = torch.from_numpy(direct.predict_logits(texts) / folded_temperature(reloaded))  # calibration
    actual = torch.from_numpy(reloaded.predict_logits(texts))
    assert torch.allclose(actual, expected, atol=1e-5)
    assert reloaded.labels == LABELS


def test_the_trained_model_learned_the_task(trained: dict[str, Any]) -> None:
    result: TrainResult = trained["result"]
    assert result.metrics["accuracy"] >= 0.9
    assert result.best_step % 30 == 0  # evaluated at epoch ends: 120 rows / batch 4
    predictions = Predictor.from_dir(result.run_dir).predict(PROBE_TEXTS)
    assert [p.label for p in predictions] == ["billing", "shipping", "technical"] * 2


# (c) overfitting ------------------------------------------------------------------------------


def test_a_tiny_set_can_be_overfit(tiny_config: Callable[..., Config], write_csv: Callable[..., Path]) -> None:
    rows = make_rows(12, seed=11)
    tiny = write_csv("tiny.csv", rows)
    config = tiny_config(
        f"data.train={tiny}",
        f"data.validation={tiny}",
        f"data.test={tiny}",
        "train.batch_size=4",
        "train.epochs=25",
        "train.learning_rate=1e-2",
        "train.warmup_ratio=0",
        "train.early_stopping_patience=25",
    )
    result = train(config)
    assert result.metrics["accuracy"] == 1.0
    predictions = Predictor.from_dir(result.run_dir).predict([r["text"] for r in rows])
    assert [p.label for p in predictions] == [r["label"] for r in rows]


# (d) seeding ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_runs_and_another_seed_does_not(
    tiny_config: Callable[..., Config], tmp_path: Path
) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        runs[name] = train(tiny_config(f"seed={seed}", f"output_dir={tmp_path / name}")).run_dir
    losses = {name: loss_records(run) for name, run in runs.items()}
    logits = {name: logits_of(run) for name, run in runs.items()}
    assert len(losses["a"]) >= 2
    assert losses["a"] == losses["b"]
    np.testing.assert_array_equal(logits["a"], logits["b"])
    assert [s for s, _ in losses["a"]] == [s for s, _ in losses["c"]]
    assert losses["a"] != losses["c"]
    assert not np.allclose(logits["a"], logits["c"], atol=1e-5)


# (e) resume after an exception ----------------------------------------------------------------


def test_interrupted_run_resumes_to_the_end(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config("train.checkpoint_steps=3")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(10))
    state = json.loads((config.output_dir / "checkpoint" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 9  # the last checkpoint before the interruption
    assert not (config.output_dir / "metrics.json").exists()

    steps: list[int] = []
    result = train(config, resume=True, on_step=steps.append)
    assert steps == list(range(10, 2 * BATCHES_PER_EPOCH + 1))  # continues after the checkpoint
    assert result.global_step == 2 * BATCHES_PER_EPOCH
    assert (result.run_dir / "metrics.json").is_file()
    assert (result.run_dir / "report.html").is_file()
    assert [r["step"] for r in read_log(result.run_dir) if "eval_accuracy" in r] == [15, 30]


def test_resume_with_a_different_config_is_refused(tiny_config: Callable[..., Config]) -> None:
    with pytest.raises(SimulatedCrashError):
        train(tiny_config("train.checkpoint_steps=2"), on_step=stop_at(3))
    with pytest.raises(AdaptextError, match="learning_rate"):
        train(tiny_config("train.checkpoint_steps=2", "train.learning_rate=1e-2"), resume=True)
    # Only the run length may change.
    result = train(tiny_config("train.checkpoint_steps=2", "train.epochs=1"), resume=True)
    assert result.global_step == BATCHES_PER_EPOCH


@pytest.mark.parametrize("frozen", [False, True])
def test_resume_is_exact(tiny_config: Callable[..., Config], tmp_path: Path, frozen: bool) -> None:
    overrides = (
        "train.epochs=3",
        "train.checkpoint_steps=3",
        "train.learning_rate=5e-3",
        f"train.freeze_embeddings={str(frozen).lower()}",  # the optimizer then holds one matrix fewer
    )
    straight = train(tiny_config(*overrides, f"output_dir={tmp_path / 'straight'}"))

    config = tiny_config(*overrides, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(10))  # mid-epoch 0; the checkpoint is at step 9
    resumed = train(config, resume=True)

    assert resumed.global_step == straight.global_step
    expected = torch.from_numpy(logits_of(straight.run_dir))
    assert torch.allclose(torch.from_numpy(logits_of(resumed.run_dir)), expected, atol=1e-5)
    after = [r for r in read_log(resumed.run_dir) if r["step"] > 9]
    reference = [r for r in read_log(straight.run_dir) if r["step"] > 9]
    for mine, theirs in zip(after, reference, strict=True):
        for key in ("step", "loss", "eval_loss", "eval_accuracy"):
            assert mine.get(key) == pytest.approx(theirs.get(key), abs=1e-6), (key, mine["step"])


@pytest.fixture
def no_dropout_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model without dropout, so a resumed run cannot differ through random masks."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(
        tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0
    )
    folder = tmp_path / "tiny-no-dropout"
    AutoModel.from_pretrained(tiny_model_dir, config=config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_resumed_loss_records_average_the_same_steps(
    tiny_config: Callable[..., Config], no_dropout_model_dir: Path, tmp_path: Path
) -> None:
    # One epoch without dropout: the batches and updates after the resume are exactly the same.
    overrides = (f"model.name={no_dropout_model_dir}", "train.epochs=1", "train.checkpoint_steps=3")
    straight = train(tiny_config(*overrides, f"output_dir={tmp_path / 'straight'}"))
    config = tiny_config(*overrides, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(7))
    resumed = train(config, resume=True)
    torch.testing.assert_close(
        torch.from_numpy(logits_of(resumed.run_dir)), torch.from_numpy(logits_of(straight.run_dir)), atol=1e-5, rtol=0
    )
    mine, reference = loss_records(resumed.run_dir), loss_records(straight.run_dir)
    assert [step for step, _ in mine] == [step for step, _ in reference] == [BATCHES_PER_EPOCH]
    assert [loss for _, loss in mine] == pytest.approx([loss for _, loss in reference], abs=1e-6)


def test_resume_does_not_duplicate_log_records(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config("train.checkpoint_steps=3")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(20))  # loss logged at step 20; last checkpoint at step 18
    result = train(config, resume=True)
    keys = [(r["step"], "loss" in r) for r in read_log(result.run_dir)]
    assert len(keys) == len(set(keys)), keys


# (f) kill -9 ----------------------------------------------------------------------------------


def test_resume_after_kill_9(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    max_steps = 120
    config = tiny_config(f"train.max_steps={max_steps}", "train.checkpoint_steps=2")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(config_to_yaml(config), encoding="utf-8")
    state_file = config.output_dir / "checkpoint" / "trainer_state.json"
    command = [sys.executable, "-m", "adaptext", "-q", "train", str(config_file)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    with (tmp_path / "first.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 120
            while not state_file.exists():
                assert process.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.02)
            time.sleep(0.2)  # kill at some arbitrary point after the first checkpoint
            assert process.poll() is None, "the run finished before it could be killed; raise max_steps"
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (config.output_dir / "metrics.json").exists()

    done = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(state_file.read_text(encoding="utf-8"))
    assert state["global_step"] == max_steps
    assert state["done"] is True
    assert (done.stdout, done.stderr) == ("", "")  # -q: the summary is in the debug log, which --resume adds to
    assert f"of {max_steps})" in (config.output_dir / "debug.log").read_text(encoding="utf-8")
    metrics = json.loads((config.output_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_examples"] == 30
    assert Predictor.from_dir(config.output_dir).labels == LABELS
    assert not list(config.output_dir.glob("*.tmp")) and not list(config.output_dir.glob("*.old"))


# (g) gradient accumulation --------------------------------------------------------------------


def test_gradient_accumulation_counts_optimizer_steps(tiny_config: Callable[..., Config]) -> None:
    steps: list[int] = []
    result = train(tiny_config("train.grad_accum_steps=2"), on_step=steps.append)
    per_epoch = math.ceil(BATCHES_PER_EPOCH / 2)  # 15 batches: 7 full pairs and a last single batch
    assert result.global_step == 2 * per_epoch
    assert steps == list(range(1, 2 * per_epoch + 1))
    assert [r["step"] for r in result.history] == [per_epoch, 2 * per_epoch]
    assert [r["epoch"] for r in result.history] == [1.0, 2.0]


# (h) early stopping ---------------------------------------------------------------------------


def test_early_stopping_stops_when_the_metric_cannot_improve(tiny_config: Callable[..., Config]) -> None:
    result = train(
        tiny_config(
            "train.epochs=5",
            "train.learning_rate=1e-9",
            "train.early_stopping_patience=1",
            "train.metric_for_best=accuracy",
        )
    )
    assert result.stopped_early
    assert result.global_step == 2 * BATCHES_PER_EPOCH < 5 * BATCHES_PER_EPOCH
    assert result.best_step == BATCHES_PER_EPOCH
    assert len(result.history) == 2
    assert (result.run_dir / "metrics.json").is_file()


def test_a_full_run_does_not_report_early_stopping(trained: dict[str, Any]) -> None:
    assert not trained["result"].stopped_early


# (i) class weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["auto", "{billing: 2.0, technical: 0.5}"])
def test_class_weights_run(tiny_config: Callable[..., Config], weights: str) -> None:
    result = train(tiny_config(f"train.class_weights={weights}", "train.max_steps=4"))
    assert result.global_step == 4
    assert (result.run_dir / "metrics.json").is_file()


def test_class_weight_values(tiny_config: Callable[..., Config], write_csv: Callable[..., Path]) -> None:
    from adaptext.data.splits import load_splits

    rows = make_rows(30, seed=4) + [{"text": "invoice refund", "label": "billing"}] * 10  # 20 billing of 40
    config = tiny_config(f"data.train={write_csv('skewed.csv', rows)}", "train.class_weights=auto")
    splits = load_splits(config)
    auto = class_weights(config.train, splits, SINGLE_LABEL)
    assert auto is not None
    assert auto.tolist() == pytest.approx([40 / (3 * 20), 40 / (3 * 10), 40 / (3 * 10)])

    config = tiny_config("train.class_weights={shipping: 3.0}")
    manual = class_weights(config.train, load_splits(config), SINGLE_LABEL)
    assert manual is not None
    assert manual.tolist() == [1.0, 3.0, 1.0]
    assert class_weights(tiny_config().train, splits, SINGLE_LABEL) is None


def test_unknown_label_in_class_weights_is_a_config_error(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config("train.class_weights={billing: 2.0, refunds: 3.0}")
    with pytest.raises(ConfigError, match="refunds"):
        train(config)
    assert not config.output_dir.exists()  # refused before the run folder is touched


# (j) multi-label ------------------------------------------------------------------------------


def make_multi_label_rows(n: int, seed: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    combos = [
        ["billing"],
        ["shipping"],
        ["technical"],
        ["billing", "shipping"],
        ["shipping", "technical"],
        ["billing", "technical"],
    ]
    rows = []
    for i in range(n):
        labels = combos[i % len(combos)]
        words = rng.sample(FILLER, 7 - 2 * len(labels))  # one length for all, or batches group by label count
        for label in labels:
            words += rng.sample(KEYWORDS[label], 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels})
    return rows


def test_multi_label_training_and_prediction(
    tiny_config: Callable[..., Config], write_csv: Callable[..., Path]
) -> None:
    files = {
        split: write_csv(f"ml_{split}.jsonl", make_multi_label_rows(n, seed))
        for split, n, seed in (("train", 60, 1), ("validation", 30, 2), ("test", 30, 3))
    }
    config = tiny_config(
        *(f"data.{split}={path}" for split, path in files.items()),
        "data.multi_label=true",
        "train.epochs=3",
        "train.learning_rate=2e-3",
        "train.threshold=0.4",
    )
    result = train(config)

    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    for key in ("hamming_loss", "samples_f1", "samples_precision", "macro_f1", "micro_f1", "accuracy", "loss"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "loss" else 10.0), key
    assert "ece" not in metrics
    assert "confusion_matrix.png" not in {p.name for p in result.run_dir.iterdir()}
    model_config = json.loads((result.model_dir / "config.json").read_text(encoding="utf-8"))
    assert model_config["problem_type"] == "multi_label_classification"
    assert json.loads((result.model_dir / "adaptext.json").read_text(encoding="utf-8"))["threshold"] == 0.4

    predictor = Predictor.from_dir(result.run_dir)
    assert predictor.multi_label
    assert predictor.threshold == 0.4
    texts = ["my invoice and the parcel", "the login error", "refund for the crash", "why today"]
    predictions = predictor.predict(texts)
    probs = predictor.predict_proba(texts)
    for p, row in zip(predictions, probs, strict=True):
        assert set(p.scores) == set(LABELS)
        assert [p.scores[name] for name in LABELS] == pytest.approx(row.tolist())
        assert p.labels == sorted((n for n in LABELS if p.scores[n] >= 0.4), key=lambda n: -p.scores[n])
        assert p.label == max(LABELS, key=lambda n: p.scores[n])
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids, not a softmax

    predictor.threshold = 1e-6
    assert all(set(p.labels) == set(LABELS) for p in predictor.predict(texts))  # a set: may hold all ...
    predictor.threshold = 1 - 1e-6
    assert all(p.labels == [] for p in predictor.predict(texts))  # ... or none


# (k) text pairs -------------------------------------------------------------------------------


def test_text_pairs_train_and_predict(tiny_config: Callable[..., Config], write_csv: Callable[..., Path]) -> None:
    files = {
        split: write_csv(f"pairs_{split}.csv", make_pair_rows(n, seed))
        for split, n, seed in (("train", 120, 1), ("validation", 30, 2), ("test", 30, 3))
    }
    config = tiny_config(
        *(f"data.{split}={path}" for split, path in files.items()),
        "data.text_column=question",
        "data.text_pair_column=text",
        "train.epochs=8",
        "train.learning_rate=5e-3",
    )
    result = train(config)
    assert result.metrics["accuracy"] >= 0.9
    metadata = json.loads((result.model_dir / "adaptext.json").read_text(encoding="utf-8"))
    assert (metadata["text_column"], metadata["text_pair_column"]) == ("question", "text")

    predictor = Predictor.from_dir(result.run_dir)
    predictions = predictor.predict(["my order", "my order"], ["the invoice is wrong", "the parcel is late"])
    assert [p.label for p in predictions] == ["billing", "shipping"]
    with_pairs = predictor.predict_logits(["my order"], ["the invoice is wrong"])
    without = predictor.predict_logits(["my order"])
    assert not np.allclose(with_pairs, without)


# (l) Chinese ----------------------------------------------------------------------------------


def test_chinese_data_trains_and_predicts_chinese_labels(
    tiny_config: Callable[..., Config], write_csv: Callable[..., Path]
) -> None:
    files = {
        split: write_csv(f"zh_{split}.csv", make_chinese_rows(n, seed))
        for split, n, seed in (("train", 80, 1), ("validation", 20, 2), ("test", 20, 3))
    }
    config = tiny_config(
        *(f"data.{split}={path}" for split, path in files.items()),
        "train.epochs=6",
        "train.learning_rate=2e-3",
        "train.batch_size=4",
    )
    result = train(config)
    names = sorted(CHINESE_LABELS)
    assert json.loads((result.run_dir / "labels.json").read_text(encoding="utf-8")) == names
    assert result.metrics["accuracy"] >= 0.9
    model_config = json.loads((result.model_dir / "config.json").read_text(encoding="utf-8"))
    assert sorted(model_config["id2label"].values()) == names
    assert "正面" in (result.run_dir / "report.html").read_text(encoding="utf-8")

    predictions = Predictor.from_dir(result.run_dir).predict(["这个酒店非常好，我们很满意", "房间很差，服务糟糕"])
    assert [p.label for p in predictions] == ["正面", "负面"]


# (m) overwrite ------------------------------------------------------------------------------


def test_existing_run_needs_overwrite(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config("train.max_steps=3")
    first = train(config)
    before = (first.run_dir / "metrics.json").read_bytes()
    with pytest.raises(AdaptextError, match="--overwrite"):
        train(config)
    assert (first.run_dir / "metrics.json").read_bytes() == before  # the refusal left the run alone

    (first.run_dir / "notes.txt").write_text("the user's own file", encoding="utf-8")
    (first.run_dir / "model.old").mkdir()  # debris of an interrupted save
    second = train(tiny_config("train.max_steps=5"), overwrite=True)
    assert second.global_step == 5
    assert (second.run_dir / "notes.txt").read_text(encoding="utf-8") == "the user's own file"
    assert not (second.run_dir / "model.old").exists()
    assert len(list((second.run_dir / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    assert {r["step"] for r in read_log(second.run_dir)} == {5}  # the old log was not appended to
    assert load_config(second.run_dir / "config.yaml").train.max_steps == 5


def test_resume_without_a_checkpoint_is_refused(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config()
    with pytest.raises(AdaptextError, match="nothing to resume"):
        train(config, resume=True)


# (n) gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("multi_label", [False, True])
def test_every_trainable_parameter_gets_a_gradient(tiny_model_dir: Path, multi_label: bool) -> None:
    torch.manual_seed(0)
    model = build_model(str(tiny_model_dir), LABELS, task_for(multi_label=multi_label))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert model.config.id2label == dict(enumerate(LABELS))
    batch = tokenizer(["my invoice is wrong", "where is the parcel", "login error"], padding=True, return_tensors="pt")
    labels = torch.eye(3) if multi_label else torch.tensor([0, 1, 2])
    model.train()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # full fine-tuning: nothing frozen
    missing = [name for name, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for _, p in trainable if p.grad is not None)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_embeddings_keeps_the_word_embeddings_as_pretrained(
    tiny_config: Callable[..., Config], tiny_model_dir: Path, freeze: bool
) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    # every row of the matrix trains unless frozen (`train.embedding_rows=used` would leave unused rows out)
    result = train(
        tiny_config(*LEARNABLE, f"train.freeze_embeddings={str(freeze).lower()}", "train.embedding_rows=all")
    )
    pretrained = AutoModel.from_pretrained(tiny_model_dir)
    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    before, after = pretrained.get_input_embeddings().weight, saved.get_input_embeddings().weight
    assert torch.equal(before, after) is freeze
    trained_layer = saved.base_model.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(pretrained.encoder.layer[0].attention.self.query.weight, trained_layer)
    trainable = result.stats["trainable_parameters"]
    assert trainable == result.stats["total_parameters"] - (before.numel() if freeze else 0)
    assert result.metrics["accuracy"] > 0.7  # the keyword task is learned (chance: 1/3)


def test_attention_dropout_sets_the_models_own_and_unset_keeps_it(
    tiny_config: Callable[..., Config], tiny_model_dir: Path
) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    pretrained = AutoConfig.from_pretrained(tiny_model_dir).attention_probs_dropout_prob
    assert pretrained > 0
    for setting, expected in ((None, pretrained), (0.0, 0.0), (0.25, 0.25)):
        config = tiny_config(*LEARNABLE, *([] if setting is None else [f"train.attention_dropout={setting}"]))
        model = finetune_classifier(config, ["a", "b", "c"], steps=1)
        attention = model.base_model.encoder.layer[0].attention.self
        assert attention.dropout.p == expected  # what the training forward passes to the attention kernel
        if setting == 0.0:
            result = train(config)
            saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
            assert saved.config.attention_probs_dropout_prob == 0


def test_attention_dropout_on_a_model_without_one_is_a_clear_error(
    tiny_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    import adaptext.modeling.build as build

    monkeypatch.setattr(build, "ATTENTION_DROPOUT_KEYS", ("no_such_key",))
    with pytest.raises(AdaptextError, match=r"train.attention_dropout: .* has no attention dropout .*no_such_key"):
        finetune_classifier(tiny_config("train.attention_dropout=0"), ["a", "b"], steps=1)


# the real bundled model ---------------------------------------------------------------------


BANKING77 = Path(__file__).resolve().parents[1] / "data" / "banking77" / "train.csv"
BANKING_LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card"]


@pytest.mark.bundled
def test_bundled_minilm_fine_tunes_and_loads_with_plain_transformers(tmp_path: Path) -> None:
    from transformers import pipeline

    frame = pd.read_csv(BANKING77)
    frame = frame[frame["label"].isin(BANKING_LABELS)]
    picked = frame.groupby("label", group_keys=False).head(25)
    train_rows = picked.groupby("label", group_keys=False).head(20)  # 60 rows
    validation_rows = picked.drop(train_rows.index)  # 15 more
    assert len(train_rows) == 60 and sorted(train_rows["label"].unique()) == BANKING_LABELS
    train_rows.to_csv(tmp_path / "train.csv", index=False)
    validation_rows.to_csv(tmp_path / "validation.csv", index=False)

    config = load_config(
        None,
        [
            "model.name=minilm",
            f"data.train={tmp_path / 'train.csv'}",
            f"data.validation={tmp_path / 'validation.csv'}",
            f"output_dir={tmp_path / 'run'}",
            "data.max_length=32",
            "train.max_steps=10",
            "train.batch_size=8",
            "train.learning_rate=5e-4",
            "train.precision=fp32",
        ],
    )
    result = train(config)
    assert result.global_step == 10
    model_config = json.loads((result.model_dir / "config.json").read_text(encoding="utf-8"))
    assert list(model_config["id2label"].values()) == BANKING_LABELS

    classify = pipeline("text-classification", model=str(result.model_dir), device="cpu")
    texts = ["I still have not received my new card", "what exchange rate do you use", "my card was stolen"]
    outputs = classify(texts)
    assert {out["label"] for out in outputs} <= set(BANKING_LABELS)
    ours = Predictor.from_dir(result.run_dir).predict(texts)
    assert [out["label"] for out in outputs] == [p.label for p in ours]
    assert [out["score"] for out in outputs] == pytest.approx([p.score for p in ours], abs=1e-4)


# automatic defaults ---------------------------------------------------------------------------


def test_auto_learning_rate_follows_model_width(tiny_model_dir: Path) -> None:
    from adaptext.core.config import TrainConfig
    from adaptext.modeling.build import build_model
    from adaptext.training.optim import resolve_learning_rate

    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)  # hidden size 32
    assert resolve_learning_rate(TrainConfig(), model) == 2e-4
    model.config.hidden_size = 768
    assert resolve_learning_rate(TrainConfig(), model) == 5e-5
    model.config.hidden_size = 1024
    assert resolve_learning_rate(TrainConfig(), model) == 2e-5
    assert resolve_learning_rate(TrainConfig(learning_rate=3e-4), model) == 3e-4


@pytest.mark.parametrize(("steps_per_epoch", "epochs"), [(10, 10.0), (250, 6.0), (1000, 2.0), (5000, 2.0)])
def test_auto_epochs_aim_at_a_step_budget(steps_per_epoch: int, epochs: float) -> None:
    from adaptext.core.config import TrainConfig
    from adaptext.training.optim import resolve_epochs

    assert resolve_epochs(TrainConfig(), steps_per_epoch) == epochs
    assert resolve_epochs(TrainConfig(epochs=1.5), steps_per_epoch) == 1.5


def test_auto_epochs_set_the_run_length(tiny_config: Callable[..., Config]) -> None:
    config = tiny_config("train.epochs=auto", "train.batch_size=60", "train.learning_rate=auto")
    result = train(config)
    assert result.global_step == 10 * 2  # 120 rows at batch 60: 2 steps per epoch, 10 epochs (the maximum)


def test_each_loss_record_averages_only_its_own_steps(tiny_config: Callable[..., Config]) -> None:
    losses: list[tuple[float, int]] = []

    class RecordingCrossEntropy(CrossEntropy):
        """The fine-tuning loss, each batch's value and size noted."""

        def loss(self, model: Any, inputs: Any, targets: Any) -> Any:
            value, examples = super().loss(model, inputs, targets)
            losses.append((value.item(), examples))
            return value, examples

    class RecordingFinetune(Finetune):
        objective = "test_recording_cross_entropy"

    OBJECTIVES.add(RecordingFinetune.objective, RecordingCrossEntropy)
    try:
        result = run_strategy(RecordingFinetune(), tiny_config("train.epochs=3"))  # 45 steps: records at 20, 40, 45
    finally:
        OBJECTIVES.remove(RecordingFinetune.objective)
    records = [r for r in read_log(result.run_dir) if "loss" in r]
    assert [r["step"] for r in records] == [20, 40, 45]
    assert len(losses) == 45
    bounds = [0, 20, 40, 45]
    for record, start, stop in zip(records, bounds, bounds[1:], strict=False):
        window = losses[start:stop]
        expected = sum(loss * n for loss, n in window) / sum(n for _, n in window)
        assert record["loss"] == pytest.approx(expected, rel=1e-6)


def test_training_bounds_the_onednn_kernel_cache_unless_the_user_set_it(
    tiny_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    train(tiny_config("train.epochs=1"))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    train(tiny_config("train.epochs=1"), overwrite=True)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


# data safety: evaluation precision, moved run folders, texts shared with train ---------------------


@pytest.fixture
def fresh_accelerate_state() -> Iterator[None]:
    """accelerate fixes one mixed-precision mode per process; a test training in another one than the other
    tests starts and ends with a fresh state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_best_checkpoints_metric_is_what_the_saved_model_scores(
    tiny_config: Callable[..., Config], precision: str
) -> None:
    # The metric that picks the best checkpoint must be the one the saved model gets from the final
    # evaluation (and `adaptext evaluate`, `Predictor`): both in fp32, whatever precision training ran in.
    config = tiny_config(
        f"train.precision={precision}",
        "data.test=",
        "train.epochs=1",
        "train.eval_steps=5",
        "train.metric_for_best=loss",
        "calibrate=false",  # the temperature would lower the saved model's loss below the checkpoint's
    )
    result = train(config)
    assert result.eval_split == "validation"
    assert len(result.history) == 3
    best = next(record for record in result.history if record["step"] == result.best_step)
    assert result.best_metric == pytest.approx(result.metrics["loss"], rel=1e-6, abs=1e-7)
    for key in ("loss", "accuracy", "macro_f1", "ece"):
        assert best[f"eval_{key}"] == pytest.approx(result.metrics[key], rel=1e-6, abs=1e-7), key
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["loss"] == pytest.approx(result.best_metric, rel=1e-6, abs=1e-7)


def test_a_moved_run_folder_resumes_exactly(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    overrides = ("train.epochs=1", "train.checkpoint_steps=3")
    straight = train(tiny_config(*overrides, f"output_dir={tmp_path / 'straight'}"))
    runs = tmp_path / "runs"
    with pytest.raises(SimulatedCrashError):
        train(tiny_config(*overrides, f"output_dir={runs / 'a'}"), on_step=stop_at(5))  # checkpoint at step 3
    (runs / "a").rename(runs / "b")
    # Resumed with the same config, output_dir pointing at the new place (and interrupted once more) ...
    with pytest.raises(SimulatedCrashError):
        train(tiny_config(*overrides, f"output_dir={runs / 'b'}"), resume=True, on_step=stop_at(10))  # at step 9
    (runs / "b").rename(runs / "c")
    # ... and with the moved folder's own config.yaml, which still names runs/b (`adaptext train
    # runs/c/config.yaml --resume`).
    assert f"output_dir: {runs / 'b'}" in (runs / "c" / "config.yaml").read_text(encoding="utf-8")
    resumed = train(load_config(runs / "c" / "config.yaml"), resume=True)
    assert resumed.run_dir == runs / "c"
    assert not (runs / "a").exists() and not (runs / "b").exists()
    assert f"output_dir: {runs / 'c'}" in (runs / "c" / "config.yaml").read_text(encoding="utf-8")
    assert resumed.global_step == straight.global_step == BATCHES_PER_EPOCH
    torch.testing.assert_close(
        torch.from_numpy(logits_of(resumed.run_dir)), torch.from_numpy(logits_of(straight.run_dir)), atol=1e-5, rtol=0
    )
    mine = [r for r in read_log(resumed.run_dir) if "eval_loss" in r]
    reference = [r for r in read_log(straight.run_dir) if "eval_loss" in r]
    assert [r["step"] for r in mine] == [r["step"] for r in reference]
    for record, expected in zip(mine, reference, strict=True):
        assert record["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-6)
    assert resumed.metrics == pytest.approx(straight.metrics, abs=1e-6)


def test_resume_accepts_another_spelling_of_the_run_folder(
    tiny_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run folder is where the checkpoint is: output_dir spelled relative instead of absolute is the same run.
    overrides = ("train.checkpoint_steps=2", "train.max_steps=4")
    with pytest.raises(SimulatedCrashError):
        train(tiny_config(*overrides), on_step=stop_at(3))
    assert tiny_config().output_dir == tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    result = train(tiny_config(*overrides, "output_dir=run"), resume=True)
    assert result.global_step == 4
    # Other settings still may not change.
    with pytest.raises(AdaptextError, match="learning_rate"):
        train(tiny_config(*overrides, "output_dir=run", "train.learning_rate=1e-2"), resume=True)


def test_run_stats_count_validation_texts_that_are_also_in_train(
    tiny_config: Callable[..., Config], write_csv: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    train_rows = make_rows(60, seed=1)
    validation_rows = [*train_rows[:4], *make_rows(16, seed=2)]
    train_texts = {row["text"] for row in train_rows}
    expected = sum(row["text"] in train_texts for row in validation_rows)
    config = tiny_config(
        f"data.train={write_csv('dup-train.csv', train_rows)}",
        f"data.validation={write_csv('dup-validation.csv', validation_rows)}",
        "data.test=",
        "train.max_steps=2",
    )
    with caplog.at_level("WARNING", logger="adaptext"):
        result = train(config)
    assert any(
        r.getMessage().startswith(f"{expected} texts of the validation split ({100 * expected / 20:.1f}%")
        for r in caplog.records
    )
    stats = json.loads((result.run_dir / "run_stats.json").read_text(encoding="utf-8"))
    assert stats["validation_duplicates_of_train"] == expected >= 4
    assert "test_duplicates_of_train" not in stats
    # A run with a test file counts it too.
    stats = train(tiny_config("train.max_steps=2"), overwrite=True).stats
    assert stats["validation_duplicates_of_train"] == 0 and stats["test_duplicates_of_train"] == 0
