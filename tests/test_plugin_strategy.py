"""A strategy of one's own, defined outside the package (tests/plugins/centroid.py), registered and run the way
docs/architecture.md says: through `adaptext.strategies.train` and `adaptext train`, saved by the shared lifecycle
and loaded back by `Predictor` and by plain `transformers`. No file in src/ knows it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from adaptext.cli import EXIT_USER_ERROR, main
from adaptext.core.config import Config, config_to_yaml, load_config
from adaptext.core.errors import ConfigError
from adaptext.core.run import RunPaths
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from adaptext.training.callbacks import CALLBACKS, Callback
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Strategy
from conftest import LABELS, make_rows

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).resolve().parent / "plugins" / "centroid.py"
PLUGIN_MODULE = "adaptext_test_plugins.centroid"
BUILTINS = ["finetune", "fewshot", "zeroshot", "prompt"]


def load_plugin() -> ModuleType:
    """Execute tests/plugins/centroid.py as a fresh module; its class decorator registers `centroid`."""
    spec = importlib.util.spec_from_file_location(PLUGIN_MODULE, PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PLUGIN_MODULE] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def centroid() -> Iterator[type[Strategy]]:
    """The `centroid` strategy, registered for one test and removed after it."""
    assert "centroid" not in STRATEGIES
    module = load_plugin()
    yield module.Centroid
    STRATEGIES.remove("centroid")
    sys.modules.pop(PLUGIN_MODULE, None)
    assert "centroid" not in STRATEGIES


class Recorder(Callback):
    """A plug-in callback: writes down what it observes."""

    def __init__(self, paths: RunPaths | None = None) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_train_begin(self, state: TrainingState, model: Any) -> None:
        self.events.append(("train_begin", state.global_step))

    def on_save(self, model: Any, target: Path) -> None:
        self.events.append(("save", target))

    def on_train_end(self, state: TrainingState) -> None:
        self.events.append(("train_end", state.done))


@pytest.fixture
def recorder() -> Iterator[type[Recorder]]:
    CALLBACKS.add("recorder", Recorder)
    yield Recorder
    CALLBACKS.remove("recorder")


def test_the_architecture_guide_shows_this_plugin_as_it_is() -> None:
    guide = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"```python\n{PLUGIN.read_text(encoding='utf-8')}```" in guide


def test_the_package_does_not_know_the_plugin() -> None:
    sources = sorted((ROOT / "src" / "adaptext").rglob("*.py"))
    assert sources
    assert [path for path in sources if "centroid" in path.read_text(encoding="utf-8").lower()] == []


def test_plugin_trains_saves_and_loads_back(
    centroid: type[Strategy], recorder: type[Recorder], tiny_config: Callable[..., Config]
) -> None:
    assert set(STRATEGIES.names()) == {*BUILTINS, "centroid"}
    config = tiny_config("strategy=centroid")
    observer = CALLBACKS.get("recorder")()
    result = train(config, callbacks=[observer])

    run = result.run_dir
    assert isinstance(observer, Recorder)
    assert observer.events == [("train_begin", 0), ("save", run / "model"), ("train_end", True)]
    for name in ("config.yaml", "labels.json", "env.json", "run_stats.json", "metrics.json", "report.html"):
        assert (run / name).is_file(), name
    metadata = json.loads((run / "model" / "adaptext.json").read_text(encoding="utf-8"))
    assert metadata["strategy"] == "centroid" and metadata["labels"] == LABELS
    assert result.eval_split == "test" and 0.0 <= result.metrics["accuracy"] <= 1.0

    texts = [row["text"] for row in make_rows(12, seed=9)]
    predictor = Predictor.from_dir(run)
    assert predictor.labels == LABELS
    ours = np.array([[p.scores[name] for name in LABELS] for p in predictor.predict(texts)])

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(run / "model"), top_k=None, device="cpu")
    theirs = np.array([[{d["label"]: d["score"] for d in row}[name] for name in LABELS] for row in classify(texts)])
    # Predictor pads a batch, the pipeline runs each text alone: the tolerance of test_predict's padded-batch tests
    # (on an AVX2 machine padding moved a probability by 1.05e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert np.allclose(ours.sum(axis=1), 1.0)


def test_plugin_trains_through_the_cli(
    centroid: type[Strategy],
    tiny_config: Callable[..., Config],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_to_yaml(tiny_config()), encoding="utf-8")
    output = tmp_path / "cli-run"

    assert main(["train", str(config_file), "strategy=centroid", f"output_dir={output}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run folder:  {output}"
    assert out[1].startswith(f"model:       {output / 'model'}  (centroid, ")
    assert out[2].startswith("test accuracy ")
    assert out[3] == f"report:      {output / 'report.html'}"
    assert (output / "model" / "adaptext.json").is_file()
    assert Predictor.from_dir(output).labels == LABELS


def test_unknown_strategy_fails_at_config_load_naming_the_registered_ones(centroid: type[Strategy]) -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'centroids'") as error:
        load_config(None, ["strategy=centroids"])
    for name in [*BUILTINS, "centroid"]:
        assert name in str(error.value)

    STRATEGIES.remove("centroid")  # an unregistered plug-in is a typo like any other
    with pytest.raises(ConfigError, match="unknown strategy 'centroid'"):
        load_config(None, ["strategy=centroid"])


@pytest.mark.parametrize(
    ("strategy", "key"),
    [
        ("zeroshot", "train.eval_steps=5"),
        ("fewshot", "train.class_weights=auto"),
        ("centroid", "train.eval_steps=5"),
        *((name, "train.freeze_embeddings=true") for name in ("fewshot", "zeroshot", "prompt")),
        *((name, "train.attention_dropout=0.5") for name in ("fewshot", "zeroshot", "prompt")),
        *((name, "train.embedding_rows=all") for name in ("zeroshot", "prompt")),
    ],
)
def test_check_refuses_keys_the_strategy_ignores(
    centroid: type[Strategy], tiny_config: Callable[..., Config], strategy: str, key: str
) -> None:
    config = tiny_config(f"strategy={strategy}", key)
    refused = rf"strategy {strategy} does not use (\S+, )*{re.escape(key)}[;,]"
    with pytest.raises(ConfigError, match=refused):
        STRATEGIES.get(strategy)().check(config)
    with pytest.raises(ConfigError, match=refused):
        train(config)
    assert not config.output_dir.exists()  # refused before the run folder is made


def test_cli_refuses_keys_the_strategy_ignores(
    tiny_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_to_yaml(tiny_config()), encoding="utf-8")
    code = main(["-q", "train", str(config_file), "strategy=zeroshot", "train.eval_steps=5"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert err.startswith("adaptext train: error: strategy zeroshot does not use ") and err.count("\n") == 1, err
    assert "train.eval_steps=5" in err
