"""Data-parallel training: two CPU processes (gloo, through torchrun) against one, on the tiny model.

Without dropout the two set-ups compute the same gradients (the batch is split, not doubled), so the loss records,
the chosen step and the saved model must agree to float rounding; the run folder is written once, by the main
process, and an interrupted two-process run resumes to the same end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import make_rows, read_log

from adaptext.core.config import Config

# Runs `adaptext.train` on the config given; with a step number, stops the run there as a crash would.
SCRIPT = """
import sys
from adaptext import load_config, train
from adaptext.training.callbacks import OnStep

config, stop, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"

def crash(step):
    if step == stop:
        raise SystemExit(3)

result = train(load_config(config), resume=resume, callbacks=[OnStep(crash)] if stop else [])
print("best_step", result.best_step)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model without dropout, data whose last batch is uneven, and the runner script."""
    folder = tmp_path_factory.mktemp("distributed")
    model = folder / "model"
    model.mkdir()
    for item in tiny_model_dir.iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    config = json.loads((model / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (model / "config.json").write_text(json.dumps(config))
    files = {"model": model, "script": folder / "run.py"}
    files["script"].write_text(SCRIPT)
    import pandas as pd

    # 63 training rows in batches of 10: six full batches and one of 3, split unevenly (1 and 2 examples).
    for split, n, seed in (("train", 63, 1), ("validation", 30, 2), ("test", 30, 3)):
        files[split] = folder / f"{split}.csv"
        pd.DataFrame(make_rows(n, seed=seed)).to_csv(files[split], index=False)
    return files


def write_config(setup: dict[str, Path], output: Path, **train: object) -> Path:
    config = {
        "output_dir": str(output),
        "seed": 7,
        "model": {"name": str(setup["model"])},
        "data": {
            "train": str(setup["train"]),
            "validation": str(setup["validation"]),
            "test": str(setup["test"]),
            "max_length": 32,
        },
        "train": {"epochs": 3, "batch_size": 10, "learning_rate": 1e-3, "precision": "fp32", "eval_steps": 4} | train,
    }
    path = output.parent / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(setup: dict[str, Path], config: Path, processes: int, stop: int = 0, resume: bool = False) -> str:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(setup["script"]), str(config), str(stop), "resume" if resume else "new"]
    if processes > 1:
        command[:1] = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={processes}",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            "--rdzv-backend=c10d",
        ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    if stop:
        assert done.returncode != 0, "the run should have crashed"
    else:
        assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if "[rank" in line)[-4000:]
    return done.stdout


def test_the_batch_slices_cover_every_batch_once() -> None:
    from adaptext.data.batching import LengthGroupedBatches, ShardedBatches

    batches = LengthGroupedBatches([5 + i % 7 for i in range(61)], batch_size=10, seed=3)
    for epoch in range(2):
        batches.set_epoch(epoch)
        whole = list(batches)
        shards = [ShardedBatches(batches, rank, 2) for rank in range(2)]
        for shard in shards:
            shard.set_epoch(epoch)
        slices = [list(shard) for shard in shards]
        assert len(slices[0]) == len(slices[1]) == len(whole) == len(shards[0])
        for batch, first, second in zip(whole, *slices, strict=True):
            if len(batch) >= 2:
                assert first + second == batch
                assert abs(len(first) - len(second)) <= 1
            else:  # one example left for two processes: both take it
                assert first == second == batch


@pytest.fixture(scope="module")
def two_process_run(setup: dict[str, Path]) -> Path:
    """An uninterrupted two-process run of the tiny model."""
    run = setup["train"].parent / "two"
    launch(setup, write_config(setup, run), processes=2)
    return run


def test_two_processes_train_as_one(setup: dict[str, Path], two_process_run: Path, tmp_path: Path) -> None:
    from adaptext.inference.predictor import Predictor

    one, two = tmp_path / "one", two_process_run
    launch(setup, write_config(setup, one), processes=1)

    log_one, log_two = read_log(one), read_log(two)
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two]
    losses = [(a["loss"], b["loss"]) for a, b in zip(log_one, log_two, strict=True) if "loss" in a]
    assert losses
    np.testing.assert_allclose(*zip(*losses, strict=True), rtol=1e-4)
    evals = [
        (a["eval_accuracy"], b["eval_accuracy"]) for a, b in zip(log_one, log_two, strict=True) if "eval_accuracy" in a
    ]
    assert len(evals) >= 3 and all(a == b for a, b in evals)
    stats = [json.loads((run / "metrics.json").read_text()) for run in (one, two)]
    assert stats[0]["accuracy"] == stats[1]["accuracy"]

    texts = [row["text"] for row in make_rows(20, seed=9)]
    logits = [Predictor.from_dir(run / "model").predict_logits(texts) for run in (one, two)]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-4)
    # One run folder, written once: the same files as the one-process run, nothing per rank.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len((two / "train_log.jsonl").read_text().splitlines()) == len(log_one)
    assert [json.loads((run / "env.json").read_text())["processes"] for run in (one, two)] == [1, 2]


def test_an_interrupted_two_process_run_resumes_to_the_same_end(
    setup: dict[str, Path], two_process_run: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    config = write_config(setup, broken)
    launch(setup, config, processes=2, stop=10)
    assert (broken / "checkpoint").is_dir()
    launch(setup, config, processes=2, resume=True)

    whole = read_log(two_process_run)
    assert [r["step"] for r in read_log(broken)] == [r["step"] for r in whole]
    for a, b in zip(whole, read_log(broken), strict=True):
        for key in ("loss", "eval_accuracy"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)


def test_a_sharded_launch_is_refused_before_the_run_folder(
    tiny_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptext import train
    from adaptext.core.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = tiny_config(f"output_dir={tmp_path / 'fsdp'}")
    with pytest.raises(ConfigError, match="FSDP launches are not supported"):
        train(config)
    assert not (tmp_path / "fsdp").exists()


def test_only_the_main_process_prints_the_summary(
    tiny_config: Callable[..., Config],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from adaptext.cli import main

    base = [f"{key}={value}" for key, value in (("train.max_steps", 2), ("output_dir", tmp_path / "run"))]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json", exclude={"output_dir"})))
    monkeypatch.setenv("RANK", "1")
    assert main(["train", str(config), *base]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(config), *base, "--overwrite"]) == 0
    assert "run folder:" in capsys.readouterr().out
