"""Self-training (`self_training.*`, `data.unlabelled`): pseudo-label selection, the pool's leakage checks, config
errors, and whole runs on the tiny model with fine-tuning and few-shot."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.data.splits import load_splits
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from adaptext.training.self_training import (
    PSEUDO_LABELS_FILE,
    RECORD_FILE,
    log_softmax,
    pool_log_probabilities,
    read_pool,
    select_pseudo_labels,
)
from conftest import LABELS, LEARNABLE, make_rows

THRESHOLD = 0.6
PER_CLASS = 4


def hand_selection(log_probs: np.ndarray, threshold: float, per_class: int) -> set[tuple[int, int]]:
    """(row, class) pairs picked by hand: every row whose top probability reaches the threshold, each class cut to
    its `per_class` most probable rows."""
    kept = set()
    for cls in range(log_probs.shape[1]):
        rows = [
            r for r in range(len(log_probs)) if log_probs[r].argmax() == cls and log_probs[r, cls] >= np.log(threshold)
        ]
        rows.sort(key=lambda r: -log_probs[r, cls])
        kept |= {(r, cls) for r in rows[:per_class]}
    return kept


def test_selection_keeps_every_row_above_the_threshold_unless_its_class_is_full() -> None:
    probs = np.array(
        [
            [0.95, 0.03, 0.02],  # 0: class 0, kept
            [0.50, 0.45, 0.05],  # 1: below 0.6
            [0.10, 0.85, 0.05],  # 2: class 1, kept
            [0.91, 0.05, 0.04],  # 3: class 0, kept
            [0.88, 0.10, 0.02],  # 4: class 0, third most probable: cut by per_class=2
            [0.20, 0.20, 0.60],  # 5: class 2, exactly at the threshold: kept
            [0.30, 0.10, 0.60 - 1e-9],  # 6: class 2, just below the threshold
        ]
    )
    chosen = select_pseudo_labels(np.log(probs), 0.6, per_class=2)
    assert chosen == [(0, 0, 0.95), (3, 0, 0.91), (2, 1, 0.85), (5, 2, 0.6)]
    assert all(prob >= 0.6 for _, _, prob in chosen)
    # Without the cap the third class-0 row is kept too.
    assert (4, 0, 0.88) in select_pseudo_labels(np.log(probs), 0.6, per_class=10)
    # A total cap is taken in turns over the classes: each class's best before any class's second.
    assert select_pseudo_labels(np.log(probs), 0.6, per_class=2, max_total=3) == [
        (0, 0, 0.95),
        (2, 1, 0.85),
        (5, 2, 0.6),
    ]


def test_selection_matches_a_hand_computation_on_random_probabilities() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    chosen = select_pseudo_labels(np.log(probs), 0.7, per_class=15)
    assert {(row, cls) for row, cls, _ in chosen} == hand_selection(np.log(probs), 0.7, 15)
    assert all(p >= 0.7 for _, _, p in chosen)
    counts = Counter(cls for _, cls, _ in chosen)
    assert max(counts.values()) <= 15
    balanced = select_pseudo_labels(np.log(probs), 0.7, per_class=15, max_total=21)
    assert len(balanced) == 21
    assert max(Counter(c for _, c, _ in balanced).values()) - min(Counter(c for _, c, _ in balanced).values()) <= 1


def test_selection_ranks_rows_whose_probabilities_round_to_one() -> None:
    """A model calibrated on its own training examples gives many pool rows a probability of 1.0 in float64; the
    log-probabilities still rank them."""
    log_probs = log_softmax(np.array([[50.0, 0.0], [60.0, 0.0], [40.0, 0.0], [0.0, 45.0], [0.0, 55.0]]))
    assert (np.exp(log_probs).max(axis=1) == 1.0).all()
    assert select_pseudo_labels(log_probs, 0.9, per_class=1) == [(1, 0, 1.0), (4, 1, 1.0)]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"self_training\.rounds needs data\.unlabelled"):
        load_config(None, ["self_training.rounds=1"])
    for extra, message in (
        ("data.multi_label=true", "one class per text"),
        ("data.problem=regression", "predicts a value"),
        ("data.text_pair_column=question", "text-pair"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["self_training.rounds=1", "data.unlabelled=pool.txt", extra])
    with pytest.raises(ConfigError, match=r"self_training\.per_class"):
        load_config(None, ["self_training.per_class=0"])
    with pytest.raises(ConfigError, match=r"self_training\.threshold"):
        load_config(None, ["self_training.threshold=1.0"])
    assert load_config(None, []).self_training.rounds == 0  # off by default


def test_zeroshot_and_prompt_are_refused(tiny_config: Any, tmp_path: Path) -> None:
    pool = tmp_path / "pool.txt"
    pool.write_text("my invoice again\n", encoding="utf-8")
    config: Config = tiny_config("self_training.rounds=1", f"data.unlabelled={pool}", "strategy=zeroshot")
    with pytest.raises(ConfigError, match="strategy zeroshot does not train on labelled examples"):
        train(config)
    config = tiny_config("self_training.rounds=1", f"data.unlabelled={pool}", "strategy=prompt")
    with pytest.raises(ConfigError, match="strategy prompt does not support retraining"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_the_pool_drops_texts_of_the_labelled_splits(
    tiny_config: Any, data_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_text = pd.read_csv(data_files["train"])["text"][0]
    validation_text = pd.read_csv(data_files["validation"])["text"][0]
    test_text = pd.read_csv(data_files["test"])["text"][0]
    fresh = "a refund for this charge please"
    pool_file = tmp_path / "pool.csv"
    texts = [train_text, fresh, f"  {validation_text} ", test_text, fresh]
    pd.DataFrame({"text": texts}).to_csv(pool_file, index=False)
    config = tiny_config("self_training.rounds=1", f"data.unlabelled={pool_file}")
    with caplog.at_level(logging.INFO, logger="adaptext"):
        pool = read_pool(config, load_splits(config))
    assert pool.texts == [fresh]
    assert (pool.read, pool.leaked, pool.repeated) == (5, 3, 1)
    assert "dropped 3 of 5 texts that equal a training, validation or test text (leakage)" in caplog.text

    only_leaks = tmp_path / "leaks.txt"
    only_leaks.write_text(f"{train_text}\n{test_text}\n", encoding="utf-8")
    config = tiny_config("self_training.rounds=1", f"data.unlabelled={only_leaks}")
    with pytest.raises(DataError, match="no unlabelled text is left"):
        read_pool(config, load_splits(config))
    missing = tiny_config("self_training.rounds=1", f"data.unlabelled={tmp_path / 'nope.txt'}")
    with pytest.raises(DataError, match=r"nope\.txt"):
        train(missing)
    assert not (tmp_path / "run").exists()  # a bad pool fails before the run folder is made


def read_pseudo_labels(run: Path) -> list[dict[str, str]]:
    with (run / PSEUDO_LABELS_FILE).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def finetune_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fine-tuning run with 2 self-training rounds on a 60-text pool (`.txt`), the round models kept."""
    folder = tmp_path_factory.mktemp("selftrain")
    files = {}
    for split, n, seed in (("train", 30, 1), ("validation", 30, 2), ("test", 30, 3)):
        files[split] = folder / f"{split}.csv"
        pd.DataFrame(make_rows(n, seed=seed)).to_csv(files[split], index=False)
    pool_texts = [row["text"] for row in make_rows(60, seed=11)]
    (folder / "pool.txt").write_text("\n".join(pool_texts) + "\n", encoding="utf-8")
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            *(f"data.{split}={path}" for split, path in files.items()),
            f"data.unlabelled={folder / 'pool.txt'}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            *LEARNABLE,
            "train.precision=fp32",
            "train.report_errors=0",
            "tracking.backend=none",
            "seed=7",
            "self_training.rounds=2",
            f"self_training.threshold={THRESHOLD}",
            f"self_training.per_class={PER_CLASS}",
            "self_training.keep_round_models=true",
        ],
    )
    return {"config": config, "result": train(config), "folder": folder}


