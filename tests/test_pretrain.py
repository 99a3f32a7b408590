"""`adaptext pretrain`: each method lowers its loss on held-out text and leaves a folder strategies start from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from adaptext.cli import main
from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import load_trained
from adaptext.modeling.hub import resolve_model_name
from adaptext.modeling.pooling import sentence_pooling
from adaptext.pretraining.methods import TSDAE, MaskedLM, pool
from adaptext.pretraining.run import pretrain, resolve_method
from adaptext.strategies import train
from adaptext.training.callbacks import OnStep
from conftest import SimulatedCrashError, make_rows, read_log, stop_at


def write_texts(folder: Path, n: int = 96, seed: int = 0) -> Path:
    path = folder / "texts.txt"
    path.write_text("\n".join(row["text"] for row in make_rows(n, seed=seed)) + "\n", encoding="utf-8")
    return path


def sentence_encoder(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model as a sentence-transformers folder that pools the mean."""
    target = folder / "st-model"
    shutil.copytree(tiny_model_dir, target)
    (target / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    )
    return target


def pretrain_config(model: Path, texts: Path, folder: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"model.name={model}",
            f"data.train={texts}",
            f"output_dir={folder / 'pre'}",
            "data.max_length=24",
            "train.batch_size=16",
            "train.epochs=3",
            "train.learning_rate=0.002",
            "train.precision=fp32",
            "tracking.backend=none",
            "seed=3",
            *overrides,
        ],
    )


@pytest.mark.parametrize("method", ["mlm", "simcse", "tsdae"])
def test_pretraining_lowers_the_held_out_loss_and_leaves_a_folder_finetune_starts_from(
    tiny_model_dir: Path, tmp_path: Path, method: str
) -> None:
    model = sentence_encoder(tiny_model_dir, tmp_path)
    config = pretrain_config(model, write_texts(tmp_path), tmp_path, f"pretrain.method={method}")
    result = pretrain(config)

    assert result.method == method and result.held_out == 5  # 5% of 96 texts held out
    assert result.loss_after < result.loss_before
    record = json.loads((result.run_dir / "pretrain.json").read_text())
    assert record["loss_after"] == pytest.approx(result.loss_after)
    assert (result.run_dir / "loss.png").stat().st_size > 1000
    evals = [r["eval_loss"] for r in read_log(result.run_dir) if "eval_loss" in r]
    assert len(evals) == 3 and min(evals) == pytest.approx(result.loss_after)
    # The saved encoder differs from the base, loads in plain transformers, and keeps the mean pooling.
    adapted = AutoModel.from_pretrained(result.model_dir)
    base = AutoModel.from_pretrained(model)
    weight = "embeddings.word_embeddings.weight"
    assert not torch.equal(adapted.state_dict()[weight], base.state_dict()[weight])
    pooler = "pooler.dense.weight"  # not trained by any method, and kept (BertForMaskedLM has none of its own)
    assert torch.equal(adapted.state_dict()[pooler], base.state_dict()[pooler])
    assert sentence_pooling(str(result.run_dir)) == "mean"
    assert resolve_model_name(str(result.run_dir)) == str(result.model_dir)
    # It is an encoder, not a classifier: what predicts or continues a classifier refuses it, naming the folder.
    with pytest.raises(AdaptextError, match=f"{result.model_dir} holds a .*, not a text classifier"):
        Predictor.from_dir(result.run_dir)
    with pytest.raises(AdaptextError, match="not a text classifier"):
        load_trained(result.model_dir)
    if method != "mlm":
        return
    # Any strategy takes the run folder as its model (mlm's folder, whose save is the most involved, here).
    files = {split: tmp_path / f"{split}.csv" for split in ("train", "validation", "test")}
    for seed, path in enumerate(files.values()):
        path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in make_rows(24, seed=seed)))
    tuned = train(
        load_config(
            None,
            [
                f"model.name={result.run_dir}",
                *(f"data.{split}={path}" for split, path in files.items()),
                f"output_dir={tmp_path / 'tuned'}",
                "train.epochs=1",
                "train.precision=fp32",
                "tracking.backend=none",
            ],
        )
    )
    info = json.loads((tuned.model_dir / "adaptext.json").read_text())
    assert info["base_model_path"] == str(result.model_dir)


def test_the_held_out_loss_is_what_the_method_scores_on_the_held_out_texts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # data.validation gives the held-out texts; the loss before training is the untrained MLM's on exactly them.
    texts, held = write_texts(tmp_path), tmp_path / "held.txt"
    held.write_text("\n".join(row["text"] for row in make_rows(8, seed=9)) + "\n")
    config = pretrain_config(tiny_model_dir, texts, tmp_path, "pretrain.method=mlm", f"data.validation={held}")
    result = pretrain(config)
    assert result.held_out == 8 and result.texts == 96


