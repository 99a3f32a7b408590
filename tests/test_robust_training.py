"""Robust training (`robust.*`): label smoothing, FGM and PGD on the input embeddings, R-Drop and on-the-fly
augmentation, checked against hand computations on the tiny model, end to end through `adaptext train`, resumed,
and refused where a strategy cannot honour them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from transformers.modeling_outputs import SequenceClassifierOutput

from adaptext.cli import main
from adaptext.core.config import Config, RobustSection, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.task import MULTI_LABEL, SINGLE_LABEL
from adaptext.data.batching import Collator, LengthGroupedBatches, encode
from adaptext.data.examples import TextData
from adaptext.modeling.adapters import wrap_model
from adaptext.modeling.build import build_model
from adaptext.modeling.hub import load_tokenizer
from adaptext.strategies import train
from adaptext.strategies.finetune import Finetune
from adaptext.training.augment import augmented, build_augmenter, embedding_neighbours
from adaptext.training.objectives import OBJECTIVES, CrossEntropy, cross_entropy_loss
from adaptext.training.robust import RobustObjective, robust_objective, symmetric_kl
from conftest import LABELS, SimulatedCrashError, make_rows, read_log, stop_at


def robust(**settings: Any) -> RobustSection:
    return RobustSection.model_validate(settings)


@pytest.fixture(scope="module")
def batch(tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    """A padded batch of 6 keyword-task texts of different lengths, with their class ids as `labels`."""
    rows = make_rows(6, seed=5)
    rows[0]["text"] += " please help with my order again today"  # longer, so the others are padded
    data = TextData(texts=[r["text"] for r in rows], source="rows", labels=[r["label"] for r in rows])
    encoded = encode(load_tokenizer(str(tiny_model_dir)), data, LABELS, 32, SINGLE_LABEL)
    collated = Collator(0, SINGLE_LABEL)([encoded[i] for i in range(len(encoded))])
    collated.pop("index")
    return collated


def tiny(tiny_model_dir: Path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    model.eval()  # no dropout: two passes over one batch agree, so hand computations can be exact
    return model


def call(objective: Any, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    objective.bind(model, torch.device("cpu"))
    try:
        loss, examples = objective.loss(model, inputs, batch["labels"])
    finally:
        objective.close()
    assert examples == len(batch["labels"])
    return loss


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


class Recorder:
    """Records the word-embedding layer's output on every pass; registered after the objective's own hook, it
    sees the embeddings with the perturbation added."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        layer = model.get_input_embeddings()
        self.handle = layer.register_forward_hook(lambda _m, _i, out: self.outputs.append(out.detach()))

    def deltas(self) -> list[torch.Tensor]:
        return [out - self.outputs[0] for out in self.outputs[1:]]


# label smoothing and the plain path --------------------------------------------------------------------------


def test_label_smoothing_is_torchs_and_binary_for_multi_label() -> None:
    torch.manual_seed(0)
    logits, targets, weights = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0]), torch.tensor([1.0, 2.0, 0.5])
    for w in (None, weights):
        mine = cross_entropy_loss(logits, targets, w, SINGLE_LABEL, 0.1)
        assert torch.equal(mine, F.cross_entropy(logits, targets, weight=w, label_smoothing=0.1))
    multi = (torch.rand(5, 3) > 0.5).float()
    by_hand = F.binary_cross_entropy_with_logits(logits, multi * 0.8 + 0.1)
    assert torch.allclose(cross_entropy_loss(logits, multi, None, MULTI_LABEL, 0.2), by_hand)


def test_everything_off_is_the_plain_objective_bit_for_bit(tiny_model_dir: Path, batch: dict[str, Any]) -> None:
    base = CrossEntropy(SINGLE_LABEL)
    assert robust_objective(base, RobustSection()) is base and base.label_smoothing == 0.0
    model = tiny(tiny_model_dir)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = F.cross_entropy(model(**inputs).logits.float(), batch["labels"])
    assert torch.equal(call(base, model, batch), expected)