def test_rounds_are_recorded_with_balanced_pseudo_labels_above_the_threshold(finetune_run: dict[str, Any]) -> None:
    run = finetune_run["result"].run_dir
    rows = read_pseudo_labels(run)
    assert rows, "the tiny model is confident on the keyword task: some pool texts must pass the threshold"
    assert all(float(row["probability"]) >= THRESHOLD for row in rows)
    assert {row["round"] for row in rows} <= {"1", "2"}
    assert len({row["text"] for row in rows}) == len(rows)  # a pool text is pseudo-labelled once
    for number in ("1", "2"):
        counts = Counter(row["label"] for row in rows if row["round"] == number)
        assert all(count <= PER_CLASS for count in counts.values())
    record = json.loads((run / RECORD_FILE).read_text(encoding="utf-8"))
    rounds = record["rounds"]
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    assert rounds[0]["pseudo_labelled"] == 0 and rounds[0]["labelled"] == 30
    assert sum(r["added"] for r in rounds) == len(rows)
    for r in rounds[1:]:
        assert r["added"] == sum(1 for row in rows if row["round"] == str(r["round"]))
        assert r["added_per_class"] == dict(Counter(row["label"] for row in rows if row["round"] == str(r["round"])))
    assert all(0 <= r["validation_accuracy"] <= 1 for r in rounds)
    # Every round before the last keeps its train log (and, asked to, its model); the last one is the run's.
    last = rounds[-1]["round"]
    for r in rounds:
        assert (run / "self_training" / f"round_{r['round']}" / "train_log.jsonl").is_file()
        assert not (run / "self_training" / f"round_{r['round']}" / "checkpoint").exists()
    assert (run / "model").is_dir() and not (run / "self_training" / f"round_{last}" / "model").exists()
    assert (run / "train_log.jsonl").read_text(encoding="utf-8") == (
        run / "self_training" / f"round_{last}" / "train_log.jsonl"
    ).read_text(encoding="utf-8")
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Self-training" in page and "validation accuracy" in page


