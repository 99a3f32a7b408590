"""`adaptext ensemble`: the ensemble folder (the weighted mean of the members' probabilities, loaded by `Predictor`,
served, self-contained), its refusals, `--average-weights`, and SWA in the training engine (the saved model is the
mean of the averaged steps' weights; a resumed run ends with the same weights)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo
from adaptext.deploy.ensemble import average_weights, build_ensemble
from adaptext.deploy.serve import create_app, load_models
from adaptext.inference.loaders import LOADERS, loader_for
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from adaptext.strategies.finetune import classifier
from adaptext.training.callbacks import Callback
from adaptext.training.lifecycle import save_model
from adaptext.training.state import TrainingState
from adaptext.training.swa import SWA_FILE
from conftest import LABELS, SimulatedCrashError, read_log, stop_at

TEXTS = [
    "my invoice is wrong again",
    "where is my parcel today",
    "login error with the screen",
    "please help with the refund",
    "the courier did not arrive with my package",
]


def member_config(tiny_model_dir: Path, *overrides: str) -> Config:
    return load_config(None, [f"model.name={tiny_model_dir}", "data.max_length=32", *overrides])


def save_member(
    config: Config, folder: Path, seed: int, labels: list[str] = LABELS, *, scramble_lora: bool = False
) -> Path:
    """A model folder as a run saves it: the tiny model with a fresh head of `seed` (a peft adapter per `config`)."""
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    model = classifier(config, labels, steps=10)
    if scramble_lora:  # LoRA starts as the identity; give the adapter weights of its own
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)
    save_model(model, AutoTokenizer.from_pretrained(config.model.name), config, folder)
    return folder


@pytest.fixture(scope="module")
def members(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders of the 3 labels: `full0`, `full1` (full models), `lora0`, `lora1` (LoRA adapters, one base),
    `multi0`, `multi1` (multi-label full models)."""
    root = tmp_path_factory.mktemp("members")
    full = member_config(tiny_model_dir)
    lora = member_config(tiny_model_dir, "peft.method=lora")
    multi = member_config(tiny_model_dir, "data.multi_label=true")
    return {
        "full0": save_member(full, root / "full0", 0),
        "full1": save_member(full, root / "full1", 1),
        "lora0": save_member(lora, root / "lora0", 2, scramble_lora=True),
        "lora1": save_member(lora, root / "lora1", 3, scramble_lora=True),
        "multi0": save_member(multi, root / "multi0", 4),
        "multi1": save_member(multi, root / "multi1", 5),
    }


def weighted_mean(folders: list[Path], weights: list[float]) -> np.ndarray:
    total = sum(weights)
    probs = [Predictor.from_dir(folder).predict_proba(TEXTS) for folder in folders]
    return sum(w / total * p for w, p in zip(weights, probs, strict=True))  # type: ignore[return-value]


# the ensemble folder -----------------------------------------------------------------------------


def test_ensemble_probabilities_are_the_weighted_mean_of_full_models_and_adapters(
    members: dict[str, Path], tmp_path: Path
) -> None:
    folders = [members["full0"], members["lora0"], members["lora1"]]
    result = build_ensemble(folders, tmp_path / "ens", weights=[1.0, 2.0, 1.0])
    assert result.weights == pytest.approx([0.25, 0.5, 0.25]) and result.labels == LABELS

    ensemble = Predictor.from_dir(tmp_path / "ens")
    assert loader_for(tmp_path / "ens", ensemble.info) is LOADERS.get("ensemble")
    assert ensemble.labels == LABELS and not ensemble.multi_label
    expected = weighted_mean(folders, [1.0, 2.0, 1.0])
    np.testing.assert_allclose(ensemble.predict_proba(TEXTS), expected, rtol=0, atol=1e-6)
    # The members disagree, so a wrong weighting or a member left out would show.
    assert np.abs(expected - Predictor.from_dir(members["full0"]).predict_proba(TEXTS)).max() > 0.05
    # The two adapters hold one base model in memory.
    lora0, lora1 = ensemble.model.members[1], ensemble.model.members[2]  # type: ignore[index]
    base0 = lora0.get_base_model().bert.embeddings.word_embeddings.weight
    assert base0.data_ptr() == lora1.get_base_model().bert.embeddings.word_embeddings.weight.data_ptr()

    record = json.loads((tmp_path / "ens" / "adaptext.json").read_text(encoding="utf-8"))
    assert [m["weight"] for m in record["ensemble"]] == pytest.approx([0.25, 0.5, 0.25])
    assert [m["source"] for m in record["ensemble"]] == [str(f) for f in folders]
    assert [m["kind"] for m in record["ensemble"]] == ["transformers", "adapter", "adapter"]