def test_mlm_masks_only_ordinary_tokens_with_the_80_10_10_rule(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    method = MaskedLM(str(tiny_model_dir), tokenizer, load_config(None, ["pretrain.mask_probability=0.5"]).pretrain)
    ids = tokenizer([" ".join(r["text"] for r in make_rows(6))] * 50)["input_ids"]
    batch = method.collate([{"input_ids": row, "index": i} for i, row in enumerate(ids)])
    original = torch.tensor(ids)
    assert torch.equal(batch["input_ids"], original) and torch.equal(batch["labels"], original)  # no noise yet
    masked, targets = method.mask(batch["input_ids"], torch.Generator().manual_seed(0))
    chosen = targets != -100
    assert torch.equal(targets[chosen], original[chosen])  # targets are the original tokens
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # never [CLS] or [SEP]
    assert abs(chosen[:, 1:-1].float().mean().item() - 0.5) < 0.02
    assert torch.equal(masked[~chosen], original[~chosen])
    share_masked = (masked[chosen] == tokenizer.mask_token_id).float().mean().item()
    share_kept = (masked[chosen] == original[chosen]).float().mean().item()
    assert abs(share_masked - 0.8) < 0.03 and 0.08 < share_kept < 0.14  # 10% kept, plus random draws of the same
    again, _ = method.mask(batch["input_ids"], torch.Generator().manual_seed(0))
    assert torch.equal(again, masked)  # a generator's seed fixes the draw (the held-out loss relies on it)


def test_tsdae_deletes_inner_tokens_and_keeps_their_order(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    method = TSDAE(str(tiny_model_dir), tokenizer, load_config(None, ["pretrain.deletion=0.6"]).pretrain)
    ids = tokenizer(" ".join(r["text"] for r in make_rows(20)))["input_ids"]
    noisy = method.delete(ids, torch.Generator().manual_seed(0))
    assert noisy[0] == ids[0] and noisy[-1] == ids[-1]
    assert abs((len(noisy) - 2) / (len(ids) - 2) - 0.4) < 0.1
    position = 1
    for token in noisy[1:-1]:  # an ordered subsequence of the original's inner tokens
        position = ids.index(token, position) + 1
    assert len(method.delete(ids[:3], torch.Generator().manual_seed(1))) == 3  # one inner token: always kept


def test_pool_is_the_masked_mean_or_cls() -> None:
    hidden = torch.arange(12.0).reshape(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), hidden[:, :2].mean(dim=1))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_auto_takes_mlm_for_a_model_with_an_mlm_head_and_simcse_for_an_encoder(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    texts = write_texts(tmp_path)
    assert resolve_method(pretrain_config(tiny_model_dir, texts, tmp_path)) == "simcse"
    mlm = pretrain(pretrain_config(tiny_model_dir, texts, tmp_path, "pretrain.method=mlm", "train.max_steps=2"))
    # A folder saved by mlm keeps its head: pretraining it again is plain MLM.
    assert resolve_method(pretrain_config(mlm.run_dir, texts, tmp_path / "again")) == "mlm"


def test_an_interrupted_pretraining_run_resumes_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    texts = write_texts(tmp_path)
    straight = pretrain(pretrain_config(tiny_model_dir, texts, tmp_path / "a", "pretrain.method=mlm"))
    config = pretrain_config(tiny_model_dir, texts, tmp_path / "b", "pretrain.method=mlm", "train.checkpoint_steps=4")
    with pytest.raises(SimulatedCrashError):
        pretrain(config, callbacks=[OnStep(stop_at(10))])
    resumed = pretrain(config, resume=True)
    assert resumed.steps == straight.steps == 18
    a = AutoModel.from_pretrained(straight.model_dir).state_dict()
    b = AutoModel.from_pretrained(resumed.model_dir).state_dict()
    for name, value in a.items():
        np.testing.assert_allclose(b[name].numpy(), value.numpy(), atol=1e-6, err_msg=name)
    assert resumed.loss_after == pytest.approx(straight.loss_after, abs=1e-6)


def test_bad_input_is_refused_before_the_run_folder_is_made(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.train"):
        pretrain(load_config(None, [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'x'}"]))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match=r"empty\.txt"):
        pretrain(pretrain_config(tiny_model_dir, empty, tmp_path))
    with pytest.raises(ConfigError, match=r"pretrain\.method"):
        load_config(None, ["pretrain.method=bert"])
    assert not (tmp_path / "pre").exists() and not (tmp_path / "x").exists()


def test_the_cli_trains_and_prints_how_to_use_the_model(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = write_texts(tmp_path)
    config = tmp_path / "pretrain.yaml"
    config.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {texts}}}\noutput_dir: {tmp_path / 'cli'}\n")
    args = [str(config), "train.max_steps=2", "train.precision=fp32", "tracking.backend=none"]
    assert main(["pretrain", *args]) == 0
    out = capsys.readouterr().out
    assert f"model.name={tmp_path / 'cli'}" in out and "held-out loss" in out
    assert main(["pretrain", *args]) == 2  # never over an existing run without --overwrite
    assert "already holds a run" in capsys.readouterr().err
