"""Contract tests of `adaptext export` (ONNX, optionally int8): adapters merged first, dynamic batch and sequence axes,
a folder plain onnxruntime runs, the check before writing (fp32 logits within 1e-4 and identical labels; int8
>= 99% agreement and accuracy within 1 point), and nothing written on any failure."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import adaptext.deploy.export as export_module
from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import load_config
from adaptext.core.outputs import write_marker
from adaptext.core.task import SINGLE_LABEL
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from adaptext.training.state import TrainResult
from conftest import FILLER, KEYWORDS, LABELS, LEARNABLE, make_pair_rows, make_rows

MAX_LENGTH = 32
LONG = " ".join(["the invoice is wrong and my parcel did not arrive with the courier"] * 12)  # > 32 and > 128 tokens
TEXTS = [
    "invoice",
    "where is my parcel today",
    "login error with the screen again and again why is it not working please help me today",
    "please help with the refund",
    "",
    "password",
    LONG,
]
PROMPT_METHODS = ["prefix_tuning", "prompt_tuning", "p_tuning"]
REQUIRED_FILES = {"model.onnx", "config.json", "adaptext.json", "tokenizer_config.json"}


# helpers --------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `adaptext ARGV` in-process: exit code, stdout, and (on exit 2) the single `error:` line, else stderr."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == EXIT_USER_ERROR:
        lines = [line for line in captured.err.splitlines() if line.startswith("adaptext export: error: ")]
        assert len(lines) == 1, captured.err
        return code, captured.out, lines[0]
    return code, captured.out, captured.err


def cli_quiet(*argv: str) -> tuple[int, str]:
    """Run `adaptext ARGV` outside a test function (module fixtures): exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to show a folder was left untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_leftovers(output: Path) -> None:
    """Neither the output nor the staging/backup folders of the swap exist."""
    siblings = {p.name for p in output.parent.iterdir()}
    assert not {output.name, output.name + ".tmp", output.name + ".old"} & siblings, siblings


def ort_logits(
    folder: Path, texts: list[str], pairs: list[str] | None = None, max_length: int | None = MAX_LENGTH
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The documented plain-onnxruntime usage of an export folder: its tokenizer, `model.onnx`, output `logits`."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    session = ort.InferenceSession(f"{folder}/model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    options: dict[str, Any] = {"truncation": True, "max_length": max_length} if max_length else {"truncation": True}
    encoded = tokenizer(texts, pairs, return_tensors="np", padding=True, **options)
    names = [i.name for i in session.get_inputs()]
    assert set(names) <= set(encoded), (names, list(encoded))
    (logits,) = session.run(["logits"], {name: encoded[name].astype(np.int64) for name in names})
    return logits, {name: encoded[name] for name in names}


def metadata(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "adaptext.json").read_text(encoding="utf-8"))


def make_multi_label_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    combos = [["billing"], ["shipping"], ["technical"], ["billing", "shipping"], ["shipping", "technical"]]
    rows = []
    for i in range(n):
        labels = combos[i % len(combos)]
        words = rng.sample(FILLER, 7 - 2 * len(labels))
        for label in labels:
            words += rng.sample(KEYWORDS[label], 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels})
    return rows


# fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export-data")
    files = {
        "train": folder / "train.csv",
        "validation": folder / "validation.csv",
        "small": folder / "small.csv",
        "unlabelled": folder / "unlabelled.csv",
        "ml_train": folder / "ml_train.jsonl",
        "ml_validation": folder / "ml_validation.jsonl",
        "pair_train": folder / "pair_train.csv",
        "pair_validation": folder / "pair_validation.csv",
    }
    pd.DataFrame(make_rows(120, seed=1)).to_csv(files["train"], index=False)
    pd.DataFrame(make_rows(30, seed=2)).to_csv(files["validation"], index=False)
    pd.DataFrame(make_rows(24, seed=1)).to_csv(files["small"], index=False)
    pd.DataFrame({"text": [r["text"] for r in make_rows(12, seed=5)]}).to_csv(files["unlabelled"], index=False)
    for split, n, seed in (("train", 40, 1), ("validation", 15, 2)):
        pd.DataFrame(make_multi_label_rows(n, seed)).to_json(files[f"ml_{split}"], orient="records", lines=True)
        pd.DataFrame(make_pair_rows(n, seed)).to_csv(files[f"pair_{split}"], index=False)
    return files


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`runs(name)`: a finished run, trained once per module.

    `full`: full fine-tuning that learned the task; `lora`: a LoRA adapter; a prompt-style method name; `multi`:
    multi-label; `pair`: text pairs; `moved`: a run with its own data files (the test may delete them).
    """
    folder = tmp_path_factory.mktemp("export-runs")
    cache: dict[str, TrainResult] = {}
    settings: dict[str, list[str]] = {
        "full": [*LEARNABLE],
        "mean": [*LEARNABLE, "model.pooling=mean"],
        "lora": ["peft.method=lora", "train.learning_rate=1e-2", "train.epochs=2", "train.batch_size=8"],
        "multi": [
            f"data.train={data['ml_train']}",
            f"data.validation={data['ml_validation']}",
            "data.multi_label=true",
            "train.threshold=0.4",
            "train.epochs=2",
            "train.learning_rate=2e-3",
        ],
        "pair": [
            f"data.train={data['pair_train']}",
            f"data.validation={data['pair_validation']}",
            "data.text_column=question",
            "data.text_pair_column=text",
            "train.epochs=2",
            "train.learning_rate=5e-3",
        ],
    }
    settings |= {
        m: [f"peft.method={m}", f"data.train={data['small']}", "train.epochs=1", "train.batch_size=8"]
        for m in PROMPT_METHODS
    }

    def get(name: str) -> TrainResult:
        if name in cache:
            return cache[name]
        extra = list(settings.get(name, []))
        if name == "moved":
            own = folder / "moved-data"
            own.mkdir()
            shutil.copy(data["small"], own / "train.csv")
            shutil.copy(data["validation"], own / "validation.csv")
            extra = [f"data.train={own / 'train.csv'}", f"data.validation={own / 'validation.csv'}", "train.epochs=1"]
        config = load_config(
            None,
            [
                f"model.name={tiny_model_dir}",
                f"data.train={data['train']}",
                f"data.validation={data['validation']}",
                f"output_dir={folder / name}",
                f"data.max_length={MAX_LENGTH}",
                "train.warmup_ratio=0",
                "train.precision=fp32",
                "seed=7",
                *extra,
            ],
        )
        cache[name] = train(config)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exports(runs: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`exports(name, quantize=None)`: (export folder, CLI stdout) of `runs(name)`, exported once per module."""
    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str | None], tuple[Path, str]] = {}

    def get(name: str, quantize: str | None = None) -> tuple[Path, str]:
        key = (name, quantize)
        if key not in cache:
            output = folder / f"{name}-{quantize or 'fp32'}"
            argv = ["export", str(runs(name).run_dir), "--format", "onnx", "--output", str(output)]
            code, out = cli_quiet(*argv, *(["--quantize", quantize] if quantize else []))
            assert code == 0, out
            cache[key] = (output, out)
        return cache[key]

    return get


