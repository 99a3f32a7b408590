"""Contract tests of `strategy: prompt` (PET): the cloze encoding, the verbalizer, the classifier's logits checked
against a plain masked LM by hand, training, the saved folder and the errors."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from adaptext.cli import main
from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.inference.predictor import Predictor
from adaptext.modeling.cloze import encode_prompts, verbalizer_ids
from adaptext.strategies import train
from adaptext.training.callbacks import Callback
from adaptext.training.state import TrainResult
from conftest import LABELS, SimulatedCrashError, make_rows, read_log, stop_at

TEMPLATE = "{text} it is {mask} ."
VERBALIZER = {"billing": "invoice", "shipping": "parcel", "technical": "crash"}
# Under these settings the tiny masked LM learns the keyword task through the verbalizer (validation accuracy 1.0
# for seeds 1-3 and 7); at 2e-3 and batch 4 it stays between 0.37 and 0.7.
PROMPT_LEARNABLE = ("train.epochs=6", "train.batch_size=8", "train.learning_rate=5e-3")
PROBE_TEXTS = [
    "my invoice is not with the refund again",
    "the parcel is not with the courier today",
    "login error with the screen",
    "please help with the refund",
    " ".join(["the courier is not with my package"] * 10),  # longer than max_length
]
BUILD_INPUTS_BUG = (
    "BUG: encode_prompts calls tokenizer.build_inputs_with_special_tokens, which transformers 5 fast tokenizers "
    "(TokenizersBackend, e.g. BertTokenizer) do not have: AttributeError on every prompt encoding"
)


@pytest.fixture(scope="module")
def tiny_mlm_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised masked-LM BERT with the tiny model's config and tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(tiny_model_dir)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny_mlm_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mlm_dir)


def prompt_config(model_dir: Path, folder: Path, *overrides: str) -> Config:
    train_file = folder / "train.csv"
    if not train_file.exists():
        pd.DataFrame(make_rows(120, seed=1)).to_csv(train_file, index=False)
        pd.DataFrame(make_rows(30, seed=2)).to_csv(folder / "validation.csv", index=False)
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.train={train_file}",
            f"data.validation={folder / 'validation.csv'}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            "train.precision=fp32",
            "seed=7",
            "strategy=prompt",
            f"prompt.template='{TEMPLATE}'",
            "prompt.verbalizer={" + ", ".join(f"{k}: {v}" for k, v in VERBALIZER.items()) + "}",
            *overrides,
        ],
    )


# encoding ---------------------------------------------------------------------------------------


def test_each_prompt_is_the_filled_template_with_one_mask(tokenizer: Any) -> None:
    texts = ["my invoice is wrong", "login error", " ".join(["the parcel did not arrive"] * 40)]
    features = encode_prompts(tokenizer, TEMPLATE, texts, None, max_length=24)
    assert set(features) == {"input_ids", "attention_mask"}
    mask_id = tokenizer.mask_token_id
    for ids, attention in zip(features["input_ids"], features["attention_mask"], strict=True):
        assert ids.count(mask_id) == 1
        assert len(ids) <= 24 and attention == [1] * len(ids)
    # A short text is encoded as the tokenizer encodes the filled template.
    for text, ids in zip(texts[:2], features["input_ids"][:2], strict=True):
        assert ids == tokenizer(f"{text} it is {tokenizer.mask_token} .")["input_ids"]
    # A long text is cut; the template's tail with the mask survives.
    long_ids = features["input_ids"][2]
    assert len(long_ids) == 24
    tail = tokenizer(f"it is {tokenizer.mask_token} .", add_special_tokens=False)["input_ids"]
    assert long_ids[0] == tokenizer.cls_token_id
    assert long_ids[-len(tail) - 1 : -1] == tail and long_ids[-1] == tokenizer.sep_token_id
    assert long_ids[1:6] == tokenizer("the parcel did not arrive", add_special_tokens=False)["input_ids"]


def test_pair_templates_place_both_texts_and_shorten_the_longer(tokenizer: Any) -> None:
    template = "{text} ? {mask} , {pair}"
    texts = ["where is my parcel", "my order"]
    pairs = ["it did not arrive", " ".join(["the courier is late again"] * 30)]
    features = encode_prompts(tokenizer, template, texts, pairs, max_length=20)
    short, long = features["input_ids"]
    mask = tokenizer.mask_token
    assert short == tokenizer(f"{texts[0]} ? {mask} , {pairs[0]}")["input_ids"]
    assert len(long) == 20 and long.count(tokenizer.mask_token_id) == 1
    # The short first text is kept whole; the long pair is what was cut.
    assert long[: 1 + 2] == tokenizer(f"{texts[1]}")["input_ids"][:-1]


def test_a_pair_template_without_pairs_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(AdaptextError, match=r"\{pair\}"):
        encode_prompts(tokenizer, "{text} ? {mask} , {pair}", ["a text"], None, max_length=32)


def test_a_max_length_too_small_for_the_template_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(AdaptextError, match="max_length=8"):
        encode_prompts(tokenizer, "{text} it is really about the order and {mask} .", ["a text"], None, max_length=8)


@pytest.mark.parametrize(
    "template", ["{text} it was good .", "it was {mask} .", "{text} {text} {mask}", "{text} {mask} {mask}"]
)
def test_a_template_without_exactly_one_text_and_mask_is_a_config_error(template: str) -> None:
    with pytest.raises(ConfigError, match=r"prompt\.template"):
        load_config(None, ["strategy=prompt", f"prompt.template='{template}'"])


# the verbalizer ---------------------------------------------------------------------------------


def test_verbalizer_ids_are_the_words_token_ids_in_label_order(tokenizer: Any) -> None:
    ids = verbalizer_ids(tokenizer, VERBALIZER, ["shipping", "billing", "technical"])
    assert ids == tokenizer.convert_tokens_to_ids(["parcel", "invoice", "crash"])
    # Without a word, a label stands for itself.
    labels = ["refund", "parcel", "bug"]
    assert verbalizer_ids(tokenizer, {}, labels) == tokenizer.convert_tokens_to_ids(labels)
    assert verbalizer_ids(tokenizer, {"parcel": "courier"}, labels) == tokenizer.convert_tokens_to_ids(
        ["refund", "courier", "bug"]
    )


def test_a_word_of_several_tokens_is_a_config_error_naming_word_and_label(tokenizer: Any) -> None:
    with pytest.raises(ConfigError) as info:
        verbalizer_ids(tokenizer, {**VERBALIZER, "shipping": "parcel-tracking"}, LABELS)
    message = str(info.value)
    assert "'parcel-tracking'" in message and "'shipping'" in message and "3 tokens" in message


def test_two_labels_on_one_token_is_a_config_error(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="same token"):
        verbalizer_ids(tokenizer, {**VERBALIZER, "technical": "invoice"}, LABELS)
    with pytest.raises(ConfigError, match="same token"):  # a label's own name that another label's word repeats
        verbalizer_ids(tokenizer, {"billing": "crash"}, ["billing", "crash"])


def test_a_word_unknown_to_the_vocabulary_is_a_config_error(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="'money'"):
        verbalizer_ids(tokenizer, {**VERBALIZER, "billing": "money"}, LABELS)


def test_a_verbalizer_for_an_unknown_label_is_a_config_error(tiny_mlm_dir: Path, tmp_path: Path) -> None:
    config = prompt_config(tiny_mlm_dir, tmp_path, "prompt.verbalizer={refunds: refund}")
    with pytest.raises(ConfigError, match="'refunds'"):
        train(config)
    assert not (tmp_path / "run").exists()


# the trained prompt model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_run(tiny_mlm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("prompt")
    config = prompt_config(tiny_mlm_dir, folder, *PROMPT_LEARNABLE)
    saved: list[torch.nn.Module] = []

    class KeepSaved(Callback):
        def on_save(self, model: Any, target: Path) -> None:
            saved.append(copy.deepcopy(model).eval())

    result = train(config, callbacks=[KeepSaved()])
    return {"config": config, "result": result, "saved": saved, "folder": folder}


def test_prompt_training_learns_and_writes_a_run_folder(prompt_run: dict[str, Any]) -> None:
    result: TrainResult = prompt_run["result"]
    run = result.run_dir
    assert {"config.yaml", "metrics.json", "run_stats.json", "train_log.jsonl", "report.html", "model"} <= {
        p.name for p in run.iterdir()
    }
    stats = json.loads((run / "run_stats.json").read_text(encoding="utf-8"))
    assert stats["strategy"] == "prompt" and stats["train_seconds"] > 0
    assert 0 < stats["trainable_parameters"] == stats["total_parameters"]
    losses = [r["loss"] for r in read_log(run) if "loss" in r]
    assert len(losses) >= 4
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.global_step == 90  # 6 epochs of 15 batches
    assert result.metrics["accuracy"] >= 0.8, result.metrics  # chance is 1/3

    saved = json.loads((result.model_dir / "adaptext.json").read_text(encoding="utf-8"))
    assert saved["strategy"] == "prompt" and saved["labels"] == LABELS
    assert saved["template"] == TEMPLATE and saved["verbalizer"] == VERBALIZER
    assert saved["max_length"] == 32


def test_the_saved_prompt_model_predicts_as_the_trained_one(prompt_run: dict[str, Any]) -> None:
    trained = prompt_run["saved"][-1]  # the best model of the run, the last one saved
    predictor = Predictor.from_dir(prompt_run["result"].run_dir)
    assert predictor.labels == LABELS and not predictor.multi_label
    in_memory = Predictor(trained, predictor.tokenizer, max_length=32)
    np.testing.assert_allclose(predictor.predict_logits(PROBE_TEXTS), in_memory.predict_logits(PROBE_TEXTS), atol=1e-5)
    assert [p.label for p in predictor.predict(PROBE_TEXTS[:3])] == LABELS


def test_prompt_logits_are_the_masked_lm_logits_of_the_verbalizer_words(prompt_run: dict[str, Any]) -> None:
    """The PET verbalizer by hand: fill the template, run the plain masked LM, read the words' logits at the
    mask."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model_dir = prompt_run["result"].model_dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mlm = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    word_ids = tokenizer.convert_tokens_to_ids([VERBALIZER[label] for label in LABELS])
    texts = PROBE_TEXTS[:4]
    expected = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer(f"{text} it is {tokenizer.mask_token} .", return_tensors="pt")
            position = int((batch["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
            expected.append(mlm(**batch).logits[0, position, word_ids].numpy())
    got = Predictor.from_dir(prompt_run["result"].run_dir).predict_logits(texts)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-4)
    # The fill-mask pipeline with the verbalizer words as targets ranks the labels the same way.
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(model_dir), device="cpu")
    for text, row in zip(texts, got, strict=True):
        answers = fill(f"{text} it is {tokenizer.mask_token} .", targets=list(VERBALIZER.values()))
        assert answers[0]["token_str"] == VERBALIZER[LABELS[int(np.argmax(row))]]


def test_sliding_window_is_refused_for_a_prompt_model(prompt_run: dict[str, Any]) -> None:
    predictor = Predictor.from_dir(prompt_run["result"].run_dir)
    with pytest.raises(AdaptextError, match="sliding_window"):
        predictor.predict_proba(PROBE_TEXTS, sliding_window=True)


def test_predict_command_fills_the_template(
    prompt_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = prompt_run["result"].run_dir
    validation = prompt_run["folder"] / "validation.csv"
    out = tmp_path / "predictions.csv"
    assert main(["-q", "predict", str(run), "--input", str(validation), "--output", str(out)]) == 0
    frame = pd.read_csv(out)
    probs = Predictor.from_dir(run).predict_proba(list(frame["text"]))
    assert list(frame["label"]) == [LABELS[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(frame["score"], probs.max(axis=1), atol=1e-5)


# errors -----------------------------------------------------------------------------------------


def test_multi_label_prompt_is_refused(tiny_mlm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AdaptextError, match="multi_label"):
        train(prompt_config(tiny_mlm_dir, tmp_path, "data.multi_label=true"))


def test_prompt_with_lora_is_a_config_error(tiny_mlm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"peft\.method=none"):
        prompt_config(tiny_mlm_dir, tmp_path, "peft.method=lora")


def test_a_model_without_a_masked_lm_head_is_refused_or_warned_about(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = prompt_config(tiny_model_dir, tmp_path, "train.max_steps=1")
    caplog.set_level(logging.WARNING)
    try:
        train(config)
    except AdaptextError as error:
        assert "masked" in str(error).lower() or "mlm" in str(error).lower()
        return
    warned = [r for r in caplog.records if r.name.startswith("adaptext") and r.levelno >= logging.WARNING]
    assert any("random" in r.getMessage() or "head" in r.getMessage() for r in warned), warned


def test_exporting_a_prompt_run_is_refused_or_gives_a_usable_folder(prompt_run: dict[str, Any], tmp_path: Path) -> None:
    from adaptext.deploy.export import export_onnx

    run = prompt_run["result"].run_dir
    out = tmp_path / "onnx"
    try:
        export_onnx(run, out)
    except AdaptextError:
        assert not out.exists()
        return
    exported = Predictor.from_dir(out)
    np.testing.assert_allclose(
        exported.predict_logits(PROBE_TEXTS), Predictor.from_dir(run).predict_logits(PROBE_TEXTS), atol=1e-4
    )


# prompt runs on the training engine -------------------------------------------------------------

# 120 rows at batch 8: 15 batches an epoch.
PROMPT_SHORT = ("train.epochs=2", "train.batch_size=8", "train.learning_rate=5e-3")


def test_an_interrupted_prompt_run_resumes_exactly(tiny_mlm_dir: Path, tmp_path: Path) -> None:
    overrides = (*PROMPT_SHORT, "train.checkpoint_steps=3")
    straight = train(prompt_config(tiny_mlm_dir, tmp_path, *overrides, f"output_dir={tmp_path / 'straight'}"))
    config = prompt_config(tiny_mlm_dir, tmp_path, *overrides, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(10))  # the checkpoint is at step 9
    resumed = train(config, resume=True)

    assert resumed.global_step == straight.global_step == 30
    expected = Predictor.from_dir(straight.run_dir).predict_logits(PROBE_TEXTS)
    np.testing.assert_allclose(Predictor.from_dir(resumed.run_dir).predict_logits(PROBE_TEXTS), expected, atol=1e-5)
    mine, reference = read_log(resumed.run_dir), read_log(straight.run_dir)
    assert [r["step"] for r in mine] == [r["step"] for r in reference]
    for ours, theirs in zip(mine, reference, strict=True):
        for key in ("loss", "eval_loss", "eval_accuracy"):
            assert ours.get(key) == pytest.approx(theirs.get(key), abs=1e-6), (key, ours["step"])


def test_prompt_accumulates_gradients_and_evaluates_every_n_steps(tiny_mlm_dir: Path, tmp_path: Path) -> None:
    steps: list[int] = []
    config = prompt_config(tiny_mlm_dir, tmp_path, *PROMPT_SHORT, "train.grad_accum_steps=2", "train.eval_steps=3")
    result = train(config, on_step=steps.append)
    per_epoch = 8  # 15 batches: 7 full pairs and a last single batch
    assert result.global_step == 2 * per_epoch
    assert steps == list(range(1, 2 * per_epoch + 1))
    # Every 3 steps, and at the epoch ends (8 and 16).
    assert [r["step"] for r in result.history] == [3, 6, 8, 9, 12, 15, 16]
    assert result.best_step in [r["step"] for r in result.history]


def test_prompt_stops_early_and_keeps_the_best_model(tiny_mlm_dir: Path, tmp_path: Path) -> None:
    saved: list[int] = []

    class SavedSteps(Callback):
        def on_evaluate(self, record: dict[str, Any]) -> None:
            self.step = record["step"]

        def on_save(self, model: Any, target: Path) -> None:
            saved.append(self.step)

    config = prompt_config(
        tiny_mlm_dir,
        tmp_path,
        "train.epochs=5",
        "train.batch_size=8",
        "train.learning_rate=1e-9",
        "train.early_stopping_patience=1",
        "train.metric_for_best=accuracy",
        "train.class_weights=auto",
    )
    result = train(config, callbacks=[SavedSteps()])
    assert result.stopped_early
    assert result.global_step == 30 < 5 * 15
    assert result.best_step == 15 and saved == [15]
    assert len(result.history) == 2


def test_prompt_uses_every_training_setting() -> None:
    from adaptext.strategies.prompt import Prompt

    # its output layer is the word-embedding matrix; its masked LM is not built by `build_model`
    assert Prompt.ignores == ("train.freeze_embeddings", "train.embedding_rows", "train.attention_dropout")
    assert Prompt.resumable
