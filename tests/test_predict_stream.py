"""Predicting a file in chunks: the same rows as one pass, bounded memory, resuming an interrupted run, the CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.errors import AdaptextError, DataError
from adaptext.inference.files import partial_paths, predict_file
from adaptext.inference.predictor import Prediction, Predictor
from adaptext.inference.stream import ChunkWriter, read_chunks
from conftest import LABELS, make_rows

SRC = Path(__file__).resolve().parents[1] / "src"


def save_classifier(tiny_model_dir: Path, folder: Path, *, multi_label: bool = False) -> Path:
    """The tiny BERT with a seeded random 3-label head, saved as a plain transformers classifier folder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(11)
    model = BertForSequenceClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tiny_model_dir, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def multi_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tiny_model_dir, tmp_path_factory.mktemp("multi"), multi_label=True)


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_dir(model_dir)


def input_rows(n: int = 53) -> list[dict[str, Any]]:
    return [{"id": 1000 - i, "text": row["text"], "note": f"n{i}"} for i, row in enumerate(make_rows(n, seed=4))]


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    if path.suffix == ".tsv":
        return pd.read_csv(path, sep="\t", keep_default_na=False)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


@pytest.mark.parametrize(
    ("source", "target"),
    [("in.csv", "out.csv"), ("in.jsonl", "out.jsonl"), ("in.parquet", "out.parquet"), ("in.tsv", "out.tsv")],
)
def test_chunks_predict_as_one_pass(
    predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path, source: str, target: str
) -> None:
    rows = input_rows()
    output = tmp_path / target
    assert predict_file(predictor, write_csv(source, rows), output, chunk_size=7) == len(rows)  # 8 chunks

    out = read_output(output)
    assert list(out.columns) == ["id", "text", "note", "label", "score"]
    assert out["id"].astype(int).tolist() == [row["id"] for row in rows]
    assert out["note"].tolist() == [row["note"] for row in rows]
    expected = predictor.predict([row["text"] for row in rows])
    assert out["label"].tolist() == [p.label for p in expected]
    assert out["score"].astype(float).tolist() == pytest.approx([p.score for p in expected], abs=1e-6)
    assert not any(partial.exists() for partial in partial_paths(output))
    if target.endswith(".parquet"):
        import pyarrow.parquet as pq

        assert pq.ParquetFile(output).metadata.num_row_groups == 8  # one per chunk


def test_chunked_csv_is_the_one_pass_file(predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path) -> None:
    source = write_csv("in.csv", input_rows())
    predict_file(predictor, source, tmp_path / "one.csv", chunk_size=1000)
    predict_file(predictor, source, tmp_path / "chunked.csv", chunk_size=5)
    one, chunked = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "chunked.csv")
    pd.testing.assert_frame_equal(one.drop(columns="score"), chunked.drop(columns="score"))
    np.testing.assert_allclose(one["score"], chunked["score"], atol=1e-6)


@pytest.mark.parametrize("target", ["out.csv", "out.jsonl", "out.parquet"])
def test_multi_label_formatting_is_kept(
    multi_dir: Path, write_csv: Callable[..., Path], tmp_path: Path, target: str
) -> None:
    predictor = Predictor.from_dir(multi_dir)
    rows = input_rows(30)
    predict_file(predictor, write_csv("in.csv", rows), tmp_path / target, chunk_size=4, label_delimiter="|")
    expected = predictor.predict([row["text"] for row in rows])
    assert any(len(p.labels) > 1 for p in expected) or any(not p.labels for p in expected)
    out = read_output(tmp_path / target)
    if target.endswith(".csv"):
        assert out["label"].tolist() == ["|".join(p.labels) for p in expected]
        assert out["score"].tolist() == ["|".join(f"{p.scores[n]:.6f}" for n in p.labels) for p in expected]
    else:
        assert [list(v) for v in out["label"]] == [p.labels for p in expected]
        for got, p in zip(out["score"], expected, strict=True):
            assert list(got) == pytest.approx([p.scores[n] for n in p.labels], abs=1e-6)


