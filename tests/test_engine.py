"""Contract tests of the training engine shared by every strategy that trains: one optimizer rule, objectives
as plug-ins, the run's own callbacks, and the `train.*` keys each strategy honours or refuses."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from adaptext.core.config import Config, load_config
from adaptext.core.errors import ConfigError
from adaptext.core.task import SINGLE_LABEL
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import prepare_encoder
from adaptext.strategies import finetune as finetune_module
from adaptext.strategies import train
from adaptext.strategies.fewshot import Fewshot
from adaptext.strategies.finetune import Finetune
from adaptext.strategies.prompt import Prompt
from adaptext.strategies.zeroshot import Zeroshot
from adaptext.training.callbacks import CALLBACKS, Callback
from adaptext.training.lifecycle import run_strategy
from adaptext.training.objectives import OBJECTIVES, CrossEntropy
from adaptext.training.optim import build_optimizer
from conftest import LABELS, make_rows


def is_decayed(name: str, param: torch.nn.Parameter) -> bool:
    """The weight-decay rule: weight matrices are decayed, biases and normalisation weights are not."""
    return param.ndim >= 2 and "norm" not in name.lower()


class KeepModel(Callback):
    """Keeps the model the engine is about to train."""

    model: Any = None

    def on_train_begin(self, state: Any, model: Any) -> None:
        self.model = model


def expected_groups(model: torch.nn.Module) -> tuple[int, int]:
    """(decayed, not decayed) trainable parameter tensors of `model` under the rule."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decayed = sum(is_decayed(n, p) for n, p in named)
    return decayed, len(named) - decayed