# 1. fp32 export: contents, plain onnxruntime, Predictor ----------------------------------------


@pytest.mark.parametrize("name", ["full", "lora"])
def test_fp32_export_writes_a_complete_folder_with_check_numbers(exports: Any, runs: Any, name: str) -> None:
    output, stdout = exports(name)
    files = {p.name for p in output.iterdir()}
    assert files >= REQUIRED_FILES, files
    assert {"tokenizer.json", "vocab.txt"} & files, files  # the tokenizer itself, not only its config
    # A self-contained export: no PyTorch weights, no adapter, no external ONNX data beside it.
    assert not {f for f in files if f.endswith((".safetensors", ".bin", ".data", ".onnx_data"))}, files
    assert "adapter_config.json" not in files
    assert all(p.is_file() for p in output.iterdir())
    beside = {p.name for p in output.parent.iterdir()}
    assert not {output.name + ".tmp", output.name + ".old"} & beside

    meta = metadata(output)
    assert meta["backend"] == "onnx"
    assert meta["quantize"] is None
    assert meta["peft_method"] == "none"  # the adapter is merged into the weights
    assert meta["labels"] == LABELS
    assert meta["max_length"] == MAX_LENGTH
    check = meta["export_check"]
    assert check["quantize"] is None
    assert check["n_examples"] == 30  # the whole validation split (30 rows < default sample 512)
    assert 0.0 <= check["max_abs_diff"] <= 1e-4
    assert check["label_agreement"] == 1.0
    assert check["accuracy_torch"] == pytest.approx(check["accuracy_export"])
    assert check["size_export_mb"] == pytest.approx((output / "model.onnx").stat().st_size / 2**20)
    assert check["size_torch_mb"] > 0
    assert check["torch_texts_per_s"] > 0 and check["export_texts_per_s"] > 0
    assert "export check passed" in stdout
    assert str(output) in stdout

    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert {int(k): v for k, v in config["id2label"].items()} == dict(enumerate(LABELS))
    assert Predictor.from_dir(runs(name).run_dir).labels == LABELS


def test_lora_export_merges_a_trained_adapter(runs: Any, exports: Any, tiny_model_dir: Path) -> None:
    """The adapter changed the model, so an export that dropped it (instead of merging) would not match."""
    from adaptext.modeling.build import build_model

    adapter = Predictor.from_dir(runs("lora").run_dir, device="cpu")
    base = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL).eval()
    lora_only = {n: p for n, p in adapter.model.named_parameters() if "lora_B" in n}
    assert lora_only and any(p.abs().max() > 0 for p in lora_only.values()), "the LoRA weights never trained"
    output, _ = exports("lora")
    exported, _ = ort_logits(output, TEXTS)
    np.testing.assert_allclose(exported, adapter.predict_logits(TEXTS), atol=1e-4, rtol=0)
    merged_size = 4 * sum(p.numel() for p in base.parameters()) / 2**20
    assert metadata(output)["export_check"]["size_torch_mb"] == pytest.approx(merged_size, rel=1e-6)