def test_reader_yields_bounded_chunks_of_a_large_file(tmp_path: Path) -> None:
    n, size = 200_000, 3_000
    source = tmp_path / "big.csv"
    pd.DataFrame({"id": range(n), "text": [f"text {i}" for i in range(n)]}).to_csv(source, index=False)
    seen, first_rows = 0, []
    for chunk in read_chunks(source, ["text"], chunk_size=size):
        assert 0 < len(chunk) <= size
        assert len(chunk.texts) == len(chunk)
        first_rows.append(chunk.first_row)
        assert chunk.texts[0] == f"text {seen}"
        seen += len(chunk)
    assert seen == n
    assert first_rows == list(range(1, n + 1, size))
    skipped = next(read_chunks(source, ["text"], chunk_size=size, skip=12_345))
    assert skipped.first_row == 12_346 and skipped.texts[0] == "text 12345"


def test_writer_keeps_no_rows_in_memory(tmp_path: Path) -> None:
    writer = ChunkWriter(tmp_path / "out.csv.partial", ".csv", name=tmp_path / "out.csv")
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    writer.write(frame, 1)
    size = writer.position
    writer.write(frame, 3)
    assert writer.position == (tmp_path / "out.csv.partial").stat().st_size > size  # on disk, not buffered
    assert not [value for value in vars(writer).values() if isinstance(value, pd.DataFrame | list)]
    writer.finish(tmp_path / "out.csv")
    assert pd.read_csv(tmp_path / "out.csv")["text"].tolist() == ["a", "b", "a", "b"]


MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from adaptext.inference.files import predict_file

class Prediction:
    label, score, labels, scores, ood_score = "a", 0.9, ["a"], {"a": 0.9, "b": 0.1}, None

class Info:
    ood = None

class Constant:  # the file machinery without a model (and without importing torch)
    labels, multi_label, threshold, max_length, temperature, info = ["a", "b"], False, 0.5, 32, 1.0, Info()
    def predict(self, texts, pairs=None, **options):
        return [Prediction()] * len(texts)

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