# R-Drop -------------------------------------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    """A 'model' returning given logits for a doubled batch (R-Drop's two passes as one)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())
        self.dropout = torch.nn.Dropout(0.1)  # so R-Drop does not warn; never applied

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SequenceClassifierOutput:
        assert len(input_ids) == len(self.logits)  # the batch arrives twice
        return SequenceClassifierOutput(logits=self.logits * 1.0)


@pytest.mark.parametrize("task", [SINGLE_LABEL, MULTI_LABEL])
def test_rdrop_loss_is_the_mean_cross_entropy_plus_alpha_symmetric_kl(task: Any) -> None:
    torch.manual_seed(1)
    first, second = torch.randn(4, 3), torch.randn(4, 3)
    targets = (torch.rand(4, 3) > 0.5).float() if task.multi_label else torch.tensor([0, 1, 2, 1])
    model = FixedLogits(torch.cat([first, second]))
    batch = {"input_ids": torch.ones(4, 5, dtype=torch.long), "labels": targets}
    loss = call(robust_objective(CrossEntropy(task), robust(rdrop=2.0)), model, batch)
    if task.multi_label:
        ce = [F.binary_cross_entropy_with_logits(x, targets) for x in (first, second)]

        def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # Bernoulli KL(a||b), summed over labels
            p, q = torch.sigmoid(a), torch.sigmoid(b)
            return (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()
    else:
        ce = [F.cross_entropy(x, targets) for x in (first, second)]

        def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # KL(P_a||P_b), torch's own
            return F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), reduction="batchmean", log_target=True)

    by_hand = (ce[0] + ce[1]) / 2 + 2.0 * (kl(first, second) + kl(second, first)) / 2
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert symmetric_kl(first, first, task.multi_label).abs() < 1e-6


def test_rdrop_warns_for_a_model_without_dropout(caplog: pytest.LogCaptureFixture) -> None:
    model = FixedLogits(torch.zeros(2, 3))
    model.dropout.p = 0.0
    objective = robust_objective(CrossEntropy(SINGLE_LABEL), robust(rdrop=1.0))
    objective.bind(model, torch.device("cpu"))
    objective.close()
    assert "has no dropout" in caplog.text


# FGM and PGD --------------------------------------------------------------------------------------------------


