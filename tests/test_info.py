"""`ModelInfo` (the `adaptext.json` schema), the loader registry for kinds of saved folder, and `Task`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from adaptext.core.config import Config
from adaptext.core.errors import AdaptextError
from adaptext.core.info import METADATA_FILE, ModelInfo
from adaptext.core.task import MULTI_LABEL, SINGLE_LABEL, task_for, task_of, task_of_problem_type
from adaptext.inference.loaders import LOADERS, FolderLoader, loader_for
from adaptext.inference.predictor import Predictor

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"


def legacy_files() -> list[Path]:
    files = sorted(LEGACY.glob("**/adaptext.json"))
    assert files, "no legacy adaptext.json found"
    return files


def write_info(folder: Path, payload: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).write_text(json.dumps(payload), encoding="utf-8")
    return folder


# ModelInfo


def test_a_record_round_trips_through_its_file(tmp_path: Path) -> None:
    info = ModelInfo(
        format_version=1,
        base_model="minilm",
        strategy="zeroshot",
        labels=["a", "b"],
        problem_type="single_label_classification",
        max_length=64,
        text_pair_column=None,
        temperature=0.05,
        scorer="similarity",
        hypotheses=["It is a.", "It is b."],
        descriptions={"a": "about a"},
    )
    info.write(tmp_path)
    again = ModelInfo.read(tmp_path)
    assert again.model_dump() == info.model_dump() and again.to_dict() == info.to_dict()
    assert again.source == str(tmp_path / METADATA_FILE)
    # Exactly the keys that were set are written, `null`s included, and nothing else.
    assert json.loads((tmp_path / METADATA_FILE).read_text(encoding="utf-8")) == info.to_dict()
    assert set(info.to_dict()) == {
        "format_version",
        "base_model",
        "strategy",
        "labels",
        "problem_type",
        "max_length",
        "text_pair_column",
        "temperature",
        "scorer",
        "hypotheses",
        "descriptions",
    }


@pytest.mark.parametrize("path", legacy_files(), ids=lambda p: p.parent.relative_to(LEGACY).as_posix())
def test_a_legacy_record_reads_typed_and_rewrites_unchanged(path: Path, tmp_path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    info = ModelInfo.read(path.parent)
    assert info.labels == ["billing", "shipping", "technical"]
    assert info.task is SINGLE_LABEL
    assert info.max_length == 32 and info.threshold == 0.5 and info.text_pair_column is None
    assert info.to_dict() == raw  # same keys, same values: an older release reads what this one writes back
    info.write(tmp_path)
    assert json.loads((tmp_path / METADATA_FILE).read_text(encoding="utf-8")) == raw


def test_legacy_extras_are_typed_fields() -> None:
    assert ModelInfo.read(LEGACY / "fewshot" / "model").temperature == pytest.approx(0.14125375446227556)
    onnx = ModelInfo.read(LEGACY / "full-onnx")
    assert onnx.backend == "onnx" and onnx.quantize is None
    assert onnx.exported_from == "tests/fixtures/legacy/full/model"
    assert onnx.export_check is not None and onnx.export_check["n_examples"] == 30


def test_unknown_keys_are_kept_and_written_back(tmp_path: Path) -> None:
    write_info(tmp_path, {"format_version": 1, "labels": ["x", "y"], "from_a_newer_release": {"k": [1, 2]}})
    info = ModelInfo.read(tmp_path)
    assert info.labels == ["x", "y"]
    assert info.model_extra == {"from_a_newer_release": {"k": [1, 2]}}
    out = tmp_path / "out"
    out.mkdir()
    info.updated(backend="onnx").write(out)
    saved = json.loads((out / METADATA_FILE).read_text(encoding="utf-8"))
    assert saved["from_a_newer_release"] == {"k": [1, 2]} and saved["backend"] == "onnx"


def test_a_missing_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    info = ModelInfo.read(tmp_path)
    assert info.to_dict() == {}
    assert (info.threshold, info.text_column, info.label_column, info.label_delimiter) == (0.5, "text", "label", "|")
    assert info.format_version == 1
    assert info.max_length is None and info.labels is None and info.peft_method is None
    assert info.strategy is None and info.scorer is None and info.backend is None
    assert info.task is SINGLE_LABEL


def test_null_where_a_default_is_meant_reads_as_the_default(tmp_path: Path) -> None:
    write_info(tmp_path, {"text_column": None, "label_column": None, "label_delimiter": None, "threshold": None})
    info = ModelInfo.read(tmp_path)
    assert (info.threshold, info.text_column, info.label_column, info.label_delimiter) == (0.5, "text", "label", "|")


def test_label_names_are_strings(tmp_path: Path) -> None:
    write_info(tmp_path, {"labels": [0, 1], "problem_type": "multi_label_classification"})
    info = ModelInfo.read(tmp_path)
    assert info.labels == ["0", "1"] and info.task is MULTI_LABEL


def test_a_broken_record_names_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(AdaptextError, match=r"adaptext\.json: not valid JSON"):
        ModelInfo.read(tmp_path)
    (tmp_path / METADATA_FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(AdaptextError, match="expected a JSON object"):
        ModelInfo.read(tmp_path)
    write_info(tmp_path, {"max_length": "long"})
    with pytest.raises(AdaptextError, match=r"adaptext\.json: max_length"):
        ModelInfo.read(tmp_path)


def test_updated_refuses_a_name_the_schema_does_not_have() -> None:
    with pytest.raises(TypeError, match="temprature"):
        ModelInfo().updated(temprature=2.0)
    assert ModelInfo().updated(temperature=2.0).to_dict() == {"temperature": 2.0}


# The loader registry


def make_folder(root: Path, name: str, files: tuple[str, ...], info: dict[str, Any] | None = None) -> Path:
    folder = root / name
    folder.mkdir()
    for file in files:
        (folder / file).write_text("{}", encoding="utf-8")
    if info is not None:
        write_info(folder, info)
    return folder


def test_each_built_in_kind_is_picked_for_its_folder(tmp_path: Path) -> None:
    cases = {
        "transformers": make_folder(tmp_path, "plain", ("config.json",), {"strategy": "finetune"}),
        "adapter": make_folder(tmp_path, "adapter", ("adapter_config.json",), {"peft_method": "lora"}),
        "onnx": make_folder(tmp_path, "onnx", ("config.json", "model.onnx"), {"backend": "onnx"}),
        "nli": make_folder(tmp_path, "nli", ("config.json",), {"strategy": "zeroshot", "scorer": "nli"}),
        "prompt": make_folder(tmp_path, "prompt", ("config.json",), {"strategy": "prompt"}),
        # A zero-shot similarity scorer is a plain transformers classifier.
        "similarity": make_folder(tmp_path, "similarity", ("config.json",), {"scorer": "similarity"}),
    }
    expected = {"similarity": "transformers"}
    for kind, folder in cases.items():
        loader = loader_for(folder, ModelInfo.read(folder))
        assert loader is LOADERS.get(expected.get(kind, kind)), kind
    assert not LOADERS.get("prompt").plain_classifier and not LOADERS.get("nli").plain_classifier
    assert LOADERS.get("onnx").device == "cpu"


@pytest.mark.parametrize(
    ("folder", "kind"), [("full/model", "transformers"), ("lora/model", "adapter"), ("full-onnx", "onnx")]
)
def test_legacy_folders_get_their_loader(folder: str, kind: str) -> None:
    path = LEGACY / folder
    assert loader_for(path, ModelInfo.read(path)) is LOADERS.get(kind)


def test_a_folder_no_loader_handles_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AdaptextError, match="no loader handles this folder"):
        loader_for(tmp_path, ModelInfo())


class MadeUpLoader(FolderLoader):
    """A made-up kind of folder: `madeup.json` names the real model folder to load."""

    description = "made-up"

    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return (folder / "madeup.json").is_file()

    def load(self, folder: Path, info: ModelInfo) -> Any:
        self.loaded.append(folder)
        return AutoModelForSequenceClassification.from_pretrained(self._target(folder))

    def load_tokenizer(self, folder: Path) -> PreTrainedTokenizerBase:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self._target(folder))
        return tokenizer

    @staticmethod
    def _target(folder: Path) -> str:
        return str(json.loads((folder / "madeup.json").read_text(encoding="utf-8"))["model"])


def test_a_loader_registered_from_outside_is_used_by_predictor(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "madeup"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")  # a model folder to `find_model_dir`
    (folder / "madeup.json").write_text(json.dumps({"model": str(tiny_model_dir)}), encoding="utf-8")
    write_info(folder, {"format_version": 1, "max_length": 16, "threshold": 0.3, "text_column": "body"})
    loader = MadeUpLoader()
    assert loader_for(folder, ModelInfo.read(folder)) is LOADERS.get("transformers")
    LOADERS.add("madeup", loader)
    try:
        assert loader_for(folder, ModelInfo.read(folder)) is loader
        predictor = Predictor.from_dir(folder)
    finally:
        LOADERS.remove("madeup")
    assert loader.loaded == [folder]
    assert (predictor.max_length, predictor.threshold, predictor.info.text_column) == (16, 0.3, "body")
    assert predictor.metadata == {"format_version": 1, "max_length": 16, "threshold": 0.3, "text_column": "body"}
    assert len(predictor.labels) == 3 and not predictor.multi_label
    assert predictor.predict_proba(["a short text"]).shape == (1, 3)
    assert "madeup" not in LOADERS


# Task


def test_task_scores_softmax_or_sigmoid_in_the_logits_precision() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    single = SINGLE_LABEL.scores(logits)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(single[1], [1 / 3] * 3, rtol=1e-6)
    multi = MULTI_LABEL.scores(logits)
    np.testing.assert_allclose(multi[0], 1 / (1 + np.exp(-logits[0].astype(np.float64))), rtol=1e-6)
    assert SINGLE_LABEL.scores(np.array([[1, 2]])).dtype == np.float64  # integers are scored as float64


def test_task_decide_takes_the_top_label_or_every_label_over_the_threshold() -> None:
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.6, 0.1], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(
        SINGLE_LABEL.decide(probs, threshold=0.5),
        [[False, True, False], [True, False, False], [False, False, True]],  # a tie: the first label
    )
    np.testing.assert_array_equal(
        MULTI_LABEL.decide(probs, threshold=0.5),
        [[False, True, False], [True, True, False], [False, False, False]],  # 0.5 reaches the threshold
    )
    assert SINGLE_LABEL.decide(np.zeros((0, 3)), threshold=0.5).shape == (0, 3)


def test_tasks_from_flags_configs_and_problem_types() -> None:
    assert task_for(multi_label=True) is MULTI_LABEL and task_for(multi_label=False) is SINGLE_LABEL
    assert task_of(Config.model_validate({"data": {"multi_label": True}})) is MULTI_LABEL
    assert task_of(Config()) is SINGLE_LABEL
    assert task_of_problem_type("multi_label_classification") is MULTI_LABEL
    assert task_of_problem_type(None) is SINGLE_LABEL
    assert (MULTI_LABEL.activation, SINGLE_LABEL.activation) == ("sigmoid", "softmax")
    assert MULTI_LABEL.problem_type == "multi_label_classification"


def test_a_plugin_records_keys_of_its_own(tmp_path: Path) -> None:
    info = ModelInfo(labels=["a", "b"]).extended(temperature=0.5, centroid_norm="l2")
    info.write(tmp_path)
    back = ModelInfo.read(tmp_path)
    assert back.temperature == 0.5
    assert back.to_dict()["centroid_norm"] == "l2"
