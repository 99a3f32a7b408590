"""Contract tests of parameter-efficient fine-tuning (`peft.method`): what trains, what is saved and how it reloads,
merging, several adapters on one base, resuming, run statistics and config errors."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import adaptext.deploy.merge as merge_module
import adaptext.modeling.adapters as adapters_module
from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config, PeftSection, config_to_yaml, load_config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.task import SINGLE_LABEL
from adaptext.inference.predictor import MultiPredictor, Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.hub import load_tokenizer
from adaptext.strategies import train
from adaptext.training.callbacks import Callback
from adaptext.training.state import TrainingState, TrainResult
from conftest import LABELS, SimulatedCrashError, folded_temperature, make_rows, read_log, stop_at

TEXTS = [
    "my invoice is wrong again",
    "where is my parcel today",
    "login error with the screen",
    "please help with the refund",
    "the courier did not arrive with my package",
    "why is my password an error again",
    "a much longer text about the invoice and the parcel and the login error today",
]
ADAPTER_METHODS = ["lora", "adalora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning", "loha"]
PROMPT_METHODS = ["prefix_tuning", "prompt_tuning", "p_tuning"]
MERGEABLE = ["lora", "ia3", "adalora"]
B_LABELS = ["billing", "shipping"]
# 24 training rows at batch 8: 3 optimizer steps per epoch.
STEPS_PER_EPOCH = 3
# The head of the tiny BERT: pooler.dense (32x32 + 32) and classifier (3x32 + 3).
HEAD_PARAMETERS = 32 * 32 + 32 + 3 * 32 + 3


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `adaptext ARGV` in-process; the exit code and the single `error:` line of stderr (or all of stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    if code == EXIT_USER_ERROR:
        assert len(lines) == 1, err
        return code, lines[0]
    return code, err


def base_name(name: str) -> str:
    """The parameter name in the plain classifier that a peft model's parameter `name` wraps."""
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapter-data")
    files = {
        "train": folder / "train.csv",
        "validation": folder / "validation.csv",
        "train_b": folder / "train_b.csv",
        "validation_b": folder / "validation_b.csv",
    }
    pd.DataFrame(make_rows(24, seed=1)).to_csv(files["train"], index=False)
    pd.DataFrame(make_rows(12, seed=2)).to_csv(files["validation"], index=False)
    pd.DataFrame(make_rows(24, seed=4, labels=B_LABELS)).to_csv(files["train_b"], index=False)
    pd.DataFrame(make_rows(8, seed=5, labels=B_LABELS)).to_csv(files["validation_b"], index=False)
    return files


@pytest.fixture(scope="module")
def make_config(tiny_model_dir: Path, data: dict[str, Path]) -> Callable[..., Config]:
    def make(method: str, output_dir: Path, *overrides: str) -> Config:
        base = [
            f"model.name={tiny_model_dir}",
            f"data.train={data['train']}",
            f"data.validation={data['validation']}",
            f"output_dir={output_dir}",
            "data.max_length=32",
            "train.epochs=2",
            "train.batch_size=8",
            "train.learning_rate=1e-2" if method != "none" else "train.learning_rate=1e-3",
            "train.warmup_ratio=0",
            "train.precision=fp32",
            "seed=7",
            f"peft.method={method}",
        ]
        return load_config(None, base + list(overrides))

    return make