def test_round_one_pseudo_labels_are_the_hand_computed_selection(finetune_run: dict[str, Any]) -> None:
    """Round 0's saved model labels the pool again here; the rows above the threshold, cut to the per-class cap by
    hand, are exactly round 1's pseudo-labels, with their probabilities."""
    config: Config = finetune_run["config"]
    run = finetune_run["result"].run_dir
    splits = load_splits(config)
    pool = read_pool(config, splits)
    predictor = Predictor.from_dir(run / "self_training" / "round_0" / "model")
    log_probs = pool_log_probabilities(predictor, pool.texts, splits.validation, config)
    probs = np.exp(log_probs)
    expected = hand_selection(log_probs, THRESHOLD, PER_CLASS)
    got = {
        (pool.texts.index(row["text"]), predictor.labels.index(row["label"]), float(row["probability"]))
        for row in read_pseudo_labels(run)
        if row["round"] == "1"
    }
    assert {(r, c) for r, c, _ in got} == expected
    for row, cls, prob in got:
        assert prob == pytest.approx(probs[row, cls], abs=1e-5)
    above = int((probs.max(axis=1) >= THRESHOLD).sum())
    assert json.loads((run / RECORD_FILE).read_text(encoding="utf-8"))["rounds"][1]["candidates"] == above


def test_the_final_model_loads_in_a_plain_pipeline(finetune_run: dict[str, Any]) -> None:
    from transformers import pipeline

    model_dir = finetune_run["result"].model_dir
    classifier = pipeline("text-classification", model=str(model_dir), device="cpu")
    answers = classifier(["my invoice is wrong", "the parcel did not arrive"])
    assert {answer["label"] for answer in answers} <= set(LABELS)
    assert finetune_run["result"].eval_split == "test"
    assert 0 <= finetune_run["result"].metrics["accuracy"] <= 1


