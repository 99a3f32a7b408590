"""No command loses a user's file: output folders and files are checked before any work, refusals touch nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_dir, folder_kind, replace_folder, write_marker
from adaptext.strategies import train
from adaptext.training.state import TrainResult


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `adaptext ARGV` in-process: the exit code and, on exit 2, the single error line (else stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == EXIT_USER_ERROR:
        lines = [line for line in err.splitlines() if ": error: " in line]
        assert len(lines) == 1, err
        return code, lines[0]
    return code, err


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder under `folder`."""
    state: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            state[str(Path(root, name).relative_to(folder)) + "/"] = None
        for name in files:
            state[str(Path(root, name).relative_to(folder))] = Path(root, name).read_bytes()
    return state


def user_folder(path: Path) -> Path:
    """A folder of the user's own files, as in the issue: a thesis and a folder of photos."""
    (path / "photos").mkdir(parents=True)
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff a photo")
    (path / "thesis.txt").write_text("four years of work\n", encoding="utf-8")
    # Names adaptext writes too: they must not be mistaken for an adaptext folder.
    (path / "metrics.json").write_text('{"mine": 1}\n', encoding="utf-8")
    (path / "report.html").write_text("<p>my report</p>\n", encoding="utf-8")
    (path / "labels.json").write_text("[]\n", encoding="utf-8")
    return path