@pytest.fixture(scope="module")
def runs(make_config: Callable[..., Config], data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`runs(name)`: a finished run, trained once per module. `name` is a method (`none`: full fine-tuning) or
    `lora_b` (LoRA on a 2-label subset). Each holds the result, the model right after wrapping (`initial`) and the
    in-memory model at the last save (`saved`, the one in run/model)."""
    folder = tmp_path_factory.mktemp("adapter-runs")
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name in cache:
            return cache[name]
        method, extra = name, []
        if name == "lora_b":
            method, extra = "lora", [f"data.train={data['train_b']}", f"data.validation={data['validation_b']}"]
        config = make_config(method, folder / name, *extra)
        captured: dict[str, Any] = {}

        class Capture(Callback):
            def on_train_begin(self, state: TrainingState, model: Any) -> None:
                captured["initial"] = copy.deepcopy(model)

            def on_save(self, model: Any, target: Path) -> None:
                captured["saved"] = copy.deepcopy(model).eval()

        result = train(config, callbacks=[Capture()])
        cache[name] = {"config": config, "result": result, **captured}
        return cache[name]

    return get


# 1. only the adapter and the head train -------------------------------------------------------


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_only_adapter_and_head_train_and_the_base_stays_unchanged(runs: Any, tiny_model_dir: Path, method: str) -> None:
    run = runs(method)
    initial, final = run["initial"], run["saved"]
    plain = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    base_keys = set(plain.state_dict())  # every weight of the plain classifier, head included
    head_modules = {"classifier", "bert.pooler.dense"}

    trainable = {name for name, p in initial.named_parameters() if p.requires_grad}
    frozen = {name for name, p in initial.named_parameters() if not p.requires_grad}
    head_copies = {name for name in trainable if ".modules_to_save." in name}
    adapter = trainable - head_copies
    # The head is trained as a whole copy (peft's modules_to_save): classifier and BERT's pooler.
    assert {base_name(n.split(".modules_to_save.")[0]) for n in head_copies} == head_modules
    assert {n for n in head_copies if n.endswith(".weight")}, head_copies
    # Everything else that trains is new (adapter) weight, never a weight of the base model.
    assert adapter, f"{method}: no adapter parameters train"
    assert not {base_name(n) for n in adapter} & base_keys, sorted(adapter)
    # Every weight of the base model is there, frozen (the head's originals included).
    assert base_keys <= {base_name(n) for n in frozen}
    assert {n for n, p in final.named_parameters() if p.requires_grad} == trainable

    before, after = params(initial), params(final)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not changed & frozen, sorted(changed & frozen)
    assert head_copies <= changed  # the head trained
    assert adapter & changed, f"{method}: the adapter did not train"
    # The frozen base is the checkpoint's, untouched by training.
    checkpoint = plain.state_dict()
    for name in frozen:
        key = base_name(name)
        if key in checkpoint and not key.startswith("classifier"):  # the classifier starts random
            torch.testing.assert_close(after[name], checkpoint[key], rtol=0, atol=0, msg=name)


# 2. save -> reload ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_reloaded_adapter_gives_the_in_memory_logits(runs: Any, method: str) -> None:
    run = runs(method)
    result: TrainResult = run["result"]
    reloaded = Predictor.from_dir(result.run_dir)
    direct = Predictor(run["saved"], reloaded.tokenizer, max_length=reloaded.max_length)
    expected = direct.predict_logits(TEXTS) / folded_temperature(reloaded)  # calibration divided the saved head
    np.testing.assert_allclose(reloaded.predict_logits(TEXTS), expected, rtol=0, atol=2e-6)
    assert reloaded.labels == LABELS
    # Not a constant function: the texts get different logits.
    assert np.ptp(expected, axis=0).max() > 1e-4


# What plain peft says on loading an AdaLoRA folder (its pruned ranks) and about a deprecated transformers call.
@pytest.mark.filterwarnings("ignore:.*rank_pattern keys did not match:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_adapter_folder_loads_with_plain_peft(runs: Any, method: str) -> None:
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = runs(method)["result"].model_dir
    labels = json.loads((folder / "adaptext.json").read_text(encoding="utf-8"))["labels"]
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    plain = Predictor(model.eval(), AutoTokenizer.from_pretrained(folder), max_length=32)
    assert plain.labels == LABELS
    ours = Predictor.from_dir(folder)
    np.testing.assert_allclose(plain.predict_logits(TEXTS), ours.predict_logits(TEXTS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_adapter_folder_is_small_and_records_its_base(runs: Any, tiny_model_dir: Path, method: str) -> None:
    result: TrainResult = runs(method)["result"]
    full: TrainResult = runs("none")["result"]
    folder = result.model_dir
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()
    assert not (folder / "pytorch_model.bin").exists()
    assert (folder / "tokenizer_config.json").is_file()
    adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    full_bytes = (full.model_dir / "model.safetensors").stat().st_size
    assert adapter_bytes < full_bytes
    # Only what trained is saved: about 4 bytes per trainable float, far from the base model's weights.
    assert adapter_bytes <= 4 * result.stats["trainable_parameters"] + 16_384
    assert result.stats["model_size_bytes"] == adapter_bytes

    adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert adapter_config["peft_type"].lower() == method
    metadata = json.loads((folder / "adaptext.json").read_text(encoding="utf-8"))
    assert metadata["base_model"] == str(tiny_model_dir)
    assert metadata["base_model_path"] == str(tiny_model_dir)
    assert metadata["peft_method"] == method
    assert metadata["labels"] == LABELS
    assert metadata["problem_type"] == "single_label_classification"
    assert metadata["max_length"] == 32


# 3. merge -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_gives_a_plain_model_with_the_same_predictions(
    runs: Any, method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run_dir = runs(method)["result"].run_dir
    output = tmp_path / "merged"
    code, err = run_cli(capsys, "merge", str(run_dir), "--output", str(output))
    assert code == 0, err
    assert {"config.json", "model.safetensors", "adaptext.json"} <= {p.name for p in output.iterdir()}
    assert not (output / "adapter_config.json").exists()
    assert not (output / "adapter_model.safetensors").exists()
    metadata = json.loads((output / "adaptext.json").read_text(encoding="utf-8"))
    assert metadata["peft_method"] == "none"
    assert metadata["merged_method"] == method
    assert metadata["merge_check"]["max_abs_diff"] <= 1e-4
    assert metadata["merge_check"]["n_examples"] == 12  # the run's validation split

    adapter = Predictor.from_dir(run_dir)
    merged = AutoModelForSequenceClassification.from_pretrained(output).eval()
    assert merged.config.id2label == dict(enumerate(LABELS))
    direct = Predictor(merged, AutoTokenizer.from_pretrained(output), max_length=32)
    np.testing.assert_allclose(direct.predict_logits(TEXTS), adapter.predict_logits(TEXTS), rtol=0, atol=1e-4)

    classify = pipeline("text-classification", model=str(output), device="cpu")
    outputs = classify(TEXTS)
    ours = adapter.predict(TEXTS)
    assert [out["label"] for out in outputs] == [p.label for p in ours]
    assert [out["score"] for out in outputs] == pytest.approx([p.score for p in ours], abs=1e-4)
    # The merged folder is an ordinary model folder for adaptext too.
    assert Predictor.from_dir(output).labels == LABELS


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_merge_refuses_prompt_methods(
    runs: Any, method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "merged"
    code, line = run_cli(capsys, "merge", str(runs(method)["result"].run_dir), "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert line.startswith("adaptext merge: error:")
    assert f"{method} cannot be merged" in line
    assert not output.exists()


def test_merge_that_changes_the_logits_fails_with_the_numbers(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = merge_module.merge_model

    def perturbed(model: Any) -> Any:
        merged = original(model)
        with torch.no_grad():
            merged.classifier.bias[0] += 1.0  # every example's first logit moves by exactly 1
        return merged

    monkeypatch.setattr(merge_module, "merge_model", perturbed)
    output = tmp_path / "merged"
    code, line = run_cli(capsys, "merge", str(runs("lora")["result"].run_dir), "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert "merge check failed" in line
    assert "12 examples" in line
    assert "max |logit difference| 1.00e+00" in line
    assert "tolerance 1e-04" in line
    assert "labels agree on" in line
    assert not output.exists()
    assert not (tmp_path / "merged.tmp").exists()


def test_merge_tolerance_option_is_applied(runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "merged"
    run_dir = str(runs("lora")["result"].run_dir)
    code, line = run_cli(capsys, "merge", run_dir, "--output", str(output), "--tolerance", "-1")
    assert code == EXIT_USER_ERROR  # no merge is within a negative tolerance
    assert "merge check failed" in line
    assert not output.exists()


def test_merge_of_a_copied_adapter_folder_needs_data(
    runs: Any, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(runs("lora")["result"].model_dir, folder)
    output = tmp_path / "merged"
    code, line = run_cli(capsys, "merge", str(folder), "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert "--data" in line
    assert not output.exists()
    code, err = run_cli(capsys, "merge", str(folder), "--output", str(output), "--data", str(data["validation"]))
    assert code == 0, err
    assert (output / "model.safetensors").is_file()


def test_merge_of_a_full_model_run_is_refused(runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "merged"
    code, line = run_cli(capsys, "merge", str(runs("none")["result"].run_dir), "--output", str(output))
    assert code == EXIT_USER_ERROR
    assert "already a full model" in line
    assert not output.exists()


# 4. several adapters on one base --------------------------------------------------------------


def _base_tensors(predictor: Predictor) -> dict[str, torch.Tensor]:
    base = predictor.model.get_base_model()
    return {
        "word_embeddings": base.bert.embeddings.word_embeddings.weight,
        "query": base.bert.encoder.layer[0].attention.self.query.base_layer.weight,
        "output.dense": base.bert.encoder.layer[1].output.dense.base_layer.weight,
    }


def test_multi_predictor_routes_to_each_adapter_on_one_shared_base(runs: Any) -> None:
    dirs = {"a": runs("lora")["result"].run_dir, "b": runs("lora_b")["result"].run_dir}
    multi = MultiPredictor.from_dirs(dirs)
    assert multi.tasks == ["a", "b"]
    assert multi["a"].labels == LABELS
    assert multi["b"].labels == B_LABELS
    for task, run_dir in dirs.items():
        alone = Predictor.from_dir(run_dir)
        np.testing.assert_allclose(multi[task].predict_logits(TEXTS), alone.predict_logits(TEXTS), rtol=0, atol=1e-6)
        routed = multi.predict(task, TEXTS)
        expected = alone.predict(TEXTS)
        assert [p.label for p in routed] == [p.label for p in expected]
        assert [p.scores for p in routed] == [pytest.approx(p.scores, abs=1e-6) for p in expected]
    shared_a, shared_b = _base_tensors(multi["a"]), _base_tensors(multi["b"])
    for name in shared_a:
        assert shared_a[name].data_ptr() == shared_b[name].data_ptr(), name
    # The heads stay each task's own.
    head_a = multi["a"].model.get_base_model().classifier.modules_to_save["default"].weight
    head_b = multi["b"].model.get_base_model().classifier.modules_to_save["default"].weight
    assert head_a.shape == (3, 32) and head_b.shape == (2, 32)


def test_multi_predictor_mixes_methods_on_one_base(runs: Any) -> None:
    names = ["ia3", "lora_b", "p_tuning"]
    multi = MultiPredictor.from_dirs({name: runs(name)["result"].run_dir for name in names})
    for name in names:
        alone = Predictor.from_dir(runs(name)["result"].run_dir)
        np.testing.assert_allclose(multi[name].predict_logits(TEXTS), alone.predict_logits(TEXTS), rtol=0, atol=1e-6)
    words = [multi[n].model.get_base_model().bert.embeddings.word_embeddings.weight.data_ptr() for n in names]
    assert len(set(words)) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_multi_predictor_shares_the_base_on_the_gpu(runs: Any) -> None:
    dirs = {"a": runs("lora")["result"].run_dir, "b": runs("lora_b")["result"].run_dir}
    multi = MultiPredictor.from_dirs(dirs, device="cuda")
    shared_a, shared_b = _base_tensors(multi["a"]), _base_tensors(multi["b"])
    for name in shared_a:
        assert shared_a[name].is_cuda
        assert shared_a[name].data_ptr() == shared_b[name].data_ptr(), name
    for task, run_dir in dirs.items():
        alone = Predictor.from_dir(run_dir, device="cuda")
        np.testing.assert_allclose(multi[task].predict_logits(TEXTS), alone.predict_logits(TEXTS), rtol=0, atol=1e-5)


def test_multi_predictor_unknown_task_lists_the_tasks(runs: Any) -> None:
    multi = MultiPredictor.from_dirs({"a": runs("lora")["result"].run_dir, "b": runs("lora_b")["result"].run_dir})
    with pytest.raises(AdaptextError, match=r"unknown task 'c'; the tasks are a, b"):
        multi.predict("c", TEXTS)
    with pytest.raises(AdaptextError, match="unknown task"):
        multi["c"]


def test_multi_predictor_refuses_a_full_model(runs: Any) -> None:
    dirs = {"a": runs("lora")["result"].run_dir, "full": runs("none")["result"].run_dir}
    with pytest.raises(AdaptextError, match=r"task 'full'.*full model"):
        MultiPredictor.from_dirs(dirs)


def test_multi_predictor_refuses_adapters_of_different_bases(runs: Any, tmp_path: Path) -> None:
    other = tmp_path / "other-base-adapter"
    shutil.copytree(runs("lora_b")["result"].model_dir, other)
    metadata = json.loads((other / "adaptext.json").read_text(encoding="utf-8"))
    metadata["base_model"] = metadata["base_model_path"] = "some/other-model"
    (other / "adaptext.json").write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(AdaptextError, match=r"one base model only.*'b'.*some/other-model"):
        MultiPredictor.from_dirs({"a": runs("lora")["result"].run_dir, "b": other})


def test_multi_predictor_needs_a_task() -> None:
    with pytest.raises(AdaptextError, match="at least one task"):
        MultiPredictor.from_dirs({})


# 5. resume ------------------------------------------------------------------------------------


def _interrupted_and_resumed(
    make_config: Callable[..., Config], method: str, output_dir: Path, *, epochs: int, stop: int
) -> TrainResult:
    """A run stopped at step `stop` (just after its checkpoint at step `stop - 1`, mid-epoch), then resumed."""
    checkpoint = stop - 1
    assert stop % 2 == 1 and stop % STEPS_PER_EPOCH != 0 and checkpoint % STEPS_PER_EPOCH != 0
    config = make_config(method, output_dir, f"train.epochs={epochs}", "train.checkpoint_steps=2")
    with pytest.raises(SimulatedCrashError):
        train(config, on_step=stop_at(stop))
    state = json.loads((config.output_dir / "checkpoint" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == checkpoint
    steps: list[int] = []
    resumed = train(config, resume=True, on_step=steps.append)
    assert steps == list(range(stop, epochs * STEPS_PER_EPOCH + 1))  # continues after the checkpoint
    assert resumed.global_step == epochs * STEPS_PER_EPOCH
    assert (resumed.model_dir / "adapter_config.json").is_file()
    assert not (resumed.model_dir / "model.safetensors").exists()
    log = read_log(resumed.run_dir)
    keys = [(r["step"], "loss" in r) for r in log]
    assert len(keys) == len(set(keys)), keys  # nothing logged twice
    assert [r["step"] for r in log if "eval_accuracy" in r] == [STEPS_PER_EPOCH * (i + 1) for i in range(epochs)]
    return resumed


@pytest.mark.parametrize("method", ["lora", "p_tuning"])
def test_adapter_resume_is_exact(make_config: Callable[..., Config], method: str, tmp_path: Path) -> None:
    epochs, stop = 3, 5
    straight = train(make_config(method, tmp_path / "straight", f"train.epochs={epochs}", "train.checkpoint_steps=2"))
    resumed = _interrupted_and_resumed(make_config, method, tmp_path / "resumed", epochs=epochs, stop=stop)
    assert resumed.global_step == straight.global_step
    np.testing.assert_allclose(
        Predictor.from_dir(resumed.run_dir).predict_logits(TEXTS),
        Predictor.from_dir(straight.run_dir).predict_logits(TEXTS),
        rtol=0,
        atol=1e-5,
    )
    # The final weights (in the checkpoint), not only the best model, are those of the uninterrupted run.
    final = load_file(resumed.run_dir / "checkpoint" / "model.safetensors")
    reference_final = load_file(straight.run_dir / "checkpoint" / "model.safetensors")
    assert final.keys() == reference_final.keys()
    for name, tensor in final.items():
        torch.testing.assert_close(tensor, reference_final[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    after = [r for r in read_log(resumed.run_dir) if r["step"] >= stop]
    reference = [r for r in read_log(straight.run_dir) if r["step"] >= stop]
    assert [r["step"] for r in after] == [r["step"] for r in reference]
    for mine, theirs in zip(after, reference, strict=True):
        for key in ("loss", "eval_loss", "eval_accuracy"):
            assert mine.get(key) == pytest.approx(theirs.get(key), abs=1e-6), (key, mine["step"])


def test_adalora_resume_runs_to_the_end(make_config: Callable[..., Config], tmp_path: Path) -> None:
    # Not exact by design (docs/adapters.md): AdaLoRA's rank-importance statistics restart from the checkpoint.
    # Long enough for the rank budget to prune after the resume (steps 11 to 17 of 18).
    resumed = _interrupted_and_resumed(make_config, "adalora", tmp_path / "resumed", epochs=6, stop=11)
    adapter_config = json.loads((resumed.model_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter_config["peft_type"] == "ADALORA"
    assert adapter_config["total_step"] == 6 * STEPS_PER_EPOCH
    predictor = Predictor.from_dir(resumed.run_dir)
    assert predictor.labels == LABELS
    assert np.isfinite(predictor.predict_logits(TEXTS)).all()


# 6. run statistics ----------------------------------------------------------------------------


def test_run_stats_of_a_lora_run(runs: Any) -> None:
    result: TrainResult = runs("lora")["result"]
    full: TrainResult = runs("none")["result"]
    stats = json.loads((result.run_dir / "run_stats.json").read_text(encoding="utf-8"))
    assert stats == result.stats
    assert stats["method"] == "lora"
    assert set(stats) >= {
        "method",
        "trainable_parameters",
        "total_parameters",
        "trainable_percent",
        "model_size_bytes",
        "peak_rss_mb",
    }
    assert 0 < stats["trainable_parameters"] < 0.3 * stats["total_parameters"]
    assert stats["trainable_percent"] == pytest.approx(
        100 * stats["trainable_parameters"] / stats["total_parameters"], abs=1e-3
    )
    # The total is the base model plus the adapter; the head (trained as a copy) is counted once.
    adapter_only = stats["trainable_parameters"] - HEAD_PARAMETERS
    assert stats["total_parameters"] == full.stats["total_parameters"] + adapter_only
    assert full.stats["method"] == "none"
    assert stats["model_size_bytes"] < full.stats["model_size_bytes"]
    assert stats["peak_rss_mb"] > 0


# 7. config errors -----------------------------------------------------------------------------


@pytest.fixture
def config_file(make_config: Callable[..., Config], tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(make_config("none", tmp_path / "run", "train.epochs=1")), encoding="utf-8")
    return path


CONFIG_ERRORS = {
    "unknown method": (["peft.method=bogus"], ["peft.method", "'bogus'", "none", "lora", "ia3", "p_tuning"]),
    "unsupported method": (["peft.method=adaption_prompt"], ["'adaption_prompt'", "lora"]),
    "unknown option": (["peft.method=lora", "peft.options.bogus=1"], ["peft.options", "lora", "bogus"]),
    "options without a method": (["peft.options.r=4"], ["peft.options", "peft.method is none"]),
    "reserved option": (["peft.method=lora", "peft.options.task_type=SEQ_CLS"], ["peft.options.task_type"]),
    "too many positions": (
        ["peft.method=prompt_tuning", "data.max_length=120"],
        ["data.max_length (120)", "num_virtual_tokens (20)", "128 positions"],
    ),
    "too many virtual tokens": (
        ["peft.method=p_tuning", "data.max_length=64", "peft.options.num_virtual_tokens=100"],
        ["data.max_length (64)", "num_virtual_tokens (100)", "128 positions"],
    ),
}
# These are found only once the model is built, after the run folder has been written.


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_peft_config_errors_exit_2_with_one_line(
    case: str, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, fragments = CONFIG_ERRORS[case]
    code, line = run_cli(capsys, "-q", "train", str(config_file), *overrides)
    assert code == EXIT_USER_ERROR
    assert line.startswith("adaptext train: error:")
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "run" / "model").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize(
    "case",
    list(CONFIG_ERRORS),
)
def test_peft_config_errors_leave_no_run_folder(
    case: str, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, _ = CONFIG_ERRORS[case]
    code, _ = run_cli(capsys, "-q", "train", str(config_file), *overrides)
    assert code == EXIT_USER_ERROR
    assert not (tmp_path / "run").exists(), sorted(p.name for p in (tmp_path / "run").iterdir())


def test_prompt_method_position_limit_counts_virtual_tokens(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    # 108 + 20 = 128 positions: just fits.
    adapters_module.peft_config(PeftSection(method="prompt_tuning"), model, total_steps=10, max_length=108)
    with pytest.raises(ConfigError, match=r"data.max_length \(109\)"):
        adapters_module.peft_config(PeftSection(method="prompt_tuning"), model, total_steps=10, max_length=109)
    section = PeftSection(method="prompt_tuning", options={"num_virtual_tokens": 8})
    adapters_module.peft_config(section, model, total_steps=10, max_length=120)


def test_prefix_tuning_position_limit(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    section = PeftSection(method="prefix_tuning")
    try:
        wrapped = adapters_module.wrap_model(section, model, total_steps=10, max_length=120)
    except ConfigError as error:
        assert "max_length" in str(error)
        return
    # Accepted: then a text of max_length tokens must be classified.
    predictor = Predictor(wrapped, load_tokenizer(str(tiny_model_dir)), max_length=120)
    assert predictor.predict_logits([" ".join(["invoice"] * 200)]).shape == (1, 3)


# 8. the head and the default targets ----------------------------------------------------------


def _lora_layers(model: Any) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def test_head_modules_of_bert_and_lora_targets(tiny_model_dir: Path) -> None:
    model = build_model(str(tiny_model_dir), LABELS, SINGLE_LABEL)
    assert set(adapters_module.head_modules(model)) == {"classifier", "pooler.dense"}
    target = adapters_module.peft_config(
        PeftSection(method="lora"), model, total_steps=10, max_length=32
    ).target_modules
    assert isinstance(target, str)  # a regular expression, which peft matches against the whole module name
    assert re.fullmatch(target, "bert.encoder.layer.1.attention.output.dense")
    assert re.fullmatch(target, "bert.encoder.layer.0.intermediate.dense")
    for head in ("bert.pooler.dense", "classifier", "bert.pooler"):
        assert not re.fullmatch(target, head), head
    wrapped = adapters_module.wrap_model(PeftSection(method="lora"), model, total_steps=10, max_length=32)
    wrapped_names = {base_name(name + ".") for name in _lora_layers(wrapped)}
    expected = {
        f"bert.encoder.layer.{i}.{layer}."
        for i in range(2)
        for layer in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    }
    assert wrapped_names == expected
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert any(name.startswith("base_model.model.bert.pooler.dense.modules_to_save.") for name in trainable)
    assert any(name.startswith("base_model.model.classifier.modules_to_save.") for name in trainable)


def test_head_modules_of_distilbert_include_pre_classifier() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=40, dim=16, n_layers=1, n_heads=2, hidden_dim=24, max_position_embeddings=32, num_labels=3
    )
    model = DistilBertForSequenceClassification(config)
    assert set(adapters_module.head_modules(model)) == {"pre_classifier", "classifier"}
    wrapped = adapters_module.wrap_model(PeftSection(method="lora"), model, total_steps=10, max_length=16)
    lora = {base_name(name + ".") for name in _lora_layers(wrapped)}
    assert lora == {
        f"distilbert.transformer.layer.0.{layer}."
        for layer in (
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "ffn.lin1",
            "ffn.lin2",
        )
    }
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    for head in ("pre_classifier", "classifier"):
        assert f"base_model.model.{head}.modules_to_save.default.weight" in trainable
    # IA3 on DistilBERT uses adaptext's own target table and keeps the same head.
    ia3 = adapters_module.wrap_model(
        PeftSection(method="ia3"), DistilBertForSequenceClassification(config), total_steps=10, max_length=16
    )
    trainable = {name for name, p in ia3.named_parameters() if p.requires_grad}
    assert "base_model.model.pre_classifier.modules_to_save.default.weight" in trainable
    assert any(".k_lin.ia3_l." in name for name in trainable)


def test_lora_targets_of_roberta_skip_the_classifier_dense() -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=40,
        num_labels=3,
    )
    model = RobertaForSequenceClassification(config)
    assert adapters_module.head_modules(model) == ["classifier"]
    target = adapters_module.peft_config(
        PeftSection(method="lora"), model, total_steps=10, max_length=16
    ).target_modules
    assert re.fullmatch(target, "roberta.encoder.layer.0.output.dense")
    assert not re.fullmatch(target, "classifier.dense")
    assert not re.fullmatch(target, "classifier.out_proj")
    wrapped = adapters_module.wrap_model(PeftSection(method="lora"), model, total_steps=10, max_length=16)
    lora = _lora_layers(wrapped)
    assert lora and not any("classifier" in name for name in lora)
    assert any(name.endswith("roberta.encoder.layer.0.attention.self.query") for name in lora)