@pytest.mark.parametrize("name", ["full", "lora"])
@pytest.mark.parametrize("batch", [1, 3, 7])
def test_plain_onnxruntime_matches_pytorch_for_any_batch_and_length(
    exports: Any, runs: Any, name: str, batch: int
) -> None:
    output, _ = exports(name)
    pytorch = Predictor.from_dir(runs(name).run_dir, device="cpu")
    texts = TEXTS[-batch:]  # batch 1 is the long text alone; 3 and 7 mix lengths (padding)
    logits, inputs = ort_logits(output, texts)
    assert logits.shape == (batch, len(LABELS))
    assert inputs["input_ids"].shape[0] == batch
    assert inputs["input_ids"].shape[1] == MAX_LENGTH  # the long text is truncated at the run's max_length
    np.testing.assert_allclose(logits, pytorch.predict_logits(texts), atol=1e-4, rtol=0)
    assert [LABELS[i] for i in logits.argmax(axis=1)] == [p.label for p in pytorch.predict(texts)]

    # Sequence lengths other than the traced example's, from 2 tokens up to the 128 positions of the model.
    for short in (["", "a", "invoice", "bug", "help", "why", "it"][:batch], TEXTS[:batch]):
        logits, inputs = ort_logits(output, short)
        np.testing.assert_allclose(logits, pytorch.predict_logits(short), atol=1e-4, rtol=0)
    # The saved tokenizer truncates where the run was trained and checked: its max_length, not the model's 128.
    _, inputs = ort_logits(output, [LONG] * batch, max_length=None)
    assert inputs["input_ids"].shape == (batch, MAX_LENGTH)
    logits, inputs = ort_logits(output, [LONG] * batch, max_length=128)  # the graph takes all 128 positions
    assert inputs["input_ids"].shape == (batch, 128)
    with torch.inference_mode():
        reference = pytorch.model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}).logits
    np.testing.assert_allclose(logits, reference.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["full", "lora"])
def test_predictor_serves_the_export_like_pytorch(exports: Any, runs: Any, name: str) -> None:
    output, _ = exports(name)
    pytorch = Predictor.from_dir(runs(name).run_dir, device="cpu")
    onnx = Predictor.from_dir(output)
    assert onnx.metadata["backend"] == "onnx"
    assert type(onnx.model).__name__ == "OnnxClassifier"
    assert onnx.labels == pytorch.labels == LABELS
    assert onnx.max_length == pytorch.max_length == MAX_LENGTH
    for batch_size in (1, 64):
        onnx.batch_size = batch_size
        got, want = onnx.predict(TEXTS), pytorch.predict(TEXTS)
        assert [p.label for p in got] == [p.label for p in want]
        for g, w in zip(got, want, strict=True):
            assert g.scores == pytest.approx(w.scores, abs=1e-5)


# 2. int8 -------------------------------------------------------------------------------------