def test_fgm_step_has_norm_epsilon_and_its_gradients_match_a_hand_computation(
    tiny_model_dir: Path, batch: dict[str, Any]
) -> None:
    model = tiny(tiny_model_dir)
    objective = robust_objective(CrossEntropy(SINGLE_LABEL), robust(adversarial="fgm", epsilon=0.5))
    assert isinstance(objective, RobustObjective)
    objective.bind(model, torch.device("cpu"))
    recorder = Recorder(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss, _ = objective.loss(model, inputs, batch["labels"])
    loss.backward()
    objective.close()
    recorder.handle.remove()
    (delta,) = recorder.deltas()
    mask = batch["attention_mask"]
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((6,), 0.5), atol=1e-5)
    assert delta[mask == 0].abs().max() == 0  # padding is never perturbed
    mine = grads(model)

    # By hand: the embeddings' gradient, its per-example unit direction times epsilon, clean + adversarial loss.
    model.zero_grad()
    layer = model.get_input_embeddings()
    held: dict[str, torch.Tensor] = {}

    def keep(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor:
        if "delta" in held:
            return out + held["delta"]
        held["embeddings"] = out
        return out

    handle = layer.register_forward_hook(keep)
    clean = F.cross_entropy(model(**inputs).logits, batch["labels"])
    (g,) = torch.autograd.grad(clean, held["embeddings"], retain_graph=True)
    g = g * mask[..., None]
    held["delta"] = 0.5 * g / g.flatten(1).norm(dim=1)[:, None, None]
    total = clean + F.cross_entropy(model(**inputs).logits, batch["labels"])
    total.backward()
    handle.remove()
    assert torch.allclose(loss, total, atol=1e-6)
    assert torch.allclose(delta, held["delta"], atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(mine) == sorted(trainable)  # every trainable parameter gets a gradient
    for name, p in model.named_parameters():
        assert p.grad is not None
        assert torch.allclose(mine[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_pgd_stays_in_the_ball_and_one_full_step_is_fgm(tiny_model_dir: Path, batch: dict[str, Any]) -> None:
    model = tiny(tiny_model_dir)
    objective = robust_objective(
        CrossEntropy(SINGLE_LABEL), robust(adversarial="pgd", epsilon=0.3, pgd_steps=4, pgd_alpha=0.2)
    )
    objective.bind(model, torch.device("cpu"))
    recorder = Recorder(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    pgd, _ = objective.loss(model, inputs, batch["labels"])
    objective.close()
    recorder.handle.remove()
    deltas = recorder.deltas()
    assert len(deltas) == 4  # 3 more steps after the clean pass's gradient, then the loss at the last point
    norms = torch.stack([d.flatten(1).norm(dim=1) for d in deltas])
    assert (norms <= 0.3 + 1e-5).all() and torch.allclose(norms[-1], torch.full((6,), 0.3), atol=1e-4)
    assert norms[0].max() == pytest.approx(0.2, abs=1e-5)  # the first step, not yet projected

    fgm = call(robust_objective(CrossEntropy(SINGLE_LABEL), robust(adversarial="fgm", epsilon=0.3)), model, batch)
    one_step = robust(adversarial="pgd", epsilon=0.3, pgd_steps=1, pgd_alpha=0.3)
    assert torch.allclose(call(robust_objective(CrossEntropy(SINGLE_LABEL), one_step), model, batch), fgm)
    assert pgd > fgm  # more steps find a worse point (on this batch)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adversarial_gradients_reach_every_adapter_parameter_and_no_frozen_one(
    method: str, tiny_model_dir: Path, batch: dict[str, Any]
) -> None:
    config = load_config(None, [f"model.name={tiny_model_dir}", f"peft.method={method}"])
    model = wrap_model(config.peft, tiny(tiny_model_dir), total_steps=10, max_length=32)
    with torch.no_grad():  # LoRA starts with B = 0, where A gets no gradient from any loss
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    model.train()
    base = OBJECTIVES.get(Finetune().objective_name(config))(SINGLE_LABEL)  # AdaLoRA's own, with its penalty
    objective = robust_objective(base, robust(adversarial="pgd", rdrop=1.0, label_smoothing=0.1))
    call(objective, model, batch).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# augmentation -------------------------------------------------------------------------------------------------


def test_neighbour_augmentation_is_seeded_per_epoch_and_example(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = make_rows(40, seed=3)
    data = TextData(texts=[r["text"] for r in rows], source="rows", labels=[r["label"] for r in rows])
    encoded = encode(tokenizer, data, LABELS, 32, SINGLE_LABEL)
    model = tiny(tiny_model_dir)
    settings = RobustSection.model_validate({"augment": {"method": "neighbours", "strength": 0.5}}).augment
    augmenter = build_augmenter(settings, model, tokenizer, data, encoded, 32)
    dataset, batches = augmented(encoded, LengthGroupedBatches(encoded.lengths, 8, seed=1), augmenter, 0.5, seed=1)
    batches.set_epoch(1)
    keys = [key for batch in batches for key in batch]
    assert sorted(k - len(encoded) for k in keys) == list(range(len(encoded)))  # epoch 1, every example once
    items = [dataset[k] for k in keys]
    assert [dataset[k] for k in keys] == items  # a pure function of (seed, epoch, example)
    assert [item["index"] for item in items] == [k - len(encoded) for k in keys]
    changed = [item for item in items if item["input_ids"] != encoded[item["index"]]["input_ids"]]
    assert 10 < len(changed) < 30  # about half of the 40
    neighbours = embedding_neighbours(model, tokenizer, set(range(len(tokenizer))))
    for item in changed:
        original = encoded[item["index"]]["input_ids"]
        for old, new in zip(original, item["input_ids"], strict=True):
            assert old == new or new in neighbours[old]
    other_epoch = [dataset[k + len(encoded)] for k in keys]
    assert other_epoch != items


# end to end, resumed, refused ---------------------------------------------------------------------------------

TRAIN = ("train.max_steps=4", "train.checkpoint_steps=2", "train.eval_steps=2", "train.batch_size=8")
OPTIONS = {
    "fgm+smoothing+char_noise": (
        "robust.adversarial=fgm",
        "robust.label_smoothing=0.1",
        "robust.augment.method=char_noise",
    ),
    "pgd+rdrop+neighbours": (
        "robust.adversarial=pgd",
        "robust.pgd_steps=2",
        "robust.rdrop=1.0",
        "robust.augment.method=neighbours",
        "robust.augment.probability=0.7",
    ),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_robust_runs_train_through_the_cli_and_resume_exactly(
    name: str, tiny_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []

    def spy(base: Any, settings: RobustSection) -> Any:
        built.append(robust_objective(base, settings))
        return built[-1]

    monkeypatch.setattr("adaptext.strategies.finetune.robust_objective", spy)
    options = (*TRAIN, *OPTIONS[name])
    straight = tiny_config(*options, f"output_dir={tmp_path / 'straight'}")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(straight.model_dump(mode="json")), encoding="utf-8")
    assert main(["-q", "train", str(config_file)]) == 0
    resumed = tiny_config(*options, f"output_dir={tmp_path / 'resumed'}")
    with pytest.raises(SimulatedCrashError):
        train(resumed, on_step=stop_at(3))  # the checkpoint is at step 2
    assert main(["-q", "train", str(config_file), f"output_dir={resumed.output_dir}", "--resume"]) == 0
    mine, reference = read_log(resumed.output_dir), read_log(straight.output_dir)
    assert [r["step"] for r in mine] == [r["step"] for r in reference]
    for a, b in zip(mine, reference, strict=True):
        for key in ("loss", "eval_loss"):
            assert a.get(key) == pytest.approx(b.get(key), abs=1e-6), (key, a["step"])
    assert (resumed.output_dir / "model").is_dir() and (resumed.output_dir / "metrics.json").is_file()
    assert len(built) == 3 and all(isinstance(o, RobustObjective) for o in built)  # the runs trained with it
    assert built[0].settings == straight.robust
    assert built[0].base.label_smoothing == straight.robust.label_smoothing


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("strategy=fewshot", "robust.adversarial=fgm"), "strategy fewshot does not use .*robust.adversarial=fgm"),
        (("strategy=prompt", "robust.rdrop=1"), "strategy prompt does not use robust.rdrop=1"),
        (("strategy=zeroshot", "robust.label_smoothing=0.1"), "zeroshot does not use .*robust.label_smoothing=0.1"),
        (("strategy=fewshot", "robust.augment.method=word_swap"), "robust.augment.method=word_swap"),
        (("robust.augment.method=synonyms",), "robust.augment.method: unknown augmenter 'synonyms'"),
        (("robust.augment.method=case", "robust.augment.strength=0.3"), "robust.augment.strength: the case pert"),
    ],
)
def test_strategies_refuse_what_they_cannot_honour(
    overrides: tuple[str, ...], message: str, tiny_config: Callable[..., Config]
) -> None:
    with pytest.raises(AdaptextError, match=message):
        train(tiny_config(*overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("robust.epsilon=2", "robust.epsilon applies only with robust.adversarial=fgm|pgd"),
        ("robust.pgd_steps=5", "robust.pgd_steps applies only with robust.adversarial=pgd"),
        ("robust.augment.probability=0.2", "robust.augment.probability applies only with a robust.augment.method"),
        ("robust.label_smoothing=1", "robust.label_smoothing"),
        ("robust.adversarial=fgsm", "robust.adversarial"),
    ],
)
def test_config_refuses_robust_keys_that_would_change_nothing(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        load_config(None, [override])
