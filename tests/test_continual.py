"""Continual learning on the tiny model: the head grows with its old rows unchanged, each method's term does what it
says, forgetting is measured correctly, and `extend` / `continual` refuse bad input before training."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import make_rows

from adaptext.cli import main
from adaptext.continual import extend, extend_config, load_plan, previous_run, run_plan
from adaptext.continual.memory import concat, herding, read_memory, select_memory
from adaptext.continual.methods import ContinualLoss, Distillation, EwcPenalty, align_new_rows, fisher_diagonal
from adaptext.continual.metrics import summarise
from adaptext.core.config import Config, load_config
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.batching import Collator, encode
from adaptext.data.examples import TextData
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model, grow_head
from adaptext.modeling.embedding import final_linear
from adaptext.modeling.lda import SHRINKAGES
from adaptext.strategies import train

OLD = ["billing", "shipping"]
FAST = ("train.epochs=4", "train.batch_size=4", "train.learning_rate=2e-3", "train.report_errors=0")


def rows_of(labels: list[str], n: int, seed: int) -> list[dict[str, str]]:
    return [row for row in make_rows(n * 3, seed=seed) if row["label"] in labels][:n]


@pytest.fixture
def task_files(write_csv: Callable[..., Path]) -> dict[str, Path]:
    """Task 1: billing and shipping; task 2: technical (a new label), each with validation and test files."""
    return {
        "t1_train": write_csv("t1_train.csv", rows_of(OLD, 60, 1)),
        "t1_test": write_csv("t1_test.csv", rows_of(OLD, 20, 2)),
        "t2_train": write_csv("t2_train.csv", rows_of(["technical"], 30, 3)),
        "t2_test": write_csv("t2_test.csv", rows_of(["technical"], 10, 4)),
    }


@pytest.fixture
def first_run(tiny_config: Callable[..., object], task_files: dict[str, Path], tmp_path: Path) -> Path:
    config = tiny_config(
        f"data.train={task_files['t1_train']}", "data.validation=null", f"data.test={task_files['t1_test']}", *FAST
    )
    return train(config).run_dir  # type: ignore[arg-type]


def test_grow_head_keeps_old_rows_and_ids(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), OLD, SINGLE_LABEL)
    before = final_linear(model).weight.detach().clone(), final_linear(model).bias.detach().clone()
    assert grow_head(model, [*OLD, "technical"]) == 2
    layer = final_linear(model)
    assert layer.out_features == 3 and model.config.id2label == {0: "billing", 1: "shipping", 2: "technical"}
    assert torch.equal(layer.weight[:2], before[0]) and torch.equal(layer.bias[:2], before[1])
    assert model(input_ids=torch.tensor([[2, 5, 3]])).logits.shape == (1, 3)
    with pytest.raises(AdaptextError, match="must start with"):
        grow_head(model, ["technical", *OLD])


def test_summaries_of_a_hand_built_matrix() -> None:
    matrix = [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.75, 1.0]]
    summary = summarise(matrix)
    assert summary["average_accuracy"] == pytest.approx((0.6 + 0.75 + 1.0) / 3)
    assert summary["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
    assert summary["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.75)) / 2)
    assert summary["average_incremental_accuracy"] == pytest.approx((0.9 + 0.75 + (2.35 / 3)) / 3)
    assert summarise([[0.5]])["backward_transfer"] is None
    with pytest.raises(ValueError, match="lacks"):
        summarise([[0.9, None], [None, 0.8]])


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_with_distance(tiny_model_dir: Path, tmp_path: Path) -> None:
    from adaptext.modeling.hub import load_tokenizer

    model = build_model(str(tiny_model_dir), OLD, SINGLE_LABEL)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = TextData(
        texts=[r["text"] for r in rows_of(OLD, 16, 5)], source="x", labels=[r["label"] for r in rows_of(OLD, 16, 5)]
    )
    encoded = encode(tokenizer, data, OLD, 32, SINGLE_LABEL)
    state = fisher_diagonal(model, encoded, Collator(0), SINGLE_LABEL, limit=16)
    assert all((f >= 0).all() for f in state.fisher.values()) and any(f.sum() > 0 for f in state.fisher.values())
    state.save(tmp_path / "ewc.safetensors")
    grow_head(model, [*OLD, "technical"])  # the head's old rows are still penalised, the new row is free
    penalty = EwcPenalty(type(state).load(tmp_path / "ewc.safetensors"), strength=10.0)
    penalty.bind(model)
    assert float(penalty().detach()) == 0.0
    layer = final_linear(model)
    with torch.no_grad():
        layer.weight[2] += 1.0  # the new label's row: no penalty
    assert float(penalty().detach()) == 0.0
    with torch.no_grad():
        layer.weight[0] += 0.1
    first = float(penalty().detach())
    with torch.no_grad():
        layer.weight[0] += 0.1
    assert first > 0 and float(penalty().detach()) == pytest.approx(4 * first, rel=1e-4)


def test_lwf_term_is_zero_when_the_old_scores_match_and_ignores_new_labels() -> None:
    teacher = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    term = Distillation(teacher, weight=1.0, temperature=2.0, task=SINGLE_LABEL)
    index = torch.tensor([1, 0])
    same = torch.cat([teacher[index], torch.tensor([[9.0], [-3.0]])], dim=1)  # any score for the new label
    assert float(term(same, index)) == pytest.approx(0.0, abs=1e-6)
    assert float(term(same[:, [1, 0, 2]], index)) > 0.01
    loss = ContinualLoss(SINGLE_LABEL, lwf=term)
    loss.next_batch(index)
    assert loss.index is index


def test_weight_aligning_scales_new_rows_to_the_old_norm(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), OLD, SINGLE_LABEL)
    grow_head(model, [*OLD, "technical"])
    layer = final_linear(model)
    with torch.no_grad():
        layer.weight[2] *= 5
    old = layer.weight[:2].detach().clone()
    factor = align_new_rows(model, 2)
    assert factor is not None and factor < 1
    assert torch.equal(layer.weight[:2], old)
    norms = layer.weight.detach().norm(dim=1)
    assert float(norms[2]) == pytest.approx(float(norms[:2].mean()), rel=1e-5)
    assert align_new_rows(model, 3) is None


def test_memory_selection_per_class_deterministic_and_herding_prefers_typical() -> None:
    data = TextData(texts=[f"t{i}" for i in range(12)], source="x", labels=["a"] * 6 + ["b"] * 6)
    chosen = select_memory(data, 2, how="random", seed=3)
    assert chosen == select_memory(data, 2, how="random", seed=3)
    assert len(chosen) == 4 and sorted({data.labels[i] for i in chosen}) == ["a", "b"]  # type: ignore[index]
    points = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.9, 0.5], [-1.0, 0.2]])
    normed = points / np.linalg.norm(points, axis=1, keepdims=True)
    nearest = int(np.argmin(np.linalg.norm(normed - normed.mean(axis=0), axis=1)))
    assert herding(points, 1) == [nearest]  # the one nearest the (normalised) mean
    assert sorted(herding(points, 5)) == [0, 1, 2, 3, 4]
    assert select_memory(data, 0, how="random", seed=0) == []


def test_extend_grows_new_labels_keeps_old_and_writes_a_plain_run(
    first_run: Path, task_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "extended"
    code = main(
        [
            "extend",
            str(first_run),
            "--data",
            str(task_files["t2_train"]),
            "--test",
            str(task_files["t2_test"]),
            "--output",
            str(out),
            "continual.memory_per_class=4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    labels = json.loads((out / "labels.json").read_text())
    assert labels == [*OLD, "technical"]
    predictor = Predictor.from_dir(out)
    assert predictor.labels == labels
    groups = json.loads((out / "extend_metrics.json").read_text())["groups"]
    by = {(g["data"].split(" (")[0], g["labels"]): g for g in groups}
    assert by[("new data", "new labels")]["accuracy_before"] == 0.0
    assert by[("previous run's data", "old labels")]["accuracy_before"] > 0.8
    assert "Old and new labels, before and after" in (out / "report.html").read_text()
    memory, _ = read_memory(out / "continual" / "memory.jsonl", load_config(out / "config.yaml").data)
    assert sorted(set(memory.labels)) == labels and len(memory) == 12  # type: ignore[arg-type]
    # plain transformers reads every label name
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out / "model"), tokenizer=str(out / "model"))
    assert classify("crash error bug")[0]["label"] in labels


def test_extend_refuses_what_cannot_grow_before_training(
    first_run: Path, task_files: dict[str, Path], tmp_path: Path, write_csv: Callable[..., Path]
) -> None:
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "config.json").write_text("{}")
    (onnx / "adaptext.json").write_text(json.dumps({"backend": "onnx", "labels": OLD, "exported_from": "x"}))
    with pytest.raises(AdaptextError, match="ONNX export cannot be trained further"):
        previous_run(onnx)
    previous = previous_run(first_run)
    misspelt = write_csv(
        "misspelt.csv", [{"text": "refund invoice", "label": "Billing"}, *rows_of(["technical"], 8, 9)]
    )
    config = extend_config(previous, {"data": {"train": str(misspelt)}, "output_dir": str(tmp_path / "bad")})
    with pytest.raises(DataError, match="'Billing' differs from the model's label 'billing' only in case"):
        extend(first_run, config)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="continual"):
        train(load_config(first_run / "config.yaml", ["continual.method=ewc", f"output_dir={tmp_path / 'x'}"]))
    # a run whose training file lacks a label it has (trained by replay on later data) cannot give slda its statistics
    replayed = extend(
        first_run,
        extend_config(
            previous,
            {
                "data": {"train": str(task_files["t2_train"])},
                "output_dir": str(tmp_path / "r"),
                "continual": {"method": "replay", "memory_per_class": 2},
            },
        ),
    )
    (replayed.run_dir / "continual" / "memory.jsonl").unlink()
    config = extend_config(
        previous_run(replayed.run_dir),
        {
            "data": {"train": str(task_files["t2_train"])},
            "output_dir": str(tmp_path / "s"),
            "continual": {"method": "slda"},
        },
    )
    with pytest.raises(DataError, match=r"slda needs examples of every label.*'billing', 'shipping'"):
        extend(replayed.run_dir, config)


def test_methods_run_and_naive_forgets_more_than_replay(
    first_run: Path, task_files: dict[str, Path], tmp_path: Path
) -> None:
    previous = previous_run(first_run)
    old_test = pd.read_csv(task_files["t1_test"])
    accuracy = {}
    for method in ("naive", "replay", "ewc", "lwf", "replay+lwf", "joint", "slda"):
        config = extend_config(
            previous,
            {
                "data": {"train": str(task_files["t2_train"]), "test": str(task_files["t2_test"])},
                "output_dir": str(tmp_path / method),
                "continual": {"method": method, "memory_per_class": 25},
            },
        )
        result = extend(first_run, config)
        predictions = Predictor.from_dir(result.run_dir).predict(old_test["text"].tolist())
        accuracy[method] = float(np.mean([p.label == y for p, y in zip(predictions, old_test["label"], strict=True)]))
        assert json.loads((result.run_dir / "labels.json").read_text()) == [*OLD, "technical"]
    ewc_state = tmp_path / "ewc" / "continual" / "ewc.safetensors"
    assert ewc_state.is_file()
    # trained on the new label alone, the head forgets the old ones; a memory of the old examples keeps them
    assert accuracy["naive"] < 0.6 <= accuracy["replay"], accuracy
    assert accuracy["joint"] >= 0.7 and accuracy["replay+lwf"] >= 0.6, accuracy
    # slda (a run made by `train` saved no statistics: they come from its training file) trains nothing
    assert (tmp_path / "slda" / "continual" / "slda.safetensors").is_file() and accuracy["slda"] >= 0.6, accuracy


def test_continual_plan_matrix_report_and_resume(
    tiny_model_dir: Path, task_files: dict[str, Path], tmp_path: Path, write_csv: Callable[..., Path]
) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan = {
        "output_dir": str(tmp_path / "cl"),
        "seed": 3,
        "base": {
            "model": {"name": str(tiny_model_dir)},
            "data": {"max_length": 32},
            "train": {"epochs": 4, "batch_size": 4, "learning_rate": 2e-3, "precision": "fp32", "report_errors": 0},
        },
        "continual": {"method": "replay", "memory_per_class": 8},
        "tasks": [
            {"name": "t1", "train": str(task_files["t1_train"]), "test": str(task_files["t1_test"])},
            {"name": "t2", "train": str(task_files["t2_train"]), "test": str(task_files["t2_test"])},
        ],
    }
    plan_file.write_text(yaml.safe_dump(plan))
    assert main(["continual", str(plan_file)]) == 0
    out = tmp_path / "cl"
    metrics = json.loads((out / "continual_metrics.json").read_text())
    matrix = metrics["matrix"]
    assert matrix[0][1] is None and all(v is not None for v in matrix[1])
    assert metrics["backward_transfer"] == pytest.approx(matrix[1][0] - matrix[0][0])
    assert len(metrics["seconds"]) == 2 and metrics["complete"]
    assert (out / "continual_heatmap.png").stat().st_size > 1000
    assert "Continual learning" in (out / "report.html").read_text()
    assert Predictor.from_dir(out).labels == [*OLD, "technical"]
    assert not (out / "tasks" / "01-t1" / "model").exists() and (out / "tasks" / "02-t2" / "model").is_dir()
    assert main(["evaluate", str(out), "--data", str(task_files["t2_test"]), "--output", str(tmp_path / "ev")]) == 0
    # the plan's folder continues like any run: extend it with more data of its labels (domain-incremental)
    more = tmp_path / "more"
    assert main(["extend", str(out), "--data", str(task_files["t1_train"]), "--output", str(more)]) == 0
    assert Predictor.from_dir(more).labels == [*OLD, "technical"]
    state = json.loads((more / "continual" / "state.json").read_text())
    assert [step["name"] for step in state["increments"]][:2] == ["t1", "t2"] and len(state["increments"]) == 3
    # a finished plan resumed trains nothing again and gives the same matrix
    stamp = (out / "tasks" / "02-t2" / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(["continual", str(plan_file), "--resume"]) == 0
    assert json.loads((out / "continual_metrics.json").read_text())["matrix"] == matrix
    assert (out / "tasks" / "02-t2" / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_plan_errors_name_the_task_and_file(
    tiny_model_dir: Path, task_files: dict[str, Path], tmp_path: Path, write_csv: Callable[..., Path]
) -> None:
    def plan_with(tasks: list[dict[str, object]], **extra: object) -> Path:
        path = tmp_path / "plan.yaml"
        tree = {"output_dir": str(tmp_path / "out"), "base": {"model": {"name": str(tiny_model_dir)}}, "tasks": tasks}
        path.write_text(yaml.safe_dump(tree | extra))
        return path

    t1 = {"name": "t1", "train": str(task_files["t1_train"])}
    no_column = write_csv("nocol.csv", [{"body": "x", "label": "technical"}])
    with pytest.raises(DataError, match=r"task t2: .*nocol.csv.*text"):
        run_plan(load_plan(plan_with([t1, {"name": "t2", "train": str(no_column)}])))
    respelt = write_csv(
        "respelt.csv", [{"text": "crash bug", "label": "Shipping"}, {"text": "bug", "label": "technical"}]
    )
    with pytest.raises(
        DataError, match=r"task t2 \(.*respelt.csv\): label 'Shipping' differs from 'shipping' of task t1"
    ):
        run_plan(load_plan(plan_with([t1, {"name": "t2", "train": str(respelt)}])))
    other_column = write_csv("other.csv", [{"body": "crash bug", "label": "technical"}])
    with pytest.raises(DataError, match=r"task t2 .*reads text_column 'body'"):
        run_plan(load_plan(plan_with([t1, {"name": "t2", "train": str(other_column), "text_column": "body"}])))
    with pytest.raises(ConfigError, match=r"base sets data\.train"):
        load_plan(plan_with([t1], base={"data": {"train": "x.csv"}}))
    with pytest.raises(ConfigError, match="unknown continual method"):
        run_plan(load_plan(plan_with([t1]), ["continual.method=magic"]))
    assert not (tmp_path / "out").exists()


def test_concat_keeps_order_and_labels() -> None:
    a = TextData(texts=["x", "y"], source="a", labels=["p", "q"], rows=[1, 2])
    b = TextData(texts=["z"], source="b", labels=["r"], rows=[5])
    both = concat([a, b], "ab")
    assert both.texts == ["x", "y", "z"] and both.labels == ["p", "q", "r"] and both.rows == [1, 2, 5]


def test_streaming_class_statistics_equal_one_fit_and_give_the_lda_head() -> None:
    from adaptext.modeling.lda import ClassStatistics

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(3, 5))
    targets = rng.integers(0, 3, size=300)
    x = centres[targets] + rng.normal(size=(300, 5))
    first = ClassStatistics.empty(0, 5).update(x[:100][targets[:100] < 2], targets[:100][targets[:100] < 2], 2)
    streamed = first.update(x[100:], targets[100:], 3).update(
        x[:100][targets[:100] == 2], targets[:100][targets[:100] == 2], 3
    )
    once = ClassStatistics.empty(0, 5).update(x, targets, 3)
    for a, b in ((streamed.counts, once.counts), (streamed.sums, once.sums), (streamed.gram, once.gram)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)
    weights, bias = once.head(shrinkage=0.0)
    means = np.stack([x[targets == c].mean(axis=0) for c in range(3)])
    pooled = sum((x[targets == c] - means[c]).T @ (x[targets == c] - means[c]) for c in range(3)) / (300 - 3)
    expected = np.linalg.solve(pooled, means.T).T
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    np.testing.assert_allclose(bias, -0.5 * np.einsum("cd,cd->c", expected, means), rtol=1e-6)
    assert ((x @ weights.T + bias).argmax(axis=1) == targets).mean() > 0.95
    with pytest.raises(ValueError, match="no examples"):
        ClassStatistics.empty(0, 5).update(x[:5], np.zeros(5, dtype=int), 2).head(0.1)


def test_statistics_without_some_examples_equal_a_fit_on_the_rest() -> None:
    from adaptext.modeling.lda import ClassStatistics

    rng = np.random.default_rng(1)
    x, targets = rng.normal(size=(40, 4)), np.repeat(np.arange(4), 10)
    held = np.arange(40) % 3 == 0
    whole = ClassStatistics.empty(0, 4).update(x, targets, 4)
    without = whole - ClassStatistics.empty(0, 4).update(x[held], targets[held], 4)
    rest = ClassStatistics.empty(0, 4).update(x[~held], targets[~held], 4)
    for a, b in zip(without.arrays().values(), rest.arrays().values(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(without.head(0.1)[0], rest.head(0.1)[0], rtol=1e-7)


def test_held_out_shrinkage_follows_what_the_data_can_estimate() -> None:
    """Many examples of strongly correlated noise need the covariance itself (little shrinkage); few examples in many
    dimensions cannot estimate it (much shrinkage)."""
    from adaptext.modeling.lda import ClassStatistics, best_shrinkage, held_out_correct

    def chosen(x: np.ndarray, targets: np.ndarray, old: tuple[np.ndarray, np.ndarray] | None = None) -> float:
        classes = int(targets.max()) + 1
        stats = ClassStatistics.empty(0, x.shape[1])
        if old is not None:
            stats = stats.update(*old, classes)
        return best_shrinkage(held_out_correct(stats.update(x, targets, classes), x, targets))

    rng = np.random.default_rng(0)
    # 4 classes apart only along 5 quiet directions; 15 loud ones, mixed into all 20, swamp them unless whitened
    dim, classes = 20, 4
    mixing = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    scale = np.r_[np.full(15, 30.0), np.full(5, 0.3)]
    centres = np.zeros((classes, dim))
    centres[:, 15:] = rng.normal(size=(classes, 5))
    targets = np.repeat(np.arange(classes), 400)
    x = (centres[targets] + rng.normal(size=(len(targets), dim)) * scale) @ mixing.T
    assert chosen(x, targets) <= 1e-3
    # 10 close classes of 10 examples in 40 isotropic dimensions: scored on the examples it was fitted on, the least
    # shrinkage would win (98% against 97%); held out, the most does
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(10), 10)
    x = rng.normal(size=(10, 40))[targets] * 0.3 + rng.normal(size=(100, 40))
    assert chosen(x, targets) == max(SHRINKAGES)
    # only the newest examples are held out: earlier classes stay in every fold's statistics
    new = targets >= 5
    assert chosen(x[new], targets[new], (x[~new], targets[~new])) == max(SHRINKAGES)
    # a class of one example keeps it (nothing held out), and with nothing to hold out the largest is taken
    assert chosen(x[::10], targets[::10]) == max(SHRINKAGES)


def test_auto_shrinkage_sums_the_held_out_counts_of_every_increment(tmp_path: Path) -> None:
    from adaptext.modeling.lda import ClassStatistics, best_shrinkage, held_out_correct

    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(10), 10)
    x = rng.normal(size=(10, 40))[targets] * 0.3 + rng.normal(size=(100, 40))
    first, second = targets < 5, targets >= 5
    one = ClassStatistics.empty(0, 40).update(x[first], targets[first], 5)
    counts_one = held_out_correct(one, x[first], targets[first])
    one = one.cross_validated(x[first], targets[first])
    np.testing.assert_array_equal(one.held_out, counts_one)
    two = one.update(x[second], targets[second], 10)
    counts_two = held_out_correct(two, x[second], targets[second])
    two = two.cross_validated(x[second], targets[second])
    np.testing.assert_array_equal(two.held_out, counts_one + counts_two)
    assert two.auto_shrinkage() == best_shrinkage(counts_one + counts_two)
    two.save(tmp_path / "stats.safetensors")  # the tally travels with the statistics to the next increment
    np.testing.assert_array_equal(ClassStatistics.load(tmp_path / "stats.safetensors").held_out, two.held_out)
    with pytest.raises(ValueError, match="cross_validated"):
        ClassStatistics.empty(2, 3).auto_shrinkage()


def test_slda_plan_in_increments_gives_the_head_of_one_fit_on_all_data(
    tiny_model_dir: Path, task_files: dict[str, Path], tmp_path: Path, write_csv: Callable[..., Path]
) -> None:
    from safetensors.torch import load_file

    both = write_csv(
        "both.csv",
        [
            *pd.read_csv(task_files["t1_train"]).to_dict("records"),
            *pd.read_csv(task_files["t2_train"]).to_dict("records"),
        ],
    )
    base = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"max_length": 32, "validation_fraction": 0.1},
        "train": {"precision": "fp32", "report_errors": 0},
        "calibrate": False,  # each plan's last temperature would scale its head differently
    }
    v1, v2 = rows_of(OLD, 8, 8), rows_of(["technical"], 4, 9)
    val1, val2, val_all = write_csv("v1.csv", v1), write_csv("v2.csv", v2), write_csv("vall.csv", [*v1, *v2])
    heads = []
    for name, tasks in (
        (
            "steps",
            [
                {"name": "t1", "train": str(task_files["t1_train"]), "validation": str(val1)},
                {"name": "t2", "train": str(task_files["t2_train"]), "validation": str(val2)},
            ],
        ),
        ("once", [{"name": "all", "train": str(both), "validation": str(val_all)}]),
    ):
        plan = {"output_dir": str(tmp_path / name), "base": base, "continual": {"method": "slda"}, "tasks": tasks}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(plan))
        assert main(["continual", str(tmp_path / f"{name}.yaml")]) == 0
        weights = load_file(str(tmp_path / name / "model" / "model.safetensors"))
        heads.append({k: v for k, v in weights.items() if k.startswith("classifier")})
        assert (tmp_path / name / "continual" / "slda.safetensors").is_file()
    # labels are in the same order (billing, shipping, technical) in both
    for key in heads[0]:
        torch.testing.assert_close(heads[0][key], heads[1][key], rtol=1e-4, atol=1e-4)
    metrics = json.loads((tmp_path / "steps" / "continual_metrics.json").read_text())
    assert metrics["matrix"][1][0] is not None


def test_shrinkage_settings_take_a_share_or_auto() -> None:
    assert load_config(None, []).continual.router_shrinkage == "auto"
    for key in ("router_shrinkage", "slda_shrinkage"):
        assert getattr(load_config(None, [f"continual.{key}=auto"]).continual, key) == "auto"
        assert getattr(load_config(None, [f"continual.{key}=0.05"]).continual, key) == 0.05
        for bad in ("1.5", "-0.1", "oas"):
            with pytest.raises(ConfigError, match=key):
                load_config(None, [f"continual.{key}={bad}"])


def test_method_names_and_combinations_are_checked() -> None:
    assert load_config(None, ["continual.method=LwF + replay"]).continual.parts(False) == {"lwf", "replay"}
    auto = load_config(None, []).continual
    assert auto.resolved(multi_label=False) == "slda" and auto.resolved(multi_label=True) == "replay"
    for bad, message in (("slda+replay", "only replay"), ("replay+replay", "unknown"), ("icarl", "unknown")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"continual.method={bad}"])


def test_slda_refuses_multi_label(first_run: Path, tmp_path: Path, write_csv: Callable[..., Path]) -> None:
    from adaptext.continual import Continue

    config = load_config(first_run / "config.yaml", ["continual.method=slda", "data.multi_label=true"])
    with pytest.raises(ConfigError, match="slda fits one class per text"):
        Continue(None).check(config)


def test_continual_runs_refuse_the_robust_training_options(tiny_config: Callable[..., Config]) -> None:
    from adaptext.continual.strategy import Continue

    with pytest.raises(ConfigError, match=r"robust\.label_smoothing"):
        Continue(None).check(tiny_config("robust.label_smoothing=0.1"))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft, loading plainly
def test_adapters_plan_keeps_each_task_adapter_and_mixes_them_by_the_router(
    tiny_model_dir: Path, task_files: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from adaptext.deploy.export import export_onnx
    from adaptext.inference.routed import ROUTER_FILE, ROUTER_STATS_FILE, Router, RouterHead, layer_embedding

    tiny = AutoConfig.from_pretrained(tiny_model_dir)

    plan = {
        "output_dir": str(tmp_path / "cl"),
        "seed": 3,
        "keep_task_models": True,
        "base": {
            "model": {"name": str(tiny_model_dir)},
            "data": {"max_length": 32},
            "train": {"epochs": 3, "batch_size": 8, "learning_rate": 5e-3, "precision": "fp32", "report_errors": 0},
            "calibrate": False,
        },
        "continual": {"method": "adapters", "adapter_top_k": 0},
        "tasks": [
            {"name": "t1", "train": str(task_files["t1_train"]), "test": str(task_files["t1_test"])},
            {"name": "t2", "train": str(task_files["t2_train"]), "test": str(task_files["t2_test"])},
        ],
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["continual", str(tmp_path / "plan.yaml")]) == 0
    out = tmp_path / "cl"
    metrics = json.loads((out / "continual_metrics.json").read_text())
    assert metrics["method"] == "adapters" and all(v is not None for v in metrics["matrix"][1])
    model_dir = out / "model"
    info = json.loads((model_dir / "adaptext.json").read_text())
    assert [e["task"] for e in info["routed"]["experts"]] == ["t1", "t2"]
    # the first task's adapter is the one task 1 trained, unchanged by task 2
    first = out / "tasks" / "01-t1" / "model" / "members" / "0" / "adapter_model.safetensors"
    kept = load_file(str(model_dir / "members" / "0" / "adapter_model.safetensors"))
    for key, value in load_file(str(first)).items():
        assert torch.equal(kept[key], value), key
    # each expert is a plain peft adapter on the base model, with its own labels
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    expert = PeftModel.from_pretrained(base, model_dir / "members" / "1")
    assert expert.config.num_labels == 1
    # the routed probabilities are the product of the router's route probability and the expert's, normalised
    texts = (
        pd.read_csv(task_files["t1_test"])["text"].tolist()[:6]
        + pd.read_csv(task_files["t2_test"])["text"][:3].tolist()
    )
    routed = Predictor.from_dir(out)
    assert routed.labels == [*OLD, "technical"]
    probs = routed.predict_proba(texts)
    experts = [Predictor.from_dir(model_dir / "members" / str(i)) for i in range(2)]
    batch = routed.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    stats = Router.load(out / "continual" / ROUTER_STATS_FILE)
    layers = info["routed"]["layers"]
    assert layers == list(range(tiny.num_hidden_layers + 1))  # every hidden state: the tiny model's fit the limit
    # `auto`: the shrinkage with the most held-out examples right over both tasks, recorded in the folder
    assert stats.stats.held_out is not None and info["routed"]["shrinkage"] == stats.stats.auto_shrinkage()
    weights, bias = stats.stats.head(info["routed"]["shrinkage"])
    with torch.no_grad():
        x = layer_embedding(routed.model.experts[0], dict(batch), layers).double().numpy()
    assert x.shape[1] == len(layers) * tiny.hidden_size
    scores = x @ weights.T + bias
    routes = np.exp(scores - scores.max(1, keepdims=True))
    routes /= routes.sum(1, keepdims=True)
    route_of = {(int(t), int(y)): r for r, (t, y) in enumerate(zip(stats.route_task, stats.route_label, strict=True))}
    expected = np.zeros_like(probs)
    for t, label_ids in ((0, [0, 1]), (1, [2])):
        expected[:, label_ids] = routes[:, [route_of[t, y] for y in label_ids]] * experts[t].predict_proba(texts)
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    with pytest.raises(AdaptextError, match="routed adapters model runs one adapter per task"):
        export_onnx(out, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    # domain-incremental: the same labels again as a third task, a third expert and a route per (task, label)
    more = tmp_path / "more"
    assert main(["extend", str(out), "--data", str(task_files["t1_train"]), "--output", str(more)]) == 0
    grown = RouterHead.load(more / "model" / ROUTER_FILE)
    assert grown.route_task.tolist() == [0, 0, 1, 2, 2] and len(Predictor.from_dir(more).model.experts) == 3
    # the model folder alone cannot grow: the router's statistics are in its run folder
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    overrides = {"output_dir": str(tmp_path / "y"), "data": {"train": str(task_files["t2_train"])}}
    with pytest.raises(ConfigError, match="router statistics"):
        extend(bare, extend_config(previous_run(bare), overrides))
    # a routed run continues only with adapters; adapters continue only a routed run
    with pytest.raises(ConfigError, match=r"continues only with continual\.method=adapters"):
        extend(
            out,
            extend_config(
                previous_run(out),
                {
                    "output_dir": str(tmp_path / "x"),
                    "continual": {"method": "slda"},
                    "data": {"train": str(task_files["t2_train"])},
                },
            ),
        )
    assert not (tmp_path / "x").exists()


def test_adapters_refuse_a_plain_model_and_multi_label(first_run: Path) -> None:
    from adaptext.continual import Continue

    config = load_config(first_run / "config.yaml", ["continual.method=adapters"])
    with pytest.raises(ConfigError, match="continues a run made with it"):
        Continue(previous_run(first_run)).check(config)
    with pytest.raises(ConfigError, match="use replay for multi-label"):
        Continue(None).check(
            load_config(first_run / "config.yaml", ["continual.method=adapters", "data.multi_label=true"])
        )
    with pytest.raises(ConfigError, match="only replay"):
        load_config(None, ["continual.method=adapters+lwf"])


def test_router_reads_every_hidden_state_or_the_last_that_fit() -> None:
    from adaptext.inference.routed import router_layers

    assert router_layers(6, 384) == list(range(7))  # MiniLM: 7 x 384 = 2,688 features
    assert router_layers(12, 768) == [8, 9, 10, 11, 12]  # BERT-base: 5 x 768 = 3,840 of at most 4,096
    assert router_layers(24, 1024, limit=512) == [24]  # at least the last one
