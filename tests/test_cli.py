"""End-to-end tests of the `adaptext` command, in-process through `adaptext.cli.main`."""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from adaptext import __version__
from adaptext.cli import main
from adaptext.core.config import Config, config_to_yaml, load_config
from adaptext.inference.predictor import Predictor
from conftest import LABELS, LEARNABLE, make_rows, write_splits

FLAT_METRICS = [
    "accuracy",
    "loss",
    "ece",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
]


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`adaptext train CONFIG key=value ...` run once; its exit code, output and files."""
    folder = tmp_path_factory.mktemp("cli")
    files = write_splits(folder)
    config_file = folder / "config.yaml"
    config_file.write_text(
        "\n".join(
            [
                f"model: {{name: '{tiny_model_dir}'}}",
                f"data: {{train: '{files['train']}', validation: '{files['validation']}', test: '{files['test']}',"
                " max_length: 32}",
                "train: {epochs: 1, batch_size: 8, learning_rate: 1.0e-3, precision: fp32}",
                "seed: 7",
                f"output_dir: '{folder / 'ignored'}'",
            ]
        ),
        encoding="utf-8",
    )
    run_dir = folder / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", str(config_file), *LEARNABLE, f"output_dir={run_dir}"])
    return {"code": code, "stdout": out.getvalue(), "run": run_dir, "files": files, "folder": folder}


def test_train_command_with_overrides(cli_run: dict[str, Any]) -> None:
    assert cli_run["code"] == 0
    run = cli_run["run"]
    report_lines = [line for line in cli_run["stdout"].splitlines() if line.startswith("report:")]
    assert len(report_lines) == 1
    report = Path(report_lines[0].split(":", 1)[1].strip())
    assert report == run / "report.html"
    assert report.is_file()
    assert f"run folder:  {run}" in cli_run["stdout"]
    assert "test accuracy" in cli_run["stdout"]
    saved = load_config(run / "config.yaml")  # the overrides won over the file
    assert saved.train.epochs == 6
    assert saved.train.learning_rate == 2e-3
    assert saved.train.batch_size == 4
    assert saved.output_dir == run
    assert not (cli_run["folder"] / "ignored").exists()
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))["accuracy"] >= 0.9


def test_train_command_from_a_saved_config(
    tiny_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config("train.max_steps=3")
    config_file = tmp_path / "saved.yaml"
    config_file.write_text(config_to_yaml(config), encoding="utf-8")
    assert main(["train", str(config_file)]) == 0
    assert f"report:      {config.output_dir / 'report.html'}" in capsys.readouterr().out
    assert load_config(config.output_dir / "config.yaml") == config
    # Starting again into the same folder needs --overwrite; with it the run is replaced.
    assert main(["-q", "train", str(config_file)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", str(config_file), "train.max_steps=4", "--overwrite"]) == 0
    assert "of 4)" in capsys.readouterr().out


def run_main(argv: list[str]) -> int | str | None:
    """`main(argv)`, with argparse's own exits turned into their exit code."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_train_command_accepts_overrides_after_flags(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    config = tiny_config("train.max_steps=2")
    config_file = tmp_path / "saved.yaml"
    config_file.write_text(config_to_yaml(config), encoding="utf-8")
    assert run_main(["-q", "train", str(config_file)]) == 0
    assert run_main(["-q", "train", str(config_file), "--overwrite", "train.max_steps=3"]) == 0
    assert load_config(config.output_dir / "config.yaml").train.max_steps == 3