class Runs(NamedTuple):
    full: TrainResult
    lora: TrainResult
    data: dict[str, Path]


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A full fine-tuning run and a LoRA run on the tiny model, trained once for the module."""
    from adaptext.core.config import load_config
    from conftest import write_splits

    folder = tmp_path_factory.mktemp("output-runs")
    files = write_splits(folder)
    common = [
        f"model.name={tiny_model_dir}",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        "data.max_length=32",
        "train.epochs=1",
        "train.batch_size=16",
        "train.precision=fp32",
    ]
    return Runs(
        full=train(load_config(None, [*common, f"output_dir={folder / 'full'}"])),
        lora=train(load_config(None, [*common, "peft.method=lora", f"output_dir={folder / 'lora'}"])),
        data=files,
    )


# --- export and merge (case 1) ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "merge"])
def test_export_and_merge_refuse_a_folder_of_the_users(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    target = user_folder(tmp_path / "d")
    before = snapshot(target)
    code, line = run_cli(capsys, command, str(runs.lora.run_dir), "--output", str(target))
    assert code == EXIT_USER_ERROR
    assert str(target) in line and "not a folder adaptext wrote" in line
    assert snapshot(target) == before
    # --overwrite does not make a user's folder fair game either.
    code, line = run_cli(capsys, command, str(runs.lora.run_dir), "--output", str(target), "--overwrite")
    assert code == EXIT_USER_ERROR
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging folder left behind


@pytest.mark.parametrize("command", ["export", "merge"])
def test_export_and_merge_replace_their_own_folder_only_with_overwrite(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    target = tmp_path / "out"
    target.mkdir()  # an empty folder is fine
    code, err = run_cli(capsys, command, str(runs.lora.run_dir), "--output", str(target))
    assert code == 0, err
    assert folder_kind(target) == ("export" if command == "export" else "merge")
    before = snapshot(target)
    code, line = run_cli(capsys, command, str(runs.lora.run_dir), "--output", str(target))
    assert code == EXIT_USER_ERROR
    assert "--overwrite" in line and str(target) in line
    assert snapshot(target) == before
    (target / "stale.txt").write_text("left by the earlier one", encoding="utf-8")
    code, err = run_cli(capsys, command, str(runs.lora.run_dir), "--output", str(target), "--overwrite")
    assert code == 0, err
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_refuses_a_folder_adaptext_wrote_for_something_else(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation = tmp_path / "eval"
    data = runs.data
    assert (
        run_cli(capsys, "evaluate", str(runs.full.run_dir), "--data", str(data["test"]), "--output", str(evaluation))[0]
        == 0
    )
    before = snapshot(evaluation)
    code, line = run_cli(capsys, "export", str(runs.full.run_dir), "--output", str(evaluation), "--overwrite")
    assert code == EXIT_USER_ERROR
    assert "evaluation report folder" in line
    assert snapshot(evaluation) == before


# --- train (case 2) -----------------------------------------------------------------------------


def test_train_refuses_a_folder_of_the_users(
    tiny_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = user_folder(tmp_path / "mine")
    before = snapshot(target)
    config_file = tmp_path / "run.yaml"
    from adaptext.core.config import config_to_yaml

    config_file.write_text(config_to_yaml(tiny_config("train.max_steps=2")), encoding="utf-8")
    for mode in ([], ["--overwrite"]):
        code, line = run_cli(capsys, "train", str(config_file), f"output_dir={target}", *mode)
        assert code == EXIT_USER_ERROR, mode
        assert str(target) in line and "not a folder adaptext wrote" in line
        assert snapshot(target) == before


@pytest.mark.parametrize("where", ["root", "home", "cwd"])
def test_train_refuses_root_home_and_the_current_folder(
    tiny_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()  # empty, and still refused: the current folder is never an output folder
    monkeypatch.chdir(work)
    output = {"root": "/", "home": "~/", "cwd": "."}[where]  # a bare ~ is YAML for null
    with pytest.raises(AdaptextError, match="adaptext does not write its output there") as caught:
        train(tiny_config(f"output_dir={output}", "train.max_steps=2"), overwrite=True)
    assert {"root": "the root folder", "home": "your home folder", "cwd": "the current folder"}[where] in str(
        caught.value
    )
    assert list(home.iterdir()) == [] and list(work.iterdir()) == []


def test_train_refuses_an_output_folder_holding_its_inputs(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    first = train(tiny_config("train.max_steps=2", f"output_dir={tmp_path / 'first'}"))
    before = snapshot(first.run_dir)
    # Fine-tuning on from the run's own model into the same folder would delete the model it starts from.
    with pytest.raises(AdaptextError, match="would replace the input"):
        train(
            tiny_config("train.max_steps=2", f"model.name={first.model_dir}", f"output_dir={first.run_dir}"),
            overwrite=True,
        )
    assert snapshot(first.run_dir) == before


def test_train_into_an_empty_folder_and_over_its_own_run(tiny_config: Callable[..., Config], tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    train(tiny_config("train.max_steps=2", f"output_dir={target}"))
    assert folder_kind(target) == "run"
    (target / "notes.txt").write_text("mine", encoding="utf-8")  # a user's file kept in a run folder
    with pytest.raises(AdaptextError, match="--overwrite"):
        train(tiny_config("train.max_steps=2", f"output_dir={target}"))
    train(tiny_config("train.max_steps=2", f"output_dir={target}"), overwrite=True)
    assert (target / "notes.txt").read_text(encoding="utf-8") == "mine"


# --- evaluate (case 3) --------------------------------------------------------------------------


def test_evaluate_never_writes_into_the_run_folder(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs.full.run_dir
    before = snapshot(run_dir)
    for mode in ([], ["--overwrite"]):
        code, line = run_cli(
            capsys, "evaluate", str(run_dir), "--data", str(runs.data["test"]), "--output", str(run_dir), *mode
        )
        assert code == EXIT_USER_ERROR
        assert str(run_dir) in line
        assert snapshot(run_dir) == before


def test_evaluate_replaces_its_own_report_only_with_overwrite(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", str(runs.full.run_dir), "--data", str(runs.data["test"]), "--output", str(out)]
    assert run_cli(capsys, *args)[0] == 0
    before = snapshot(out)
    code, line = run_cli(capsys, *args)
    assert code == EXIT_USER_ERROR and "--overwrite" in line
    assert snapshot(out) == before
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert (out / "metrics.json").is_file() and folder_kind(out) == "evaluation"


def test_evaluate_refuses_a_folder_of_the_users(runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = user_folder(tmp_path / "mine")
    before = snapshot(target)
    code, _ = run_cli(
        capsys,
        "evaluate",
        str(runs.full.run_dir),
        "--data",
        str(runs.data["test"]),
        "--output",
        str(target),
        "--overwrite",
    )
    assert code == EXIT_USER_ERROR
    assert snapshot(target) == before


# --- predict and sample (case 4) ----------------------------------------------------------------


def test_predict_never_writes_over_its_input(runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = tmp_path / "gold.csv"
    gold.write_bytes(runs.data["test"].read_bytes())
    before = gold.read_bytes()
    for mode in ([], ["--overwrite"]):
        code, line = run_cli(
            capsys, "predict", str(runs.full.run_dir), "--input", str(gold), "--output", str(gold), *mode
        )
        assert code == EXIT_USER_ERROR
        assert "overwrite the input" in line and str(gold) in line
        assert gold.read_bytes() == before


def test_predict_replaces_an_existing_file_only_with_overwrite(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.csv"
    out.write_text("precious\n", encoding="utf-8")
    args = ["predict", str(runs.full.run_dir), "--input", str(runs.data["test"]), "--output", str(out)]
    code, line = run_cli(capsys, *args)
    assert code == EXIT_USER_ERROR and "--overwrite" in line
    assert out.read_text(encoding="utf-8") == "precious\n"
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert out.read_text(encoding="utf-8").startswith("text,")


def test_sample_refuses_an_existing_output_without_overwrite(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "few.csv"
    out.write_text("precious\n", encoding="utf-8")
    args = ["sample", str(runs.data["train"]), "--per-class", "2", "--output", str(out)]
    code, line = run_cli(capsys, *args)
    assert code == EXIT_USER_ERROR and str(out) in line
    assert out.read_text(encoding="utf-8") == "precious\n"
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert out.read_text(encoding="utf-8") != "precious\n"


def test_tilde_is_expanded_in_output_paths(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    code, err = run_cli(
        capsys, "predict", str(runs.full.run_dir), "--input", str(runs.data["test"]), "--output", "~/p.csv"
    )
    assert code == 0, err
    assert (tmp_path / "p.csv").is_file()
    assert not Path("~").exists()


# --- the rules themselves ------------------------------------------------------------------------


def test_a_failed_write_leaves_the_earlier_folder_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "export"
    replace_folder(target, lambda folder: (folder / "model.onnx").write_bytes(b"v1"), "export")
    before = snapshot(target)

    def fail(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        replace_folder(target, fail, "export")
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_sibling_named_like_a_staging_folder_is_not_touched(tmp_path: Path) -> None:
    target = tmp_path / "export"
    for sibling in ("export.tmp", "export.old"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "mine.txt").write_text("keep", encoding="utf-8")
    replace_folder(target, lambda folder: (folder / "model.onnx").write_bytes(b"v1"), "export")
    replace_folder(target, lambda folder: (folder / "model.onnx").write_bytes(b"v2"), "export")
    assert (target / "model.onnx").read_bytes() == b"v2"
    for sibling in ("export.tmp", "export.old"):
        assert (tmp_path / sibling / "mine.txt").read_text(encoding="utf-8") == "keep"


def test_folder_kinds_from_markers_and_from_earlier_releases(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n", encoding="utf-8")
    (run / "labels.json").write_text("[]\n", encoding="utf-8")
    assert folder_kind(run) == "run"  # a run folder written before the marker
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"")
    (export / "adaptext.json").write_text("{}", encoding="utf-8")
    assert folder_kind(export) == "export"
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "adaptext.json").write_text('{"merged_from": "runs/x/model"}', encoding="utf-8")
    assert folder_kind(merged) == "merge"
    assert folder_kind(user_folder(tmp_path / "mine")) is None
    write_marker(tmp_path / "mine", "evaluation")
    assert folder_kind(tmp_path / "mine") == "evaluation"
    (tmp_path / "mine" / ".adaptext").write_text("not json", encoding="utf-8")
    assert folder_kind(tmp_path / "mine") is None


def test_a_file_where_a_folder_is_wanted_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(AdaptextError, match="is not a folder"):
        check_output_dir(tmp_path / "file", "export", overwrite=True)