def test_int8_export_is_quantized_checked_and_agrees_on_the_validation_file(
    exports: Any, runs: Any, data: dict[str, Path]
) -> None:
    import onnx

    output, stdout = exports("full", "int8")
    fp32, _ = exports("full")
    meta = metadata(output)
    assert meta["backend"] == "onnx"
    assert meta["quantize"] == "int8"
    check = meta["export_check"]
    assert check["quantize"] == "int8"
    assert check["n_examples"] == 30
    assert check["label_agreement"] >= 0.99
    assert check["accuracy_torch"] >= 0.9, "the run did not learn the task"
    assert check["accuracy_export"] >= check["accuracy_torch"] - 0.01
    assert check["max_abs_diff"] > 0  # quantized weights do not give the fp32 logits exactly
    assert "export check passed" in stdout and "accuracy" in stdout

    # It really is quantized: integer matmuls in the graph, and a smaller file than the fp32 export.
    ops = {node.op_type for node in onnx.load(str(output / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QLinearMatMul"}, ops
    assert (output / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    assert check["size_export_mb"] < metadata(fp32)["export_check"]["size_export_mb"]

    # The head (the dense layer before the classifier, and the classifier) stays fp32, as adaptext.json records.
    graph = onnx.load(str(output / "model.onnx")).graph
    names = {name: (name, f"{name}_MatMul") for name in check["fp32_nodes"]}  # the quantizer splits a Gemm
    kept = {name: node for node in graph.node for name, forms in names.items() if node.name in forms}
    assert len(check["fp32_nodes"]) == 2 and set(kept) == set(check["fp32_nodes"])
    assert all(node.op_type in ("MatMul", "Gemm") for node in kept.values())
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    assert all(any(name in floats for name in node.input) for node in kept.values())
    assert "matrix products kept in fp32" in stdout

    texts = pd.read_csv(data["validation"])["text"].tolist()
    int8 = Predictor.from_dir(output)
    assert int8.metadata["quantize"] == "int8"
    pytorch = Predictor.from_dir(runs("full").run_dir, device="cpu")
    got = [p.label for p in int8.predict(texts)]
    want = [p.label for p in pytorch.predict(texts)]
    agreement = np.mean([g == w for g, w in zip(got, want, strict=True)])
    assert agreement >= 0.99, (got, want)


def test_a_mean_pooled_export_computes_the_mean_without_the_pooling_layer_s_products(
    exports: Any, runs: Any, data: dict[str, Path]
) -> None:
    """The saved pooling layer is an encoder layer with a x1e6 output scale; the export carries the mean it computes
    (and its two LayerNorms) instead, and still matches the PyTorch model (the export check) and plain transformers."""
    import onnx
    from onnx import numpy_helper
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    output, _ = exports("mean", "int8")
    fp32, _ = exports("mean")
    assert metadata(fp32)["export_check"]["max_abs_diff"] <= 1e-4
    assert metadata(output)["export_check"]["label_agreement"] >= 0.99
    graph = onnx.load(str(fp32 / "model.onnx")).graph
    weights = [numpy_helper.to_array(init) for init in graph.initializer if len(init.dims) == 2]
    largest = max(float(abs(weight).max()) for weight in weights)
    assert largest < 1e3, largest
    model_dir = runs("mean").run_dir / "model"
    layers = AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_hidden_layers
    weighted = [
        n for n in graph.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & {i.name for i in graph.initializer}
    ]
    assert len(weighted) == 6 * (layers - 1) + 2  # the encoder's own layers and the head: none for the pooling layer

    texts = pd.read_csv(data["validation"])["text"].tolist()[:8]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    plain = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = plain(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    got = Predictor.from_dir(fp32).predict_logits(texts)
    np.testing.assert_allclose(got, expected, atol=1e-4)


# 3. failures write nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_prompt_style_adapters_are_refused(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a prompt-style adapter reached the ONNX exporter")

    monkeypatch.setattr(export_module, "_to_onnx", no_export)
    output = tmp_path / "out"
    code, _, error = run_cli(capsys, "export", str(runs(method).run_dir), "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert method in error and "cannot be" in error and "export" in error
    no_leftovers(output)


def perturb_logits(monkeypatch: pytest.MonkeyPatch, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make the exported model (as the check runs it) answer `change(logits)`."""
    original = export_module.OnnxClassifier.__call__

    def perturbed(self: Any, **inputs: torch.Tensor) -> Any:
        out = original(self, **inputs)
        out.logits = change(out.logits)
        return out

    monkeypatch.setattr(export_module.OnnxClassifier, "__call__", perturbed)


def test_fp32_logits_just_within_tolerance_pass(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    perturb_logits(monkeypatch, lambda logits: logits + 5e-5)
    output = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", str(runs("full").run_dir), "--output", str(output))
    assert code == 0, err
    assert 4e-5 < metadata(output)["export_check"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("existing", [False, True])
def test_fp32_mismatch_fails_with_the_numbers_and_writes_nothing(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    perturb_logits(monkeypatch, lambda logits: logits + 1e-3)  # labels unchanged, logits off by 10x the tolerance
    output = tmp_path / "out"
    if existing:
        output.mkdir()
        (output / "keep.txt").write_text("an earlier export", encoding="utf-8")
        (output / "model.onnx").write_bytes(b"old model")
        write_marker(output, "export")
    before = snapshot(output) if existing else None
    overwrite = ["--overwrite"] if existing else []
    code, _, error = run_cli(capsys, "export", str(runs("full").run_dir), "--output", str(output), *overwrite)
    assert code == EXIT_USER_ERROR
    assert "export check failed" in error
    assert "30 examples" in error
    found = re.search(r"max \|logit difference\| (\S+)", error)
    assert found and 9e-4 <= float(found.group(1).rstrip(",")) <= 1.1e-3, error
    assert "100.00%" in error  # the label agreement
    assert "0.0001" in error  # the tolerance it needed
    if existing:
        assert snapshot(output) == before
        assert {p.name for p in tmp_path.iterdir()} == {"out"}
    else:
        no_leftovers(output)


def test_fp32_changed_label_fails_whatever_the_logit_tolerance(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "FP32_TOLERANCE", 1e9)  # only the labels can fail the check now

    def flip_first(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[0] = logits[0].roll(1)
        return logits

    perturb_logits(monkeypatch, flip_first)
    output = tmp_path / "out"
    code, _, error = run_cli(capsys, "export", str(runs("full").run_dir), "--output", str(output), "--sample", "4")
    assert code == EXIT_USER_ERROR
    assert "export check failed" in error and "4 examples" in error and "75.00%" in error
    no_leftovers(output)


def test_int8_below_99_percent_agreement_fails_with_the_numbers(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def flip_first(logits: torch.Tensor) -> torch.Tensor:  # one of the 30 labels changes: 96.67% agreement
        logits = logits.clone()
        logits[0] = logits[0].roll(1)
        return logits

    perturb_logits(monkeypatch, flip_first)
    output = tmp_path / "out"
    code, _, error = run_cli(capsys, "export", str(runs("full").run_dir), "--quantize", "int8", "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert "export check failed" in error
    assert "96.67%" in error and "99%" in error
    assert "accuracy" in error
    no_leftovers(output)


def test_int8_that_fails_with_the_head_in_fp32_keeps_the_fewest_sensitive_products_in_fp32(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three planted sensitive products (both layers' value products and the first query product): while any of
    them is quantized the int8 logits move and one label flips. The search ranks them first, finds that keeping
    all three passes and two do not, and writes the model that keeps exactly them."""
    import onnx

    kept_calls: list[list[str]] = []
    sensitive: list[str] = []
    quantize = export_module._quantize_int8

    def recorded(source: Path, target: Path, fp32_products: Any = ()) -> list[str]:
        if not sensitive:
            kinds = export_module.product_kinds(onnx.load(str(source)))
            sensitive.extend(name for name, kind in kinds.items() if kind == "value")
            sensitive.append(next(name for name, kind in kinds.items() if kind == "query"))
        kept_calls.append(list(fp32_products))
        return quantize(source, target, fp32_products)

    def sensitive_products_quantized(logits: torch.Tensor) -> torch.Tensor:
        quantized = [name for name in sensitive if name not in kept_calls[-1]]
        if not quantized:
            return logits
        logits = logits.clone()
        logits[:, 0] += len(quantized)  # the mean |logit difference| grows with each one quantized
        logits[0] = logits[0].roll(1)  # and one label of 30 changes: 96.67% agreement
        return logits

    monkeypatch.setattr(export_module, "_quantize_int8", recorded)
    perturb_logits(monkeypatch, sensitive_products_quantized)
    output = tmp_path / "out"
    code, _, error = run_cli(capsys, "export", str(runs("full").run_dir), "--quantize", "int8", "--output", str(output))
    assert code == 0, error
    layers = 2  # the tiny model's
    products = 6 * layers
    # The tiny model's validation has no rows beside the check's 30: the search chooses on those too.
    assert kept_calls[:2] == [[], []]  # the head alone: judged, then its error on the choosing examples
    assert all(len(kept) == 1 for kept in kept_calls[2 : 2 + products])  # each product alone, to rank them
    searched = [len(kept) for kept in kept_calls[2 + products :]]
    assert searched == [6, 3, 1, 2, 3]  # bisection; the passing prefix is written again after the failing 2
    assert set(kept_calls[-1]) == set(sensitive) and len(sensitive) == 3
    check = metadata(output)["export_check"]
    assert check["label_agreement"] >= 0.99 and len(check["fp32_nodes"]) == 2 + 3  # the head and the three
    graph = onnx.load(str(output / "model.onnx")).graph
    floats = {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")}
    assert all(name in floats or f"{name}_MatMul" in floats for name in check["fp32_nodes"])
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == products - 3


def int8_check(kept: list[str], agreement: float, margin: float, logit: float) -> export_module.ExportCheck:
    """The check of an int8 form on 100 examples, as the search's tests plant it: `margin` its mean change of the
    decision margins, `logit` its mean |logit difference|."""
    return export_module.ExportCheck(
        quantize="int8",
        n_examples=100,
        max_abs_diff=1.0,
        mean_abs_diff=logit,
        mean_margin_change=margin,
        label_agreement=agreement,
        accuracy_torch=0.9,
        accuracy_export=0.9,
        size_torch_mb=1.0,
        size_export_mb=1.0,
        torch_texts_per_s=1.0,
        export_texts_per_s=1.0,
        fp32_nodes=kept,
    )


def fake_int8_search(
    monkeypatch: pytest.MonkeyPatch, sizes: list[int] | None = None, logit_rank: list[int] | None = None
) -> tuple[list[str], list[list[str]], Callable[[set[int]], Callable[[list[str]], export_module.ExportCheck]]]:
    """Eight encoder products (of equal size unless `sizes` says), p0 the one whose fp32 form lowers the margins'
    change most per weight, p7 least, and a quantizer that only records what it keeps in fp32 (`written`). The
    logits rank them the same, or as `logit_rank` lists them (most lowered first). `checker(needed)` passes the
    model at the target once every product whose index is in `needed` is in fp32."""
    names = [f"p{i}" for i in range(8)]
    weights = sizes or [1] * len(names)
    logit_order = logit_rank or list(range(len(names)))
    written: list[list[str]] = []

    def quantize(source: Path, target: Path, fp32_products: Any = ()) -> list[str]:
        written.append(list(fp32_products))
        return ["head", *fp32_products]

    def checker(needed: set[int]) -> Callable[[list[str]], export_module.ExportCheck]:
        def check(kept: list[str]) -> export_module.ExportCheck:
            quantized = [i for i, name in enumerate(names) if name not in written[-1]]  # the model at the target
            agreement = 0.95 if needed & set(quantized) else 1.0
            margin = float(sum((len(names) - i) * weights[i] for i in quantized))
            logit = float(sum((len(names) - logit_order.index(i)) * weights[i] for i in quantized))
            return int8_check(kept, agreement, margin, logit)

        return check

    monkeypatch.setattr(export_module, "_product_sizes", lambda source: dict(zip(names, weights, strict=True)))
    monkeypatch.setattr(export_module, "_quantize_int8", quantize)
    return names, written, checker


def test_the_int8_form_chosen_on_other_examples_is_judged_by_the_check_and_the_search_goes_on_when_it_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Eight products of equal size, p0 the most sensitive: the choosing examples pass once p0 and p1 stay in fp32,
    the check's examples need p2 as well. The chosen form (two) fails the check, so the bisection goes on above it,
    judged by the check, and ends at three, the form left at the target."""
    names, written, checker = fake_int8_search(monkeypatch)
    check = export_module._int8_that_passes(tmp_path / "a", tmp_path / "b", checker({0, 1, 2}), checker({0, 1}))
    assert check.passed and check.fp32_nodes == ["head", "p0", "p1", "p2"]
    assert written[-1] == ["p0", "p1", "p2"]
    assert [len(kept) for kept in written[2 + len(names) :]] == [4, 2, 1, 2, 5, 3]


def test_when_no_int8_form_passes_on_the_choosing_examples_fewer_products_are_tried_on_the_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same eight products: the choosing examples fail every form tried (seven in fp32 at most), the check's
    examples pass once p0 and p1 stay in fp32. Seven pass the check, so the bisection goes on below them, judged by
    the check, and ends at two; a check that only seven pass leaves seven at the target."""
    names, written, checker = fake_int8_search(monkeypatch)
    check = export_module._int8_that_passes(tmp_path / "a", tmp_path / "b", checker({0, 1}), checker(set(range(8))))
    assert check.passed and check.fp32_nodes == ["head", "p0", "p1"] and written[-1] == ["p0", "p1"]
    written.clear()
    seven, every = checker(set(range(7))), checker(set(range(8)))
    check = export_module._int8_that_passes(tmp_path / "a", tmp_path / "b", seven, every)
    assert check.passed and check.fp32_nodes == ["head", *names[:7]] and written[-1] == names[:7]


def test_product_kinds_name_each_encoder_product_and_the_head(exports: Any) -> None:
    import onnx

    output, _ = exports("full")
    kinds = export_module.product_kinds(onnx.load(str(output / "model.onnx")))
    layers = 2
    assert list(kinds.values()) == [*export_module.PRODUCT_KINDS * layers, "head", "head"]


def test_int8_with_an_unlabelled_data_file_is_an_error(
    runs: Any, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    argv = ["export", str(runs("full").run_dir), "--quantize", "int8", "--data", str(data["unlabelled"])]
    code, _, error = run_cli(capsys, *argv, "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert "int8" in error and "label" in error and "--data" in error
    no_leftovers(output)


def test_fp32_with_an_unlabelled_data_file_works(
    runs: Any, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    argv = ["export", str(runs("lora").run_dir), "--data", str(data["unlabelled"]), "--output", str(output)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    check = metadata(output)["export_check"]
    assert check["n_examples"] == 12
    assert check["accuracy_torch"] is None and check["accuracy_export"] is None


def test_output_equal_to_the_model_folder_is_refused(runs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = runs("full").model_dir
    before = snapshot(model_dir)
    code, _, error = run_cli(capsys, "export", str(runs("full").run_dir), "--output", str(model_dir))
    assert code == EXIT_USER_ERROR
    assert f"{model_dir}: this output folder would replace the input" in error
    assert snapshot(model_dir) == before


def test_output_equal_to_the_run_folder_is_refused(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run-copy"
    shutil.copytree(runs("full").run_dir, run_dir)
    before = snapshot(run_dir)
    code, _, _ = run_cli(capsys, "export", str(run_dir), "--output", str(run_dir))
    assert snapshot(run_dir) == before, "the run folder was replaced by the export"
    assert code == EXIT_USER_ERROR


def test_a_missing_run_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-run"
    code, _, error = run_cli(capsys, "export", str(missing), "--output", str(tmp_path / "out"))
    assert code == EXIT_USER_ERROR
    assert str(missing) in error
    assert {p.name for p in tmp_path.iterdir()} == set()


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_sample_zero_is_refused(runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    code, _, _ = run_cli(capsys, "export", str(runs("full").run_dir), "--output", str(output), "--sample", "0")
    assert code == EXIT_USER_ERROR
    no_leftovers(output)


def test_negative_sample_is_a_user_error(runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    code, _, error = run_cli(capsys, "export", str(runs("full").run_dir), "--output", str(output), "--sample", "-1")
    assert code == EXIT_USER_ERROR
    assert "sample" in error
    no_leftovers(output)


def test_exporting_an_export_again_is_a_clear_error(
    exports: Any, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = exports("full")
    output = tmp_path / "again"
    argv = ["export", str(source), "--data", str(data["validation"]), "--output", str(output)]
    code, _, error = run_cli(capsys, *argv)
    assert code == EXIT_USER_ERROR
    assert "onnx" in error.lower()
    no_leftovers(output)


# 4. multi-label and text pairs ----------------------------------------------------------------


def test_multi_label_export_verifies_and_serves_label_sets(exports: Any, runs: Any) -> None:
    output, _ = exports("multi")
    meta = metadata(output)
    assert meta["problem_type"] == "multi_label_classification"
    assert meta["export_check"]["n_examples"] == 15 and meta["export_check"]["label_agreement"] == 1.0
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert config["problem_type"] == "multi_label_classification"

    pytorch = Predictor.from_dir(runs("multi").run_dir, device="cpu")
    onnx = Predictor.from_dir(output)
    assert onnx.multi_label and onnx.threshold == pytorch.threshold == 0.4
    texts = ["my invoice and the parcel", "the login error", "refund for the crash", "why today", LONG]
    np.testing.assert_allclose(ort_logits(output, texts)[0], pytorch.predict_logits(texts), atol=1e-4, rtol=0)
    got, want = onnx.predict(texts), pytorch.predict(texts)
    assert [p.labels for p in got] == [p.labels for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.scores == pytest.approx(w.scores, abs=1e-5)


def test_text_pair_export_verifies_and_uses_the_second_text(exports: Any, runs: Any) -> None:
    output, _ = exports("pair")
    meta = metadata(output)
    assert (meta["text_column"], meta["text_pair_column"]) == ("question", "text")
    assert meta["export_check"]["n_examples"] == 15 and meta["export_check"]["label_agreement"] == 1.0

    pytorch = Predictor.from_dir(runs("pair").run_dir, device="cpu")
    onnx = Predictor.from_dir(output)
    texts = ["my order", "my order", "help", LONG]
    pairs = ["the invoice is wrong", "the parcel is late", "login error with the screen again", LONG]
    logits, inputs = ort_logits(output, texts, pairs)
    assert "token_type_ids" in inputs and inputs["token_type_ids"].max() == 1  # the second segment reaches it
    np.testing.assert_allclose(logits, pytorch.predict_logits(texts, pairs), atol=1e-4, rtol=0)
    assert not np.allclose(logits, ort_logits(output, texts)[0], atol=1e-3)  # the pair text changes the answer
    got, want = onnx.predict(texts, pairs), pytorch.predict(texts, pairs)
    assert [p.label for p in got] == [p.label for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.scores == pytest.approx(w.scores, abs=1e-5)


# 5. the run's validation data is gone ----------------------------------------------------------


def test_missing_validation_data_suggests_data_and_data_works(
    runs: Any, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs("moved")
    validation = Path(str(load_config(run.run_dir / "config.yaml").data.validation))
    assert validation.is_file()
    validation.unlink()
    output = tmp_path / "out"
    code, _, error = run_cli(capsys, "export", str(run.run_dir), "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert "--data" in error
    assert "validation" in error
    no_leftovers(output)

    code, _, err = run_cli(
        capsys, "export", str(run.run_dir), "--data", str(data["validation"]), "--output", str(output)
    )
    assert code == 0, err
    assert metadata(output)["export_check"]["n_examples"] == 30
    assert Predictor.from_dir(output).metadata["backend"] == "onnx"


def test_the_logit_tolerance_is_relative_to_large_logits() -> None:
    from adaptext.deploy.parity import compare_logits

    small = np.array([[0.5, -0.25], [0.1, 0.2]], dtype=np.float32)
    # Logits of size <= 1: the tolerance is the given one, absolute.
    assert compare_logits(small, small + 5e-5, 1e-4, SINGLE_LABEL).tolerance == 1e-4
    assert compare_logits(small, small + 5e-5, 1e-4, SINGLE_LABEL).passed
    assert not compare_logits(small, small + 5e-4, 1e-4, SINGLE_LABEL).passed
    # Logits in the hundreds (a zero-shot scorer at temperature 0.005): 1e-4 of the largest, so float32 rounding
    # (about 1e-5 of 200) passes and a real difference does not.
    large = small * 400
    check = compare_logits(large, large + 3e-3, 1e-4, SINGLE_LABEL)
    assert check.tolerance == pytest.approx(1e-4 * 200) and check.passed
    assert not compare_logits(large, large + 0.05, 1e-4, SINGLE_LABEL).passed


def test_the_margin_change_is_what_decides_the_labels() -> None:
    from adaptext.core.task import MULTI_LABEL
    from adaptext.deploy.parity import margin_change

    reference = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    # The same shift of every logit of a row decides nothing: no margin moves.
    assert margin_change(reference, reference + np.array([[5.0], [-2.0]]), SINGLE_LABEL) == 0.0
    # Row 0: top label 0 by 1.0 over label 1, now by 0.5 (0.5 less); row 1: label 1 by 2.0 over label 2, now label 2
    # leads by 1.0 (a margin of -1.0 on the reference's top label, 3.0 less).
    other = np.array([[2.0, 1.5, 0.0], [0.0, 3.0, 4.0]])
    assert margin_change(reference, other, SINGLE_LABEL) == pytest.approx((0.5 + 3.0) / 2)
    # Each label decided on its own: the mean |logit difference|.
    assert margin_change(reference, other, MULTI_LABEL) == pytest.approx(3.5 / 6)
    assert margin_change(reference[:0], other[:0], SINGLE_LABEL) == 0.0


def test_the_int8_search_ranks_the_products_by_the_margins_not_the_logits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """p0 lowers the margins' change most and the mean |logit difference| least when kept in fp32: the search
    ranks it first and keeps it alone, where a ranking by the logits would need every product."""
    _, written, checker = fake_int8_search(monkeypatch, logit_rank=[7, 6, 5, 4, 3, 2, 1, 0])
    check = export_module._int8_that_passes(tmp_path / "a", tmp_path / "b", checker({0}), checker({0}))
    assert check.passed and check.fp32_nodes == ["head", "p0"] and written[-1] == ["p0"]


def test_the_rows_an_int8_export_chooses_on_are_evenly_spread_and_never_the_checks(runs: Any, tmp_path: Path) -> None:
    from adaptext.core.info import ModelInfo, find_model_dir
    from adaptext.deploy.parity import parity_examples

    run_dir = runs("full").run_dir
    model_dir = find_model_dir(run_dir)
    info = ModelInfo.read(model_dir)
    file = tmp_path / "check.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(100)], "label": ["pos", "neg"] * 50}).to_csv(
        file, index=False
    )
    check = parity_examples(run_dir, model_dir, file, info, 30)
    rest = parity_examples(run_dir, model_dir, file, info, 30, rest=30)
    assert len(check) == 30 and len(rest) == 30
    assert not set(check.texts) & set(rest.texts)
    numbers = [int(text.split()[-1]) for text in rest.texts]
    assert numbers == sorted(numbers) and numbers[0] <= 2 and numbers[-1] >= 97  # spread over the file
    assert rest.labels == [["pos", "neg"][n % 2] for n in numbers]  # each row keeps its label
    assert len(parity_examples(run_dir, model_dir, file, info, 100, rest=30)) == 0  # the check took every row
    assert len(parity_examples(run_dir, model_dir, file, info, 60, rest=60)) == 40
    few = parity_examples(run_dir, model_dir, file, info, 10, rest=50)  # more rows to choose on than to check
    assert len(few) == 50 and not set(few.texts) & set(parity_examples(run_dir, model_dir, file, info, 10).texts)
    # a repeated text is the judged text wherever it stands in the file
    repeated = tmp_path / "repeated.csv"
    texts = [f"text number {i % 50}" for i in range(100)]  # rows 50-99 repeat rows 0-49
    pd.DataFrame({"text": texts, "label": ["pos", "neg"] * 50}).to_csv(repeated, index=False)
    judged = set(parity_examples(run_dir, model_dir, repeated, info, 20).texts)
    chosen = parity_examples(run_dir, model_dir, repeated, info, 20, rest=100)
    assert len(chosen) == 100 - 2 * len(judged) and not judged & set(chosen.texts)


def _graph_fp32_products(output: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(output / "model.onnx")).graph
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    return {
        node.name.removesuffix("_MatMul")
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and set(node.input) & floats
    }


@pytest.mark.parametrize("passes", [True, False])
def test_the_int8_search_chooses_on_held_out_rows_and_the_check_describes_its_own(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, passes: bool
) -> None:
    """300 labelled rows and --sample 100: the check takes 100, the search chooses on 100 others. The written model
    is the one whose check adaptext.json records; on failure the error gives the check's 100 examples."""
    import onnx

    file = tmp_path / "big.csv"
    pd.DataFrame(make_rows(300, seed=3)).to_csv(file, index=False)
    check_texts = set(pd.read_csv(file)["text"].iloc[np.unique(np.linspace(0, 299, 100).astype(int))])
    kept_calls: list[list[str]] = []
    sensitive: list[str] = []
    seen: list[tuple[int, bool]] = []  # (form index, texts are the check's)
    quantize = export_module._quantize_int8
    original = Predictor.predict_logits
    # The int8 forms answer with PyTorch's logits plus the faults below: the tiny model's own int8 noise (up to
    # 1.5 in a logit on some CPUs) is as large as the faults and would reorder the ranking by machine.
    reference = Predictor.from_dir(runs("full").run_dir)

    def recorded(source: Path, target: Path, fp32_products: Any = ()) -> list[str]:
        if not sensitive:
            kinds = export_module.product_kinds(onnx.load(str(source)))
            sensitive.extend(name for name, kind in kinds.items() if kind == "value")
        kept_calls.append(list(fp32_products))
        return quantize(source, target, fp32_products)

    def logits(self: Any, texts: Any, pairs: Any = None, **kwargs: Any) -> Any:
        if type(self.model).__name__ != "OnnxClassifier":
            return original(self, texts, pairs, **kwargs)
        out = original(reference, texts, pairs, **kwargs)
        seen.append((len(kept_calls), set(texts) <= check_texts))
        quantized = [name for name in sensitive if name not in kept_calls[-1]]
        if quantized or not passes:
            out = out.copy()
            out[:, 0] += len(quantized)
            out[:5] = np.roll(out[:5], 1, axis=1)  # 5 of 100 labels change
        return out

    monkeypatch.setattr(export_module, "_quantize_int8", recorded)
    monkeypatch.setattr(Predictor, "predict_logits", logits)
    output = tmp_path / "out"
    argv = ["export", str(runs("full").run_dir), "--quantize", "int8", "--data", str(file), "--sample", "100"]
    code, _, error = run_cli(capsys, *argv, "--output", str(output))
    assert seen[0] == (1, True)  # the head alone, judged by the check
    assert not any(on_check for _, on_check in seen[1:-1])  # ranked and bisected on other rows
    assert seen[-1][1]  # and judged by the check at the end
    if passes:
        assert code == 0, error
        check = metadata(output)["export_check"]
        assert check["n_examples"] == 100 and set(check["fp32_nodes"]) == _graph_fp32_products(output)
        assert set(sensitive) <= set(check["fp32_nodes"]) and len(check["fp32_nodes"]) == 2 + len(sensitive)
    else:
        assert code == EXIT_USER_ERROR and "100 examples" in error and "95.00%" in error
        no_leftovers(output)


def test_an_int8_search_with_one_encoder_product_returns_the_check_of_the_form_it_leaves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    written: list[list[str]] = []

    def quantize(source: Path, target: Path, fp32_products: Any = ()) -> list[str]:
        written.append(list(fp32_products))
        return ["head", *fp32_products]

    def check(kept: list[str]) -> export_module.ExportCheck:
        error = 1.0 - len(written[-1])
        return int8_check(kept, 1.0 if written[-1] else 0.95, error, error)

    monkeypatch.setattr(export_module, "_product_sizes", lambda source: {"p0": 1})
    monkeypatch.setattr(export_module, "_quantize_int8", quantize)
    result = export_module._int8_that_passes(tmp_path / "a", tmp_path / "b", check, check)
    assert ["head", *written[-1]] == result.fp32_nodes  # the model left at the target is the one checked


def test_an_int8_export_whose_head_alone_passes_runs_pytorch_once(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = Predictor.predict_logits

    def counted(self: Any, texts: Any, pairs: Any = None, **kwargs: Any) -> Any:
        if type(self.model).__name__ != "OnnxClassifier":
            calls.append(len(texts))
        return original(self, texts, pairs, **kwargs)

    monkeypatch.setattr(Predictor, "predict_logits", counted)
    output = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", str(runs("full").run_dir), "--quantize", "int8", "--output", str(output))
    assert code == 0, err
    assert len(metadata(output)["export_check"]["fp32_nodes"]) == 2 and calls == [30]
