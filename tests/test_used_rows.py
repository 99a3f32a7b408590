"""Fine-tuning only the used rows of the word embeddings (`train.embedding_rows`): the layer and its training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adaptext.core.config import Config, config_to_yaml, load_config
from adaptext.data.io import read_table
from adaptext.inference.predictor import Predictor
from adaptext.modeling.hub import load_tokenizer
from adaptext.modeling.used_rows import ROWS, UsedRowsEmbedding, restore_embedding, train_used_rows
from adaptext.strategies import train
from conftest import LEARNABLE, SimulatedCrashError, stop_at


def layer_and_copy() -> tuple[nn.Embedding, UsedRowsEmbedding]:
    torch.manual_seed(0)
    plain = nn.Embedding(10, 4, padding_idx=0)
    return plain, UsedRowsEmbedding(
        nn.Embedding.from_pretrained(plain.weight.detach().clone(), freeze=False, padding_idx=0),
        torch.tensor([0, 2, 3, 7]),
    )


def test_the_layer_gives_the_plain_layers_output_and_state_dict() -> None:
    plain, compact = layer_and_copy()
    assert compact.used.tolist() == [0, 2, 3, 7]  # the padding row is kept with them, and gets no gradient
    assert [name for name, p in compact.named_parameters() if p.requires_grad] == [ROWS]
    compact.eval()  # id 5 is not trained: only evaluation may read it
    ids = torch.tensor([[2, 3, 5, 0], [7, 7, 0, 0]])
    assert torch.equal(compact(ids), plain(ids))
    assert list(compact.state_dict()) == ["weight"]
    with torch.no_grad():
        compact.used_rows[2] += 1.0  # a trained row: id 3
    saved = compact.state_dict()["weight"]
    assert torch.equal(saved[3], plain.weight[3] + 1.0)
    assert torch.equal(saved[[0, 1, 2, 4, 5, 6, 7, 8, 9]], plain.weight[[0, 1, 2, 4, 5, 6, 7, 8, 9]])
    restored = UsedRowsEmbedding(nn.Embedding(10, 4, padding_idx=0), torch.tensor([0, 2, 3, 7]))
    restored.load_state_dict({"weight": saved})
    restored.eval()
    assert torch.equal(restored(ids), compact(ids))
    with pytest.raises(RuntimeError, match="size mismatch"):
        restored.load_state_dict({"weight": torch.zeros(11, 4)})


def test_a_training_batch_with_an_untrained_token_is_an_error() -> None:
    _, compact = layer_and_copy()
    compact.train()
    with pytest.raises(RuntimeError, match=r"1 token\(s\) outside the 4 trained embedding rows \(ids \[5\]"):
        compact(torch.tensor([[2, 5, 0]]))
    compact.eval()  # evaluation reads every row
    assert compact(torch.tensor([[2, 5, 0]])).shape == (1, 3, 4)
    with torch.no_grad():
        compact.train()
        compact(torch.tensor([[2, 5, 0]]))


def test_only_the_used_rows_get_a_gradient_and_they_get_the_dense_one() -> None:
    plain, compact = layer_and_copy()
    ids = torch.tensor([[2, 3, 3, 0], [7, 2, 0, 0]])
    target = torch.randn(2, 4, 4)
    ((plain(ids) - target) ** 2).sum().backward()
    ((compact(ids) - target) ** 2).sum().backward()
    assert compact.weight.grad is None
    assert torch.allclose(compact.used_rows.grad, plain.weight.grad[[0, 2, 3, 7]])
    assert not compact.used_rows.grad[0].any()  # padding
    assert not plain.weight.grad[[1, 4, 5, 6, 8, 9]].any()


FEWSHOT = ("strategy=fewshot", "fewshot.encoder=contrastive", "fewshot.steps=12", "fewshot.learning_rate=1e-3")


@pytest.mark.parametrize(("strategy", "weight_decay"), [("finetune", 0.0), ("finetune", 0.01), ("fewshot", 0.01)])
def test_training_the_used_rows_is_the_dense_training(
    tiny_config: Callable[..., Config],
    tiny_model_dir: Path,
    data_files: dict[str, Path],
    tmp_path: Path,
    strategy: str,
    weight_decay: float,
) -> None:
    from transformers import AutoModelForSequenceClassification

    results, models = {}, {}
    for rows in ("used", "all"):
        changes = (
            f"train.embedding_rows={rows}",
            f"train.weight_decay={weight_decay}",
            f"output_dir={tmp_path / rows}",
        )
        if strategy == "fewshot":  # few-shot refuses the training keys tiny_config sets
            # no validation file, which could make the run keep the untouched encoder
            files = [f"model.name={tiny_model_dir}", f"data.train={data_files['train']}"]
            config = load_config(None, [*files, *FEWSHOT, "seed=7", "train.precision=fp32", *changes])
        else:
            config = tiny_config(*LEARNABLE, *changes)
        results[rows] = train(config)
        models[rows], info = AutoModelForSequenceClassification.from_pretrained(
            results[rows].model_dir, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"]  # a plain transformers folder
    tokenizer = load_tokenizer(str(config.model.name))
    used = sorted({t for ids in tokenizer(list(read_table(data_files["train"])["text"]))["input_ids"] for t in ids})
    vocab = models["all"].get_input_embeddings().weight.shape[0]
    unused = sorted(set(range(vocab)) - set(used) - {tokenizer.pad_token_id})
    assert len(unused) > 10  # the tiny vocabulary has words the training file lacks
    from transformers import AutoModel

    pretrained = AutoModel.from_pretrained(str(config.model.name)).get_input_embeddings().weight.detach()
    trained, dense = models["used"].state_dict(), models["all"].state_dict()
    assert trained.keys() == dense.keys()
    for name, value in trained.items():
        if name.endswith("word_embeddings.weight"):
            assert torch.allclose(value[used], dense[name][used], atol=1e-5)
            assert not torch.allclose(value[used], pretrained[used], atol=1e-3)  # they did train
            assert torch.equal(value[unused], pretrained[unused])  # untouched, as pretrained
            # dense AdamW moves an unused row by weight decay alone
            assert torch.equal(dense[name][unused], pretrained[unused]) is (weight_decay == 0)
        else:
            assert torch.allclose(value, dense[name], atol=1e-5), name
    stats = {rows: result.stats for rows, result in results.items()}
    assert stats["used"]["total_parameters"] == stats["all"]["total_parameters"]
    width = pretrained.shape[1]
    untrained = vocab - len(used) - 1  # the padding row is kept with the used ones
    assert stats["used"]["trainable_parameters"] == stats["all"]["trainable_parameters"] - untrained * width


def test_tied_or_frozen_embeddings_are_left_as_they_are(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    masked = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)  # the output layer shares the matrix
    assert not train_used_rows(masked, torch.tensor([5, 6]))
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    classifier.get_input_embeddings().weight.requires_grad_(False)  # train.freeze_embeddings
    assert not train_used_rows(classifier, torch.tensor([5, 6]))
    classifier.get_input_embeddings().weight.requires_grad_(True)
    assert train_used_rows(classifier, torch.tensor([5, 6]))
    restore_embedding(classifier)
    assert type(classifier.get_input_embeddings()) is nn.Embedding
    assert classifier.get_input_embeddings().weight.requires_grad


def test_a_checkpoint_that_trained_every_row_resumes_training_the_used_rows(
    tiny_config: Callable[..., Config], data_files: dict[str, Path], tmp_path: Path
) -> None:
    # SWA from step 23 of 45: the checkpoint of step 27 holds an average of the whole matrix too
    overrides = (
        "train.epochs=3",
        "train.checkpoint_steps=3",
        "train.learning_rate=5e-3",
        "train.weight_decay=0",
        "train.swa_start=0.5",
    )
    straight = train(tiny_config(*overrides, "train.embedding_rows=all", f"output_dir={tmp_path / 'straight'}"))
    with pytest.raises(SimulatedCrashError):
        train(
            tiny_config(*overrides, "train.embedding_rows=all", f"output_dir={tmp_path / 'run'}"), on_step=stop_at(28)
        )
    # The folder as an adaptext before `train.embedding_rows` left it: its config resumes with the default, `used`,
    # and the checkpoint's optimizer moments are those of the whole matrix.
    config = tiny_config(*overrides, f"output_dir={tmp_path / 'run'}")
    (tmp_path / "run" / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    resumed = train(config, resume=True)
    texts = list(read_table(data_files["test"])["text"])
    expected = Predictor.from_dir(straight.run_dir).predict_logits(texts)
    assert np.allclose(Predictor.from_dir(resumed.run_dir).predict_logits(texts), expected, atol=1e-5)
