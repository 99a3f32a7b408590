"""Shared fixtures: a tiny random BERT saved to disk, and small learnable data sets written as files."""

from __future__ import annotations

import gc
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a download attempt must fail at once, never hang
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from adaptext.core.config import Config, load_config

# Settings under which the tiny model learns the keyword task reliably (12 of 12 seeds reach 100%);
# with batch 8 and 3 epochs it stalls at 2 of 3 classes for about half of the seeds.
LEARNABLE = ("train.epochs=6", "train.batch_size=4", "train.learning_rate=2e-3")
LABELS = ["billing", "shipping", "technical"]
KEYWORDS = {
    "billing": ["invoice", "refund", "charge", "payment", "price", "bill"],
    "shipping": ["parcel", "delivery", "courier", "package", "tracking", "arrive"],
    "technical": ["crash", "error", "login", "bug", "password", "screen"],
}
FILLER = ["my", "the", "is", "not", "please", "help", "with", "a", "today", "again", "why", "it", "order", "account"]
CHINESE_LABELS = {"正面": list("好棒喜欢满意推荐"), "负面": list("差烂讨厌失望糟糕")}
CHINESE_FILLER = list("这个酒店房间服务很非常我们的了是")


def _vocab() -> list[str]:
    words = sorted({w for ws in KEYWORDS.values() for w in ws} | set(FILLER))
    chars = sorted({c for cs in CHINESE_LABELS.values() for c in cs} | set(CHINESE_FILLER))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars, ".", ",", "?", "!"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32, intermediate 37) with a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {token: i for i, token in enumerate(_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.model_max_length = 128
    config = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        initializer_range=0.1,  # at BERT's 0.02 a model this small often never separates the third class
        num_labels=3,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_rows(n: int, seed: int = 0, labels: list[str] | None = None) -> list[dict[str, str]]:
    """`n` English rows whose label is given away by a keyword, so a tiny model can learn them."""
    rng = random.Random(seed)
    labels = labels or LABELS
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(FILLER, 4) + rng.sample(KEYWORDS[label], 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def make_pair_rows(n: int, seed: int) -> list[dict[str, str]]:
    """The keyword task with the keywords in the second text (`text`); the first (`question`) is filler only."""
    rng = random.Random(seed + 1000)
    rows = make_rows(n, seed)
    for row in rows:
        row["question"] = " ".join(rng.sample(FILLER, 3))
    return rows


def make_chinese_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    names = list(CHINESE_LABELS)
    rows = []
    for i in range(n):
        label = names[i % 2]
        chars = rng.sample(CHINESE_FILLER, 5) + rng.sample(CHINESE_LABELS[label], 2)
        rng.shuffle(chars)
        rows.append({"text": "".join(chars), "label": label})
    return rows


class SimulatedCrashError(Exception):
    """Raised from `on_step` to stop a run half-way, as a crash would."""


def stop_at(step: int) -> Callable[[int], None]:
    def on_step(global_step: int) -> None:
        if global_step == step:
            raise SimulatedCrashError(f"stopped at step {global_step}")

    return on_step


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The tiny model gains nothing from intra-op threads, and two threads thrash badly (10x slower)
    # when the two cores are shared with another process.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def libraries_out_of_the_collector() -> Iterator[None]:
    # Every full collection walks every object alive: with torch, transformers and scikit-learn loaded that is
    # about 0.3 s, and each training run collects three times (adaptext's `release_freed_memory` twice, accelerate's
    # `clear_device_cache` once). The libraries' own objects live as long as the process, so they are exempted
    # once here, as `freeze_loaded_objects` does for `predict` and `serve`; what the tests make is still collected.
    import accelerate  # noqa: F401
    import sklearn.linear_model
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401

    import adaptext.strategies  # noqa: F401

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def collectable_heap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # `predict` and `serve` exempt every object alive once their model is loaded from garbage collection (their
    # process ends with them). In this process that would keep each test's objects from the collector, and giving
    # the exemption back costs a full collection; so `gc.freeze` does nothing here, except in the tests marked
    # `freezes_heap`, which check that it is called: after those, only what is still alive is exempted again.
    if request.node.get_closest_marker("freezes_heap") is None:
        monkeypatch.setattr(gc, "freeze", lambda: None)
        yield
        return
    yield
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def write_splits(folder: Path, train: int = 120, validation: int = 30, test: int = 30) -> dict[str, Path]:
    """Keyword-task CSV files `train.csv`, `validation.csv` and (when `test` > 0) `test.csv` in `folder`."""
    files = {}
    for split, n, seed in (("train", train, 1), ("validation", validation, 2), ("test", test, 3)):
        if n:
            files[split] = folder / f"{split}.csv"
            pd.DataFrame(make_rows(n, seed=seed)).to_csv(files[split], index=False)
    return files


def train_keyword_run(folder: Path, model_dir: Path, *overrides: str, validation: int = 30) -> Path:
    """Fine-tune the tiny model `model_dir` on keyword-task splits written in `folder` (settings under which it
    learns: `LEARNABLE`, fp32, seed 7) into `folder/run`, with `overrides`; returns the run folder."""
    from adaptext.strategies.finetune import Finetune
    from adaptext.training.lifecycle import run_strategy

    files = write_splits(folder, validation=validation)
    config = load_config(
        None,
        [
            f"model.name={model_dir}",
            *(f"data.{split}={path}" for split, path in files.items()),
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            *LEARNABLE,
            "train.precision=fp32",
            "train.report_errors=0",
            "seed=7",
            *overrides,
        ],
    )
    run_strategy(Finetune(), config)
    return folder / "run"


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (list of dicts) to `tmp_path/name` as CSV/TSV/JSONL/Parquet by suffix."""

    def write(name: str, rows: list[dict[str, object]]) -> Path:
        path = tmp_path / name
        frame = pd.DataFrame(rows)
        suffix = path.suffix
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".tsv":
            frame.to_csv(path, sep="\t", index=False)
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        elif suffix == ".parquet":
            frame.to_parquet(path)
        else:
            raise ValueError(suffix)
        return path

    return write


@pytest.fixture
def data_files(write_csv: Callable[..., Path]) -> dict[str, Path]:
    """train (120 rows), validation (30) and test (30) CSV files of the keyword task."""
    return {
        "train": write_csv("train.csv", make_rows(120, seed=1)),
        "validation": write_csv("validation.csv", make_rows(30, seed=2)),
        "test": write_csv("test.csv", make_rows(30, seed=3)),
    }


@pytest.fixture
def tiny_config(tiny_model_dir: Path, data_files: dict[str, Path], tmp_path: Path) -> Callable[..., Config]:
    """A fast config on the tiny model; keyword overrides as `key.path=value` strings."""

    def make(*overrides: str) -> Config:
        base = [
            f"model.name={tiny_model_dir}",
            f"data.train={data_files['train']}",
            f"data.validation={data_files['validation']}",
            f"data.test={data_files['test']}",
            f"output_dir={tmp_path / 'run'}",
            "data.max_length=32",
            "train.epochs=2",
            "train.batch_size=8",
            "train.learning_rate=1e-3",
            "train.precision=fp32",
            "seed=7",
        ]
        return load_config(None, base + list(overrides))

    return make


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by playwright (Debian's chromium, or playwright's own); the test is skipped
    without one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    executable = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    with sync_playwright() as p:
        if executable is None and not Path(p.chromium.executable_path).is_file():
            pytest.skip("no chromium: install Debian's chromium or run `playwright install chromium`")
        launched = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@contextmanager
def served_in_thread(app: Any, options: Any) -> Iterator[tuple[str, int]]:
    """`app` served by uvicorn (`build_server` with `options`) in a thread of this process on a free local port;
    yields the base URL and the port once the server has started, and stops it after."""
    from adaptext.deploy.serve import build_server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = build_server(app, options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start"
        bound = int(sock.getsockname()[1])
        yield f"http://127.0.0.1:{bound}", bound
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def folded_temperature(predictor: Any) -> float:
    """The temperature calibration divided the saved output layer by (1 when it did not): an in-memory model's
    logits divided by it are the saved model's."""
    record = predictor.info.calibration or {}
    return float(record["temperature"]) if record.get("folded") else 1.0