def test_build_optimizer_decays_weight_matrices_only(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    prepare_encoder(model)  # few-shot's model: a frozen pooling layer and dense layer
    config = load_config(None, ["train.weight_decay=0.05"])
    optimizer = build_optimizer(model, config.train, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(group["fused"] for group in optimizer.param_groups)
    assert all(is_decayed(names[id(p)], p) for p in decay["params"])
    assert not any(is_decayed(names[id(p)], p) for p in no_decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith(".bias") for p in no_decay["params"])
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not frozen & {id(p) for g in optimizer.param_groups for p in g["params"]}


@pytest.fixture(scope="module")
def tiny_mlm(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(tiny_model_dir)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def strategy_config(tiny_model_dir: Path, tiny_mlm: Path, folder: Path, strategy: str) -> Config:
    """A run of a few steps of `strategy` on the tiny models."""
    pd.DataFrame(make_rows(24, seed=1)).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(make_rows(12, seed=2)).to_csv(folder / "validation.csv", index=False)
    common = [
        f"data.train={folder / 'train.csv'}",
        f"data.validation={folder / 'validation.csv'}",
        f"output_dir={folder / 'run'}",
        "data.max_length=32",
        "train.precision=fp32",
        "train.batch_size=8",
        "train.weight_decay=0.05",
        f"strategy={strategy}",
    ]
    extra = {
        "finetune": [f"model.name={tiny_model_dir}", "train.max_steps=2"],
        "fewshot": [
            f"model.name={tiny_model_dir}",
            "fewshot.steps=2",
            "fewshot.batch_size=8",
            "fewshot.calibrate=false",
        ],
        "prompt": [
            f"model.name={tiny_mlm}",
            "train.max_steps=2",
            "prompt.template='{text} it is {mask} .'",
            "prompt.verbalizer={billing: invoice, shipping: parcel, technical: crash}",
        ],
    }[strategy]
    return load_config(None, common + extra)


@pytest.mark.parametrize("strategy", ["finetune", "fewshot", "prompt"])
def test_every_strategy_trains_with_the_same_weight_decay_rule(
    tiny_model_dir: Path, tiny_mlm: Path, tmp_path: Path, strategy: str
) -> None:
    keep = KeepModel()
    result = train(strategy_config(tiny_model_dir, tiny_mlm, tmp_path, strategy), callbacks=[keep])
    # The optimizer the run stepped, as its checkpoint holds it.
    saved = torch.load(result.run_dir / "checkpoint" / "optimizer.bin", weights_only=False)
    decay, no_decay = saved["param_groups"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert decay["fused"] and no_decay["fused"]
    assert (len(decay["params"]), len(no_decay["params"])) == expected_groups(keep.model)


def test_an_objective_registered_from_a_test_is_used_with_its_after_step_hook(
    tiny_config: Callable[..., Config],
) -> None:
    calls: list[tuple[str, int]] = []

    class CountingCrossEntropy(CrossEntropy):
        def loss(self, model: Any, inputs: Any, targets: Any) -> Any:
            calls.append(("loss", len(targets)))
            return super().loss(model, inputs, targets)

        def after_step(self, step: int) -> None:
            calls.append(("step", step))

    class CountingFinetune(Finetune):
        objective = "test_counting"

    OBJECTIVES.add("test_counting", CountingCrossEntropy)
    try:
        result = run_strategy(CountingFinetune(), tiny_config("train.max_steps=3", "train.grad_accum_steps=2"))
    finally:
        OBJECTIVES.remove("test_counting")
    assert result.global_step == 3
    # Two batches of 8 per optimizer step, the hook after each step with the step's index.
    one_step = [("loss", 8), ("loss", 8)]
    assert calls == [*one_step, ("step", 0), *one_step, ("step", 1), *one_step, ("step", 2)]


def test_an_unknown_objective_names_the_registered_ones(tiny_config: Callable[..., Config]) -> None:
    class Misnamed(Finetune):
        objective = "cross_entropie"

    with pytest.raises(ConfigError, match=r"unknown objective 'cross_entropie'.*contrastive.*cross_entropy.*pet"):
        run_strategy(Misnamed(), tiny_config("train.max_steps=1"))


def test_the_run_callbacks_are_registered_and_tensorboard_writes_events(tiny_config: Callable[..., Config]) -> None:
    assert {"progress", "tensorboard"} <= set(CALLBACKS.names())
    result = train(tiny_config("train.max_steps=2"))
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


# the train.* keys each strategy refuses --------------------------------------------------------------


def test_finetune_and_prompt_use_every_train_setting() -> None:
    # Except that prompt's masked LM scores the verbalizer with its word-embedding matrix, which must train.
    assert Finetune.ignores == () and Prompt.ignores == (
        "train.freeze_embeddings",
        "train.embedding_rows",
        "train.attention_dropout",
    )
    assert Finetune.resumable and Prompt.resumable and Fewshot.resumable


def test_fewshot_refuses_only_what_the_contrastive_phase_does_not_use() -> None:
    honoured = ["train.grad_accum_steps=2", "train.checkpoint_steps=5", "train.weight_decay=0.1", "train.batch_size=4"]
    Fewshot().check(load_config(None, ["strategy=fewshot", *honoured]))
    refused = r"strategy fewshot does not use train\.class_weights=auto, train\.eval_steps=5;"
    with pytest.raises(ConfigError, match=refused):
        Fewshot().check(load_config(None, ["strategy=fewshot", "train.eval_steps=5", "train.class_weights=auto"]))


@pytest.mark.parametrize("setting", ["train.learning_rate=0.001", "train.grad_accum_steps=2", "train.eval_steps=5"])
def test_zeroshot_refuses_every_setting_that_only_shapes_training(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"strategy zeroshot does not use {re.escape(setting)}"):
        Zeroshot().check(load_config(None, ["strategy=zeroshot", setting]))
    Zeroshot().check(load_config(None, ["strategy=zeroshot", "train.batch_size=4", "train.threshold=0.3"]))


def test_a_stopped_run_closes_its_tensorboard_writer(
    tiny_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptext.training.callbacks import TensorBoard

    boards: list[TensorBoard] = []

    def keep(paths: Any) -> TensorBoard:
        boards.append(TensorBoard(paths))
        return boards[-1]

    monkeypatch.setitem(CALLBACKS._items, "tensorboard", keep)

    def crash(step: int) -> None:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        train(tiny_config("train.max_steps=4"), on_step=crash)
    [board] = boards
    assert board.writer.all_writers is None  # closed: SummaryWriter.close() drops its file writers and thread


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux and glibc")
def test_freed_heap_pages_go_back_to_the_system_after_training() -> None:
    import ctypes
    import os

    from adaptext.core.device import release_freed_memory

    def resident_mb() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 128 MB in 16 KB blocks (far below glibc's mmap threshold: from the heap), each touched, then a small block
    # above them that keeps the heap from shrinking when they are freed: what a training run leaves behind.
    blocks = [libc.malloc(16 * 1024) for _ in range(8192)]
    for block in blocks:
        ctypes.memset(block, 1, 16 * 1024)
    pin = libc.malloc(256)
    for block in blocks:
        libc.free(block)
    held = resident_mb()
    release_freed_memory()
    assert held - resident_mb() > 64, "freed heap pages stayed resident"
    libc.free(pin)


def test_training_memory_is_released_before_the_final_evaluation(
    tiny_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    import adaptext.training.lifecycle as lifecycle

    calls: list[str] = []
    release, finish = lifecycle.release_freed_memory, lifecycle.finish

    def spy_release() -> None:
        calls.append("release")
        release()

    def spy_finish(*args: Any, **kwargs: Any) -> Any:
        calls.append("finish")
        return finish(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "release_freed_memory", spy_release)
    monkeypatch.setattr(lifecycle, "finish", spy_finish)
    train(tiny_config("train.max_steps=2"))
    # Once after training, once after the post-hoc steps' model copies (inside the final evaluation).
    assert calls == ["release", "finish", "release"]


class AskEveryStep(Callback):
    """Asks for an evaluation after every step and keeps the steps it was given one at."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def wants_evaluation(self, state: Any) -> bool:
        return True

    def on_evaluate(self, record: dict[str, Any]) -> None:
        self.seen.append(int(record["step"]))


def test_an_evaluation_a_callback_asks_for_neither_chooses_the_model_nor_stops_training(
    tiny_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation scores fall step by step; only the end of training (step 4) is one of the config's own evaluations.
    # With patience 1, the asked ones would stop the run at step 2 and keep step 1's model if they counted.
    scores = iter([0.9, 0.8, 0.7, 0.5])
    real = finetune_module.validation

    def scripted(tokenizer: Any, config: Config, data: Any) -> Callable[[Any], Any]:
        evaluate = real(tokenizer, config, data)

        def score(model: Any) -> Any:
            report = evaluate(model)
            report.metrics[config.train.metric_for_best] = next(scores)
            return report

        return score

    monkeypatch.setattr(finetune_module, "validation", scripted)
    asks = AskEveryStep()
    config = tiny_config("train.max_steps=4", "train.early_stopping_patience=1")
    assert config.train.eval_steps is None
    result = train(config, callbacks=[asks])
    assert asks.seen == [1, 2, 3, 4]
    assert result.global_step == 4 and not result.stopped_early
    assert (result.best_step, result.best_metric) == (4, 0.5)