folder = Path(sys.argv[1])
predict_file(Constant(), folder / "small.csv", folder / "small.jsonl", chunk_size=2000)
before = peak_mib()
predict_file(Constant(), folder / "large.csv", folder / "large.jsonl", chunk_size=2000)
print(peak_mib() - before)
"""


def test_memory_stays_flat_in_the_file_size(tmp_path: Path) -> None:
    for name, rows in (("small", 20_000), ("large", 200_000)):
        texts = [f"some words of a short text {i}" for i in range(rows)]
        pd.DataFrame({"id": range(rows), "text": texts}).to_csv(tmp_path / f"{name}.csv", index=False)
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "TQDM_DISABLE": "1", "PATH": ""},
    )
    # Reading the large file whole (as one frame) raises the peak by over 100 MiB; chunks of 2000 rows do not.
    assert int(done.stdout.split()[-1]) < 20, done.stdout
    assert len((tmp_path / "large.jsonl").read_text(encoding="utf-8").splitlines()) == 200_000


class SimulatedCrashError(Exception):
    pass


def crashing(predictor: Predictor, after: int) -> Predictor:
    """A copy of `predictor` whose predict raises on call `after + 1`, as a crash in chunk `after + 1` would."""
    calls = {"n": 0}
    flaky = copy.copy(predictor)

    def predict(texts: Sequence[str], pairs: Sequence[str] | None = None, **options: Any) -> list[Prediction]:
        calls["n"] += 1
        if calls["n"] > after:
            raise SimulatedCrashError(f"chunk {calls['n']}")
        return predictor.predict(texts, pairs, **options)

    flaky.predict = predict  # type: ignore[method-assign]
    return flaky


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_resume_finishes_an_interrupted_file(
    predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path, suffix: str
) -> None:
    source = write_csv("in.csv", input_rows())
    whole = tmp_path / f"whole{suffix}"
    predict_file(predictor, source, whole, chunk_size=6)

    output = tmp_path / f"out{suffix}"
    partial, record = partial_paths(output)
    with pytest.raises(SimulatedCrashError):
        predict_file(crashing(predictor, after=3), source, output, chunk_size=6)
    assert not output.exists()
    assert json.loads(record.read_text(encoding="utf-8"))["rows_done"] == 18
    if suffix != ".parquet":
        with partial.open("ab") as file:
            file.write(b'half a row, "cut off')  # a chunk the crash left half written

    with pytest.raises(AdaptextError, match=r"--resume .* --overwrite"):
        predict_file(predictor, source, output, chunk_size=6)
    assert predict_file(predictor, source, output, chunk_size=6, resume=True) == 53
    assert not partial.exists() and not record.exists()
    if suffix == ".parquet":
        pd.testing.assert_frame_equal(read_output(output), read_output(whole))
    else:
        assert output.read_bytes() == whole.read_bytes()  # no row lost, none twice


def test_resume_refuses_a_changed_input_or_options(
    predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    source = write_csv("in.csv", input_rows())
    output = tmp_path / "out.csv"
    with pytest.raises(SimulatedCrashError):
        predict_file(crashing(predictor, after=1), source, output, chunk_size=10)
    with pytest.raises(AdaptextError, match="sliding_window"):
        predict_file(predictor, source, output, chunk_size=10, resume=True, sliding_window=True)
    with source.open("a", encoding="utf-8") as file:
        file.write("1,an extra row,n\n")
    with pytest.raises(AdaptextError, match="has changed"):
        predict_file(predictor, source, output, chunk_size=10, resume=True)
    assert predict_file(predictor, source, output, chunk_size=10, overwrite=True) == 54  # starts over


def test_a_bad_row_is_named_before_anything_is_written(
    predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    rows = input_rows(40)
    rows[33]["text"] = ""
    output = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"in\.csv: row 34: column 'text' is empty"):
        predict_file(predictor, write_csv("in.csv", rows), output, chunk_size=5)
    assert not output.exists() and not any(p.exists() for p in partial_paths(output))


def test_read_errors_name_the_line(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 4: not valid JSON"):
        list(read_chunks(bad_json, ["text"], chunk_size=1))
    bad_utf8 = tmp_path / "bad.csv"
    bad_utf8.write_bytes(b"text\nfine\nnot \xff fine\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: bytes b'\\xff' are not valid UTF-8"):
        list(read_chunks(bad_utf8, ["text"], chunk_size=1))
    fields = tmp_path / "fields.csv"
    fields.write_text("text,note\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"fields\.csv: line 3: expected 2 fields as in the header, found 3"):
        list(read_chunks(fields, ["text"], chunk_size=1))


def test_cli_streams_and_resumes(
    model_dir: Path, predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    source = write_csv("in.jsonl", input_rows())
    args = ["predict", str(model_dir), "--input", str(source), "--chunk-size", "8"]
    assert main([*args, "--output", str(tmp_path / "whole.parquet")]) == 0

    output = tmp_path / "out.parquet"
    original = Predictor.predict
    calls = {"n": 0}

    def predict(self: Predictor, *a: Any, **k: Any) -> list[Prediction]:
        calls["n"] += 1
        if calls["n"] > 2:
            raise SimulatedCrashError("stopped")
        return original(self, *a, **k)

    monkeypatch.setattr(Predictor, "predict", predict)
    with pytest.raises(SimulatedCrashError):
        main([*args, "--output", str(output)])
    monkeypatch.setattr(Predictor, "predict", original)
    capsys.readouterr()
    assert main([*args, "--output", str(output)]) == EXIT_USER_ERROR
    assert "use --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main([*args, "--output", str(output), "--resume"]) == 0
    assert "53 predictions written" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_output(output), read_output(tmp_path / "whole.parquet"))
    assert main([*args, "--output", str(output), "--resume"]) == EXIT_USER_ERROR  # complete: not again
    assert "already exists; use --overwrite" in capsys.readouterr().err


def test_help_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys; from adaptext.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'ray', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_run_stopped_before_its_first_chunk_leaves_nothing_to_resume(
    predictor: Predictor, write_csv: Callable[..., Path], tmp_path: Path
) -> None:
    source, output = write_csv("in.csv", input_rows(10)), tmp_path / "out.csv"
    with pytest.raises(AdaptextError, match="stride"):
        predict_file(predictor, source, output, sliding_window=True, stride=-1)
    assert not any(p.exists() for p in partial_paths(output))
    assert predict_file(predictor, source, output) == 10  # neither --resume nor --overwrite needed
