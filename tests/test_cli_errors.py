"""`adaptext` on bad input: exit 2 with one `error:` line, before any training or any write to the run folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config, config_to_yaml
from conftest import make_rows

WriteFile = Callable[[str, list[dict[str, object]]], Path]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `adaptext ARGV` in-process; the exit code and stderr."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def error_line(stderr: str, command: str) -> str:
    """The single `error:` line of stderr, after checking there is no traceback and no continuation."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(f"adaptext {command}: error:")]
    assert len(found) == 1, stderr
    following = lines[found[0] + 1 : found[0] + 2]
    assert not (following and following[0][:1].isspace()), f"error message spans lines:\n{stderr}"
    return lines[found[0]]


@pytest.fixture
def good_rows() -> list[dict[str, object]]:
    return list(make_rows(30, seed=1))


@pytest.fixture
def config_file(tmp_path: Path, data_files: dict[str, Path], tiny_model_dir: Path) -> Path:
    """A valid config on the tiny model whose output_dir does not exist yet."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'run'}\n"
        f"model:\n  name: {tiny_model_dir}\n"
        f"data:\n  train: {data_files['train']}\n  validation: {data_files['validation']}\n"
        "  max_length: 32\n"
        "train:\n  epochs: 1\n  batch_size: 8\n  precision: fp32\n",
        encoding="utf-8",
    )
    return path


def _bad_train_file(tmp_path: Path, write_csv: WriteFile, case: str) -> Path:
    rows = list(make_rows(30, seed=1))
    if case == "missing file":
        return tmp_path / "does_not_exist.csv"
    if case == "empty file":
        path = tmp_path / "empty.csv"
        path.write_bytes(b"")
        return path
    if case == "header only":
        path = tmp_path / "header.csv"
        path.write_text("text,label\n", encoding="utf-8")
        return path
    if case == "missing column":
        return write_csv("bad.csv", [{"sentence": r["text"], "label": r["label"]} for r in rows])
    if case == "empty text":
        rows[2]["text"] = ""
        return write_csv("bad.csv", rows)
    if case == "undecodable bytes":
        path = tmp_path / "bad.csv"
        path.write_bytes(b"text,label\nmy invoice,billing\nbad \xff\xfe bytes,shipping\n")
        return path
    if case == "single class":
        return write_csv("bad.csv", make_rows(10, labels=["billing"]))
    if case == "unsupported suffix":
        path = tmp_path / "train.txt"
        path.write_text("text,label\na,b\n", encoding="utf-8")
        return path
    raise ValueError(case)


BAD_TRAIN = {
    "missing file": ["does_not_exist.csv", "not found"],
    "empty file": ["empty.csv", "empty"],
    "header only": ["header.csv", "no data rows"],
    "missing column": ["bad.csv", "'text' not found", "'sentence'"],
    "empty text": ["bad.csv", "row 3", "'text'"],
    "undecodable bytes": ["bad.csv", "line 3", "UTF-8"],
    "single class": ["bad.csv", "'billing'", "at least two"],
    "unsupported suffix": ["train.txt", "'.txt'"],
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_training_data_exits_2_before_training(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    write_csv: WriteFile,
    config_file: Path,
    case: str,
) -> None:
    train = _bad_train_file(tmp_path, write_csv, case)
    code, err = run_cli(capsys, "train", str(config_file), f"data.train={train}")
    assert code == EXIT_USER_ERROR
    line = error_line(err, "train")
    for needle in BAD_TRAIN[case]:
        assert needle in line
    assert not (tmp_path / "run").exists()


def test_unseen_validation_label_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, write_csv: WriteFile, config_file: Path
) -> None:
    rows = list(make_rows(6, seed=2))
    rows[3]["label"] = "refunds"
    validation = write_csv("bad_validation.csv", rows)
    code, err = run_cli(capsys, "train", str(config_file), f"data.validation={validation}")
    assert code == EXIT_USER_ERROR
    line = error_line(err, "train")
    assert "bad_validation.csv" in line
    assert "row 4" in line
    assert "'refunds'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["train.epoch=2"], ["train.epoch", "unknown key", "train.epochs"]),
        (["bogus=1"], ["bogus", "unknown key", "output_dir"]),
        (["train.batch_size=abc"], ["train.batch_size"]),
        (["train.precision=fp8"], ["train.precision", "fp32"]),
        (["train.epochs"], ["train.epochs", "key.path=value"]),
        (["data.test=t.csv", "data.test_fraction=0.1"], ["data.test_fraction"]),
    ],
)
def test_bad_config_exits_2_before_training(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    config_file: Path,
    overrides: list[str],
    needles: list[str],
) -> None:
    code, err = run_cli(capsys, "train", str(config_file), *overrides)
    assert code == EXIT_USER_ERROR
    assert "Traceback" not in err
    assert err.startswith("adaptext train: error:")
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["train.epoch=2", "train.batch_size=abc"])
def test_config_error_is_one_line(capsys: pytest.CaptureFixture[str], config_file: Path, override: str) -> None:
    code, err = run_cli(capsys, "train", str(config_file), override)
    assert code == EXIT_USER_ERROR
    assert override.split("=")[0] in error_line(err, "train")


def test_bad_key_in_config_file_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config_file: Path
) -> None:
    config_file.write_text(config_file.read_text(encoding="utf-8") + "learning_rate: 0.1\n", encoding="utf-8")
    code, err = run_cli(capsys, "train", str(config_file))
    assert code == EXIT_USER_ERROR
    assert str(config_file) in err
    assert "learning_rate: unknown key" in err
    assert not (tmp_path / "run").exists()


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == EXIT_USER_ERROR
    assert "nope.yaml" in error_line(err, "train")


def test_override_with_yaml_syntax_error_exits_2(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    code, err = run_cli(capsys, "train", str(config_file), "data.text_column=[")
    assert code == EXIT_USER_ERROR
    assert "data.text_column" in error_line(err, "train")


# --- an existing run folder is never touched by a failed start --------------------------------


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and modification time, and every folder, under `folder`."""
    state: dict[str, tuple[bytes, int] | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            state[str(Path(root, name).relative_to(folder)) + "/"] = None
        for name in files:
            path = Path(root, name)
            state[str(path.relative_to(folder))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return state


@pytest.fixture
def finished_run(tiny_config: Callable[..., Config], tmp_path: Path) -> tuple[Path, Path]:
    """(run folder, config file) of a run trained to the end on the tiny model."""
    from adaptext.strategies import train

    config = tiny_config("train.epochs=1", "train.batch_size=16", "train.checkpoint_steps=1000")
    result = train(config)
    assert result.run_dir.is_dir()
    config_path = tmp_path / "same_run.yaml"
    config_path.write_text(config_to_yaml(config), encoding="utf-8")
    return result.run_dir, config_path


def test_existing_run_is_untouched_by_failed_starts(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    write_csv: WriteFile,
    finished_run: tuple[Path, Path],
) -> None:
    run_dir, config_path = finished_run
    before = snapshot(run_dir)
    assert "model/config.json" in before
    assert "config.yaml" in before

    # Started without --resume/--overwrite: refused, naming both options.
    code, err = run_cli(capsys, "train", str(config_path))
    assert code == EXIT_USER_ERROR
    line = error_line(err, "train")
    assert "--resume" in line
    assert "--overwrite" in line
    assert str(run_dir) in line
    assert snapshot(run_dir) == before

    # Bad data is found before the folder is touched, in either mode that may write into it.
    rows = list(make_rows(12))
    rows[1]["text"] = ""
    bad = write_csv("bad_train.csv", rows)
    for mode in (["--overwrite"], ["--resume"]):
        code, err = run_cli(capsys, "train", str(config_path), f"data.train={bad}", *mode)
        assert code == EXIT_USER_ERROR, mode
        line = error_line(err, "train")
        assert "bad_train.csv" in line
        assert "row 2" in line
        assert snapshot(run_dir) == before, mode

    # A bad config with --overwrite does not get as far as clearing the folder either.
    code, err = run_cli(capsys, "train", str(config_path), "train.batch_size=abc", "--overwrite")
    assert code == EXIT_USER_ERROR
    assert "train.batch_size" in err
    assert snapshot(run_dir) == before


# --- resume, help, evaluate and predict ------------------------------------------------------


@pytest.mark.parametrize("exists", [True, False])
def test_resume_without_a_checkpoint_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config_file: Path, exists: bool
) -> None:
    run_dir = tmp_path / "run"
    if exists:
        run_dir.mkdir()
    code, err = run_cli(capsys, "train", str(config_file), "--resume")
    assert code == EXIT_USER_ERROR
    line = error_line(err, "train")
    assert "nothing to resume" in line
    assert str(run_dir) in line
    if exists:
        assert list(run_dir.iterdir()) == []
    else:
        assert not run_dir.exists()


def test_resume_and_overwrite_are_exclusive(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", str(config_file), "--resume", "--overwrite"])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["predict", "--help"]])
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adaptext")
    if argv == ["train", "--help"]:
        assert "--resume" in out
        assert "--overwrite" in out
        assert "key.path=value" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("adaptext ")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.fixture
def labelled_file(write_csv: WriteFile) -> Path:
    return write_csv("eval.csv", make_rows(6))


@pytest.mark.parametrize("make_folder", [False, True])
def test_evaluate_missing_model_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, labelled_file: Path, make_folder: bool
) -> None:
    model = tmp_path / "no_model"
    if make_folder:
        model.mkdir()
    output = tmp_path / "eval_out"
    code, err = run_cli(capsys, "evaluate", str(model), "--data", str(labelled_file), "--output", str(output))
    assert code == EXIT_USER_ERROR
    line = error_line(err, "evaluate")
    assert str(model) in line
    assert ("not a run folder" if make_folder else "no such model") in line
    assert not output.exists()


@pytest.mark.parametrize("make_folder", [False, True])
def test_predict_missing_model_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, labelled_file: Path, make_folder: bool
) -> None:
    model = tmp_path / "no_model"
    if make_folder:
        model.mkdir()
    output = tmp_path / "predictions.csv"
    code, err = run_cli(capsys, "predict", str(model), "--input", str(labelled_file), "--output", str(output))
    assert code == EXIT_USER_ERROR
    line = error_line(err, "predict")
    assert str(model) in line
    assert ("not a run folder" if make_folder else "no such model") in line
    assert not output.exists()


def test_sample_with_an_empty_label_delimiter_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], write_csv: WriteFile, tmp_path: Path
) -> None:
    data = write_csv("pool.csv", list(make_rows(12)))
    code, err = run_cli(
        capsys, "sample", str(data), "--per-class", "2", "--output", str(tmp_path / "s.csv"), "--label-delimiter", ""
    )
    assert code == EXIT_USER_ERROR
    assert "--label-delimiter" in error_line(err, "sample")
    assert not (tmp_path / "s.csv").exists()


def test_a_missing_optional_library_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from adaptext.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    assert main(["tune", "configs/quickstart.yaml", "--trials", "1"]) == 2  # checked before the config is read
    assert capsys.readouterr().err.strip() == (
        "adaptext tune: error: adaptext tune needs optuna, which is not installed: pip install 'adaptext[scale]'"
    )