def read_metrics(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def test_evaluate_command_on_a_run_folder(
    cli_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "eval"
    assert (
        main(["evaluate", str(cli_run["run"]), "--data", str(cli_run["files"]["test"]), "--output", str(out_dir)]) == 0
    )
    printed = capsys.readouterr().out
    assert "30 examples: accuracy" in printed
    assert f"report: {out_dir / 'report.html'}" in printed
    assert {p.name for p in out_dir.iterdir()} == {
        ".adaptext",
        "metrics.json",
        "per_class.csv",
        "report.html",
        "confusion_matrix.png",
        "calibration.png",
        "training_curves.png",
        "debug.log",  # the libraries' messages
    }
    metrics = read_metrics(out_dir)
    for key in FLAT_METRICS:
        assert isinstance(metrics[key], float), key
    assert metrics["n_examples"] == 30
    # The run evaluated the same model on the same test file when it finished.
    assert metrics == pytest.approx(read_metrics(cli_run["run"]), abs=1e-6)

    texts = pd.read_csv(cli_run["files"]["test"])
    predicted = [p.label for p in Predictor.from_dir(cli_run["run"]).predict(texts["text"].tolist())]
    assert metrics["accuracy"] == pytest.approx((texts["label"] == predicted).mean())

    with (out_dir / "per_class.csv").open(encoding="utf-8") as handle:
        per_class = list(csv.DictReader(handle))
    assert [row["label"] for row in per_class] == LABELS
    assert sum(int(row["support"]) for row in per_class) == 30
    assert set(per_class[0]) == {"label", "precision", "recall", "f1", "support"}
    for image in ("confusion_matrix.png", "training_curves.png"):
        assert (out_dir / image).read_bytes()[:4] == b"\x89PNG"
        assert image in (out_dir / "report.html").read_text(encoding="utf-8")


def test_evaluate_command_on_a_model_folder_has_no_training_curves(cli_run: dict[str, Any], tmp_path: Path) -> None:
    out_dir = tmp_path / "eval-model"
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(cli_run["run"] / "model"),
                "--data",
                str(cli_run["files"]["validation"]),
                "--output",
                str(out_dir),
            ]
        )
        == 0
    )
    assert (out_dir / "confusion_matrix.png").is_file()
    assert not (out_dir / "training_curves.png").exists()
    assert read_metrics(out_dir)["n_examples"] == 30


def test_evaluate_command_with_other_column_names(cli_run: dict[str, Any], tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.tsv"
    frame = pd.read_csv(cli_run["files"]["test"]).rename(columns={"text": "utterance", "label": "intent"})
    frame.to_csv(renamed, sep="\t", index=False)
    out_dir = tmp_path / "eval-renamed"
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(cli_run["run"]),
                "--data",
                str(renamed),
                "--output",
                str(out_dir),
                "--text-column",
                "utterance",
                "--label-column",
                "intent",
            ]
        )
        == 0
    )
    assert read_metrics(out_dir) == pytest.approx(read_metrics(cli_run["run"]), abs=1e-6)


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    rows = [{"id": i, "text": row["text"], "source": "mail"} for i, row in enumerate(make_rows(7, seed=9))]
    path = tmp_path / "in.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_predict_command(
    cli_run: dict[str, Any], input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    output = tmp_path / f"out{suffix}"
    assert (
        main(
            [
                "predict",
                str(cli_run["run"]),
                "--input",
                str(input_file),
                "--output",
                str(output),
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    assert f"7 predictions written to {output}" in capsys.readouterr().out
    frame = pd.read_json(output, lines=True) if suffix == ".jsonl" else pd.read_csv(output)
    source = pd.read_csv(input_file)
    assert list(frame.columns) == ["id", "text", "source", "label", "score"]
    assert frame["id"].tolist() == source["id"].tolist()
    assert frame["text"].tolist() == source["text"].tolist()
    expected = Predictor.from_dir(cli_run["run"]).predict(source["text"].tolist())
    assert frame["label"].tolist() == [p.label for p in expected]
    assert frame["score"].tolist() == pytest.approx([p.score for p in expected], abs=1e-6)
    assert set(frame["label"]) <= set(LABELS)


@pytest.mark.freezes_heap
def test_predict_command_exempts_the_loaded_objects_from_collection(
    cli_run: dict[str, Any], input_file: Path, tmp_path: Path
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert (
        main(["-q", "predict", str(cli_run["run"]), "--input", str(input_file), "--output", str(tmp_path / "o.csv")])
        == 0
    )
    assert gc.get_freeze_count() > 0  # the model and libraries are no longer walked by every full collection


def test_predict_command_with_sliding_window(cli_run: dict[str, Any], input_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "windows.csv"
    assert (
        main(
            [
                "-q",
                "predict",
                str(cli_run["run"] / "model"),
                "--input",
                str(input_file),
                "--output",
                str(output),
                "--sliding-window",
                "--stride",
                "8",
                "--aggregate",
                "max",
            ]
        )
        == 0
    )
    assert len(pd.read_csv(output)) == 7


def test_predict_command_with_sliding_window_defaults(
    cli_run: dict[str, Any], input_file: Path, tmp_path: Path
) -> None:
    assert (
        main(
            [
                "-q",
                "predict",
                str(cli_run["run"]),
                "--input",
                str(input_file),
                "--output",
                str(tmp_path / "windows.csv"),
                "--sliding-window",
            ]
        )
        == 0
    )


def test_version_through_python_m(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "adaptext", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"adaptext {__version__}"