def test_a_resume_is_refused_and_overwrite_clears_the_rounds(finetune_run: dict[str, Any]) -> None:
    config: Config = finetune_run["config"]
    run = finetune_run["result"].run_dir
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(AdaptextError, match="cannot be resumed"):
        train(config, resume=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing was touched

    from adaptext.core.run import RUN_ARTEFACTS, RunPaths, remove_run

    assert {"self_training", PSEUDO_LABELS_FILE, RECORD_FILE} <= set(RUN_ARTEFACTS)
    copy = finetune_run["folder"] / "copy"
    import shutil

    shutil.copytree(run, copy)
    (copy / "notes.txt").write_text("mine", encoding="utf-8")
    remove_run(RunPaths(copy))
    assert [p.name for p in copy.iterdir()] == ["notes.txt"]


def test_fewshot_self_training_runs_rounds(tiny_model_dir: Path, tmp_path: Path) -> None:
    files = {}
    for split, n, seed in (("train", 24, 1), ("validation", 30, 2)):
        files[split] = tmp_path / f"{split}.csv"
        pd.DataFrame(make_rows(n, seed=seed)).to_csv(files[split], index=False)
    pool = tmp_path / "pool.jsonl"
    pd.DataFrame(make_rows(40, seed=12)).drop(columns=["label"]).to_json(pool, orient="records", lines=True)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            *(f"data.{split}={path}" for split, path in files.items()),
            f"data.unlabelled={pool}",
            f"output_dir={tmp_path / 'run'}",
            "data.max_length=32",
            "train.precision=fp32",
            "tracking.backend=none",
            "seed=7",
            "strategy=fewshot",
            "fewshot.steps=20",
            "fewshot.batch_size=16",
            "fewshot.learning_rate=1e-3",
            "self_training.rounds=1",
            "self_training.threshold=0.5",
            "self_training.max_per_round=6",
        ],
    )
    result = train(config)
    rows = read_pseudo_labels(result.run_dir)
    assert 0 < len(rows) <= 6 and all(float(row["probability"]) >= 0.5 for row in rows)
    rounds = json.loads((result.run_dir / RECORD_FILE).read_text(encoding="utf-8"))["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["pseudo_labelled"] == len(rows)
    assert not (result.run_dir / "self_training" / "round_0" / "model").exists()  # not kept by default
    assert Predictor.from_dir(result.run_dir).predict(["my invoice is wrong"])[0].label in LABELS


def test_the_cli_summary_names_the_pseudo_labels(
    tiny_model_dir: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    import contextlib
    import io

    from adaptext.cli import main

    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(row["text"] for row in make_rows(30, seed=21)) + "\n", encoding="utf-8")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        f"model: {{name: {tiny_model_dir}}}\n"
        f"data: {{train: {data_files['train']}, validation: {data_files['validation']}, unlabelled: {pool}, "
        "max_length: 32}\n"
        "train: {precision: fp32, report_errors: 0}\n"
        "tracking: {backend: none}\n"
        "self_training: {rounds: 1, threshold: 0.5, per_class: 3}\n",
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["train", str(config_file), *LEARNABLE, f"output_dir={run_dir}"]) == 0
    added = len(read_pseudo_labels(run_dir))
    out = stdout.getvalue()
    assert f"self-training: 1 round(s), pseudo-labels added per round: {added}" in out
    assert str(run_dir / PSEUDO_LABELS_FILE) in out


def test_several_processes_are_refused(tiny_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from adaptext.strategies.finetune import Finetune
    from adaptext.training import self_training

    config = tiny_config("self_training.rounds=1", f"data.unlabelled={tmp_path / 'pool.txt'}")
    self_training.check_self_training(Finetune(), config, resume=False)  # one process: accepted
    monkeypatch.setattr(self_training, "process_state", lambda: SimpleNamespace(num_processes=2))
    with pytest.raises(AdaptextError, match="launched in 2"):
        self_training.check_self_training(Finetune(), config, resume=False)