def test_multi_label_ensemble_averages_the_sigmoids(members: dict[str, Path], tmp_path: Path) -> None:
    folders = [members["multi0"], members["multi1"]]
    build_ensemble(folders, tmp_path / "ens")
    ensemble = Predictor.from_dir(tmp_path / "ens")
    assert ensemble.multi_label
    np.testing.assert_allclose(ensemble.predict_proba(TEXTS), weighted_mean(folders, [1, 1]), rtol=0, atol=1e-6)


def test_the_folder_works_after_the_runs_are_deleted_in_predict_and_serve(
    members: dict[str, Path], tmp_path: Path, write_csv: Callable[..., Path]
) -> None:
    copies = [shutil.copytree(members[name], tmp_path / name) for name in ("full0", "full1")]
    expected = weighted_mean(copies, [3, 1])
    output = tmp_path / "ens"
    assert main(["ensemble", str(copies[0]), str(copies[1]), "--output", str(output), "--weights", "3,1"]) == 0
    for folder in copies:
        shutil.rmtree(folder)

    np.testing.assert_allclose(Predictor.from_dir(output).predict_proba(TEXTS), expected, rtol=0, atol=1e-6)
    data = write_csv("texts.csv", [{"text": text} for text in TEXTS])
    assert main(["predict", str(output), "--input", str(data), "--output", str(tmp_path / "out.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "out.csv")
    assert list(predicted["label"]) == [LABELS[i] for i in expected.argmax(axis=1)]

    models = load_models([str(output)])
    with TestClient(create_app(models)) as client:
        response = client.post("/predict", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    for row, probs in zip(response.json(), expected, strict=True):
        scores = {item["label"]: item["score"] for item in row}
        np.testing.assert_allclose([scores[label] for label in LABELS], probs, rtol=0, atol=1e-5)


# refusals ----------------------------------------------------------------------------------------


def test_members_with_other_labels_are_refused_naming_the_member(
    members: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = member_config(tiny_model_dir)
    reordered = save_member(config, tmp_path / "reordered", 0, labels=[LABELS[1], LABELS[0], LABELS[2]])
    fewer = save_member(config, tmp_path / "fewer", 0, labels=["billing", "shipping", "returns"])
    with pytest.raises(AdaptextError, match=r"reordered: its labels differ .*another order \(position 0: 'shipping'"):
        build_ensemble([members["full0"], reordered], tmp_path / "out")
    with pytest.raises(AdaptextError, match=r"fewer: its labels differ .*lacks 'technical'.*'returns' in addition"):
        build_ensemble([members["full0"], fewer], tmp_path / "out")
    with pytest.raises(AdaptextError, match=r"multi0: is multi-label, .*full0 is single-label"):
        build_ensemble([members["full0"], members["multi0"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_member_with_another_tokenizer_is_refused(members: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertTokenizerFast

    other = shutil.copytree(members["full1"], tmp_path / "other")
    vocab = dict(AutoTokenizer.from_pretrained(other).get_vocab())
    vocab["extra"] = len(vocab)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(other)
    with pytest.raises(AdaptextError, match=r"other: tokenizes differently from .*full0"):
        build_ensemble([members["full0"], other], tmp_path / "out")


def test_output_rules_and_bad_arguments(members: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    output = tmp_path / "ens"
    pair = [str(members["full0"]), str(members["full1"])]
    assert main(["ensemble", *pair, "--output", str(output)]) == 0
    capsys.readouterr()
    assert main(["ensemble", *pair, "--output", str(output)]) == EXIT_USER_ERROR
    assert "already holds an adaptext ensemble; use --overwrite" in capsys.readouterr().err
    assert main(["ensemble", *pair, "--output", str(output), "--weights", "1,3", "--overwrite"]) == 0
    assert [m.weight for m in ModelInfo.read(output).ensemble or []] == pytest.approx([0.25, 0.75])

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["ensemble", *pair, "--output", str(user), "--overwrite"]) == EXIT_USER_ERROR
    assert "not a folder adaptext wrote" in capsys.readouterr().err
    assert (user / "notes.txt").read_text(encoding="utf-8") == "keep me"

    for argv, message in [
        ([pair[0]], "at least two members"),
        ([*pair, "--weights", "1"], "1 weights for 2 members"),
        ([*pair, "--weights", "1,-2"], "positive"),
        ([pair[0], pair[0]], "the same model as"),
        ([str(output), pair[0]], "is an ensemble itself; name its members instead"),
    ]:
        assert main(["ensemble", *argv, "--output", str(tmp_path / "new")]) == EXIT_USER_ERROR, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "new").exists()


def test_average_weights_is_the_weighted_mean_of_each_tensor(members: dict[str, Path], tmp_path: Path) -> None:
    folders = [members["full0"], members["full1"]]
    average_weights(folders, tmp_path / "avg", weights=[3.0, 1.0])
    tensors = [load_file(str(folder / "model.safetensors")) for folder in folders]
    averaged = load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert set(averaged) == set(tensors[0])
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * tensors[0][key] + 0.25 * tensors[1][key], atol=1e-6, rtol=0)
    assert ModelInfo.read(tmp_path / "avg").averaged_from == [str(f) for f in folders]
    assert Predictor.from_dir(tmp_path / "avg").predict_proba(TEXTS).shape == (len(TEXTS), 3)
    with pytest.raises(AdaptextError, match="lora0: its weight files"):
        average_weights([members["full0"], members["lora0"]], tmp_path / "mixed")


# SWA ---------------------------------------------------------------------------------------------


class Snapshots(Callback):
    """The model's weights (its state dict, as a folder saves them) after every optimizer step, by step."""

    def __init__(self) -> None:
        self.model: Any = None
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        self.model = model

    def on_step_end(self, state: TrainingState) -> None:
        self.weights[state.global_step] = {
            name: value.detach().clone() for name, value in self.model.state_dict().items()
        }


# Without calibration, which would divide the saved head by its temperature after the average.
SWA = ("train.epochs=1", "train.swa_start=0.5", "train.swa_every=2", "train.checkpoint_steps=3", "calibrate=false")


def saved_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_swa_saves_the_mean_of_the_averaged_steps_and_resumes_to_the_same_weights(
    tiny_config: Callable[..., Config], tmp_path: Path
) -> None:
    snapshots = Snapshots()
    straight = train(tiny_config(*SWA, f"output_dir={tmp_path / 'straight'}"), callbacks=[snapshots])
    steps = sorted(snapshots.weights)
    assert steps[-1] == straight.global_step == 15  # 120 examples in batches of 8
    averaged = [8, 10, 12, 14]  # from ceil(0.5 * 15) = 8, every 2
    saved = saved_weights(straight.run_dir)
    assert "bert.embeddings.word_embeddings.weight" in saved.keys() & snapshots.weights[15].keys()
    for name in saved.keys() & snapshots.weights[15].keys():
        mean = torch.stack([snapshots.weights[step][name] for step in averaged]).mean(dim=0)
        torch.testing.assert_close(saved[name], mean, atol=1e-6, rtol=1e-5)
    last_head = snapshots.weights[15]["classifier.weight"]
    assert (saved["classifier.weight"] - last_head).abs().max() > 1e-4  # not the last step's weights
    swa_records = [r for r in read_log(straight.run_dir) if r.get("swa")]
    assert len(swa_records) == 1 and swa_records[0]["step"] == 15
    assert straight.best_step == 15 and straight.best_metric == swa_records[0]["eval_macro_f1"]

    config = tiny_config(*SWA, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(10))  # the checkpoint of step 9 holds the average of step 8
    assert (tmp_path / "resumed" / "checkpoint" / SWA_FILE).is_file()
    resumed = train(config, resume=True)
    for name, value in saved_weights(resumed.run_dir).items():
        torch.testing.assert_close(value, saved[name], atol=1e-5, rtol=0)
    assert [r for r in read_log(resumed.run_dir) if r.get("swa")] == [
        {k: pytest.approx(v) if isinstance(v, float) else v for k, v in swa_records[0].items()}
    ]


def test_swa_options_are_checked() -> None:
    assert load_config(None, ["train.swa_start=0.75"]).train.swa_every == 1
    for bad in ("train.swa_start=1", "train.swa_start=-0.1", "train.swa_every=0"):
        with pytest.raises(AdaptextError, match=bad.split("=")[0].removeprefix("train.")):
            load_config(None, [bad])
