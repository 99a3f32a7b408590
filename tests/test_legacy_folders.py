"""Folders saved by an earlier release (tests/fixtures/legacy, made by make_legacy_runs.py) still load and predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaptext.core.outputs import folder_kind
from adaptext.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent
LEGACY = Path("tests/fixtures/legacy")  # the adapter names its base model relative to the repository root


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def expected() -> dict[str, Any]:
    return json.loads((ROOT / LEGACY / "expected.json").read_text(encoding="utf-8"))


def test_the_fixture_is_there() -> None:
    folders = expected()["folders"]
    assert set(folders) == {"full", "lora", "fewshot", "full-onnx"}
    assert expected()["git_revision"]


@pytest.mark.parametrize("name", ["full", "lora", "fewshot", "full-onnx"])
def test_a_legacy_folder_predicts_what_it_did_when_saved(name: str) -> None:
    saved = expected()
    predictor = Predictor.from_dir(LEGACY / name)
    assert predictor.labels == saved["folders"][name]["labels"]
    logits = predictor.predict_logits(saved["texts"])
    np.testing.assert_allclose(logits, np.array(saved["folders"][name]["logits"]), atol=1e-5)


def test_a_legacy_model_folder_loads_with_plain_transformers() -> None:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(LEGACY / "full" / "model"), device="cpu")
    [answer] = classify(expected()["texts"][:1])
    assert answer["label"] in expected()["folders"]["full"]["labels"]


def test_legacy_folders_are_recognised_as_adaptext_folders() -> None:
    for name in ("full", "lora", "fewshot"):
        assert folder_kind(ROOT / LEGACY / name) == "run", name
    assert folder_kind(ROOT / LEGACY / "full-onnx") == "export"
