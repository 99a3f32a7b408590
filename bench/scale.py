"""Scaling targets side by side: data-parallel training, Ray prediction, flat memory, pruned tuning, MLflow cost.

Every contender is an `adaptext` command (or `torchrun` of one) in its own process, writing into a work dir
(`--work-dir`, kept when given; default a temporary folder, deleted at the end). Progress lines go to stderr,
markdown tables to stdout, everything raw to `--json`.

    python bench/scale.py --json bench/results/scale.json                 # every section, full sizes (hours on 2 cores)
    python bench/scale.py --only train,predict --work-dir /tmp/scale      # some sections; the work dir is kept
    python bench/scale.py --quick                                         # every size shrunk: a smoke test

Sections (`--only train,predict,memory,tune,tracking`):

  train     `adaptext train` of the bundled model (minilm) on an SST-2 training subset (`--train-size`, default
            2,000; 1 epoch, batch 32, max_length 64, seed 0, precision `auto`), scored on all of SST-2 dev, once
            with 1 process (OMP_NUM_THREADS=2) and once with 2 processes through
            `python -m torch.distributed.run --nproc-per-node=2 -m adaptext train ...` (OMP_NUM_THREADS=1 each),
            same seed and global batch. Reports wall time, training samples/s (train_log.jsonl, and examples /
            train_seconds of run_stats.json), dev accuracy (metrics.json), peak RSS (run_stats.json: the main
            process; and the sampled total of the process tree), whether the run folder is complete (model/,
            metrics.json, report.html), and the 2-process / 1-process throughput ratio.
  predict   `adaptext predict MODEL --input N.csv --output OUT.csv` (`--predict-rows`, default 100,000 rows of
            SST-2 dev + train texts, repeated) with the 1-process model of `train` (or a short run trained here
            when `train` is skipped): the local engine, `--engine ray --num-workers 1` and `--num-workers 2`.
            Reports rows/s of the whole command, the Ray start-up (until adaptext logs "predicting ... on N Ray
            workers") and rows/s after it, peak RSS of the driver (getrusage(RUSAGE_CHILDREN) in a fresh wrapper
            process: the largest single process of the tree, Ray's included once reaped) and the sampled total
            RSS of the process tree (psutil, every 0.5 s; Ray's shared object store is counted in each process
            that maps it), CPU seconds, rows/s per allotted core and per CPU second, and checks that every
            contender's labels equal the local engine's (max score difference).
  memory    a tiny random BERT (hidden 32, 2 layers) saved as an adaptext model by a 1-step `adaptext train`,
            then `adaptext predict` CSV -> CSV on `--memory-rows` (default 100,000 and 1,000,000) short texts.
            Target: peak RSS flat in the file size.
  tune      `adaptext tune` on SST-2 (`--tune-train-size`, default 4,000 examples; dev as validation;
            max_length 64; metric accuracy), `--trials` (default 20) with each of `--pruners` (default
            `median`; `successive_halving`, `hyperband` too) and as many with `tune.pruner=none`, same seed and
            space: the default space with `train.epochs` limited to 1..3 (`--tune-max-epochs`) to fit a small
            machine. Reports best dev accuracy, examples trained (each trial's optimizer steps times its batch
            size: the training compute; batch sizes differ between trials), validation passes (each scores all
            of dev), optimizer steps (tune.json), wall time and CPU seconds of the whole process tree (training,
            evaluation, start-up: all the compute), and for each pruner pruned / unpruned examples trained and CPU
            seconds, and the difference of the bests. A study is resumable: with `--work-dir`
            and `--tune-resume`, the same command continues the studies already in it (up to `--trials`; the
            wall time is then this invocation's only).
  tracking  the same short fine-tune (`--tracking-train-size`, default 1,000 examples, 1 epoch) with
            `tracking.backend=none`, `tensorboard` and `mlflow` (MLFLOW_TRACKING_URI a SQLite store in the work
            dir, `tracking.log_model=true`), the order alternating over `--repeats` (default 3). Reports the
            median train_seconds (run_stats.json) and wall time per backend, and each one's overhead against
            `none`.

`--quick` shrinks every size (train 200 examples, dev 200, predict 2,000 rows, memory 20,000 vs 100,000 rows,
tune 4 trials each on 200 examples with 1..2 epochs: the median pruner starts pruning from trial 4, tracking 1
repeat on 100 examples) so each section runs in a minute or two on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECTIONS = ["train", "predict", "memory", "tune", "tracking"]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
WRAP = "_wrap"  # argv[1] of the wrapper process that runs one command and reports its children's rusage
START = time.perf_counter()


def progress(section: str, message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {section}: {message}", file=sys.stderr, flush=True)


# --- running one contender ------------------------------------------------------------------------------------


def wrap(out_file: str, command: list[str]) -> int:
    """Run `command`, then write the peak RSS and CPU time of its reaped process tree to `out_file`."""
    code = subprocess.run(command, check=False).returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"max_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}
    Path(out_file).write_text(json.dumps(record))
    return code


def run_command(
    command: list[str], log: Path, env: dict[str, str] | None = None, mark: str | None = None
) -> dict[str, Any]:
    """Run `command` in a fresh wrapper process; return its wall time, peak RSS (driver and sampled tree total),
    CPU seconds and, with `mark`, the seconds until a stderr/stdout line containing `mark` appeared."""
    import psutil

    usage_file = log.with_suffix(".rusage.json")
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | (env or {})
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, WRAP, str(usage_file), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    marked: list[float] = []
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if mark and not marked and mark in line:
                marked.append(time.perf_counter() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak_tree = 0.0
    cpu: dict[int, float] = {}
    wrapper = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = wrapper.children(recursive=True)  # the wrapper itself is left out
            total = 0
            for child in tree:
                with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
                    total += child.memory_info().rss
                    times = child.cpu_times()
                    cpu[child.pid] = times.user + times.system  # Ray's workers are never reaped by the wrapper
            peak_tree = max(peak_tree, total / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.5)
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    log.write_text("".join(lines))
    if process.returncode != 0:
        tail = "".join(lines[-40:])
        sys.exit(f"failed ({process.returncode}): {' '.join(command)}\nlog: {log}\n{tail}")
    usage = json.loads(usage_file.read_text())
    return {
        "wall_s": wall,
        "driver_peak_rss_mb": usage["max_rss_mb"],
        "tree_peak_rss_mb": peak_tree,
        "cpu_s": usage["cpu_s"],
        "tree_cpu_s": sum(cpu.values()),
        "mark_s": marked[0] if marked else None,
        "command": " ".join(command),
    }


def adaptext(*args: str) -> list[str]:
    return [sys.executable, "-m", "adaptext", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sst2(
    args: argparse.Namespace, folder: Path, train_size: int, dev_size: int | None = None, source: str | None = None
) -> dict[str, str]:
    """A training subset (seeded) and the dev set (all of it, or its first `dev_size` rows) as CSV files.

    `source` (default `--data-dir`, SST-2) holds `train.csv` and `dev.csv` (or `test.csv` where it has no dev split).
    """
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    root = Path(source or args.data_dir)
    train = pd.read_csv(root / "train.csv", keep_default_na=False)
    dev = pd.read_csv(next(p for p in (root / "dev.csv", root / "test.csv") if p.is_file()), keep_default_na=False)
    train = train.sample(n=min(train_size, len(train)), random_state=args.seed)
    if dev_size is not None:
        dev = dev.head(dev_size)
    files = {"train": str(folder / f"train_{len(train)}.csv"), "validation": str(folder / f"dev_{len(dev)}.csv")}
    train.to_csv(files["train"], index=False)
    dev.to_csv(files["validation"], index=False)
    return files


def run_config(args: argparse.Namespace, output: Path, data: dict[str, str], **train: Any) -> dict[str, Any]:
    return {
        "output_dir": str(output),
        "seed": args.seed,
        "model": {"name": args.model},
        "data": {**data, "max_length": args.max_length},
        "train": {"epochs": 1, "batch_size": 32, "metric_for_best": "accuracy"} | train,
    }


def read_run(run: Path) -> dict[str, Any]:
    """What a finished run folder says about itself."""
    stats = json.loads((run / "run_stats.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_second"] for r in log if "samples_per_second" in r]
    return {
        "train_seconds": stats.get("train_seconds"),
        "run_peak_rss_mb": stats.get("peak_rss_mb"),
        "accuracy": metrics.get("accuracy"),
        "log_samples_per_s": statistics.median(rates) if rates else None,
        "log_records": len(rates),
        "complete": all((run / name).exists() for name in ("model", "metrics.json", "report.html")),
    }


def fmt(value: Any, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


# --- sections -------------------------------------------------------------------------------------------------


def section_train(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], str]:
    folder = work / "train"
    data = sst2(args, folder / "data", args.train_size, args.dev_size)
    rows = []
    for processes in (1, 2):
        name = f"{processes}p"
        output = folder / name
        shutil.rmtree(output, ignore_errors=True)
        config = write_yaml(folder / f"{name}.yaml", run_config(args, output, data))
        command = adaptext("train", str(config))
        if processes > 1:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc-per-node={processes}",
                f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                "--rdzv-backend=c10d",
                "-m",
                "adaptext",
                "train",
                str(config),
            ]
        progress("train", f"{name} ...")
        env = {"OMP_NUM_THREADS": str(max(1, args.cores // processes))}
        result = run_command(command, folder / f"{name}.log", env) | read_run(output)
        seen = len(Path(data["train"]).read_text(encoding="utf-8").splitlines()) - 1  # SST-2 texts hold no newline
        result |= {"contender": name, "processes": processes, "examples": seen}
        result["samples_per_s"] = seen / result["train_seconds"] if result["train_seconds"] else None
        rows.append(result)
        progress("train", f"{name}: {result['wall_s']:.1f} s, accuracy {result['accuracy']:.4f}")
    one, two = rows
    ratio = two["samples_per_s"] / one["samples_per_s"] if one["samples_per_s"] and two["samples_per_s"] else None
    text = (
        f"### train: {rows[0]['examples']} SST-2 examples, 1 epoch, batch 32 (global), max_length "
        f"{args.max_length}, seed {args.seed}, dev {args.dev_size or 'all'}\n\n"
        + table(
            [
                "processes",
                "wall s",
                "train s",
                "samples/s (examples / train s)",
                "samples/s (train_log median)",
                "dev accuracy",
                "peak RSS MB (main)",
                "peak RSS MB (tree)",
                "run folder complete",
            ],
            [
                [
                    str(r["processes"]),
                    fmt(r["wall_s"]),
                    fmt(r["train_seconds"]),
                    fmt(r["samples_per_s"]),
                    fmt(r["log_samples_per_s"]),
                    fmt(r["accuracy"], ".4f"),
                    fmt(r["run_peak_rss_mb"], ".0f"),
                    fmt(r["tree_peak_rss_mb"], ".0f"),
                    "yes" if r["complete"] else "NO",
                ]
                for r in rows
            ],
        )
        + f"\n\n2-process / 1-process throughput: {fmt(ratio, '.2f')}x"
    )
    return {"rows": rows, "ratio_2p_1p": ratio, "model_dir": str(folder / "1p" / "model")}, text


def predict_model(args: argparse.Namespace, work: Path) -> Path:
    """The model of section train, or a short SST-2 run trained here."""
    trained = work / "train" / "1p" / "model"
    if trained.is_dir():
        return trained
    folder = work / "predict" / "model-run"
    if (folder / "model").is_dir():
        return folder / "model"
    data = sst2(args, work / "predict" / "data", 500, 200)
    config = write_yaml(work / "predict" / "model.yaml", run_config(args, folder, data, max_steps=20))
    progress("predict", "training a short model (section train was skipped) ...")
    run_command(adaptext("train", str(config), "--overwrite"), work / "predict" / "model.log")
    return folder / "model"


def section_predict(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], str]:
    import pandas as pd

    folder = work / "predict"
    folder.mkdir(parents=True, exist_ok=True)
    model = predict_model(args, work)
    frames = [pd.read_csv(Path(args.data_dir) / n, keep_default_na=False) for n in ("dev.csv", "train.csv")]
    texts = pd.concat(frames).text.tolist()
    source = folder / f"input_{args.predict_rows}.csv"
    repeated = (texts * (args.predict_rows // len(texts) + 1))[: args.predict_rows]
    pd.DataFrame({"text": repeated}).to_csv(source, index=False)
    contenders: dict[str, list[str]] = {
        "local": [],
        "ray, 1 worker": ["--engine", "ray", "--num-workers", "1"],
        "ray, 2 workers": ["--engine", "ray", "--num-workers", "2"],
    }
    rows = []
    outputs: dict[str, pd.DataFrame] = {}
    for index, (name, extra) in enumerate(contenders.items()):
        output = folder / f"out_{index}.csv"
        command = adaptext("predict", str(model), "--input", str(source), "--output", str(output), "--overwrite")
        progress("predict", f"{name} ...")
        result = run_command([*command, *extra], folder / f"out_{index}.log", mark="Ray workers")
        rows_per_s = args.predict_rows / result["wall_s"]
        workers = int(extra[-1]) if extra else 0
        cores = args.cores if not workers else min(args.cores, workers * max(1, args.cores // workers))
        after = result["wall_s"] - result["mark_s"] if result["mark_s"] is not None else None
        result |= {
            "contender": name,
            "rows": args.predict_rows,
            "rows_per_s": rows_per_s,
            "rows_per_s_after_start": args.predict_rows / after if after else None,
            "cores": cores,
            "rows_per_s_per_core": rows_per_s / cores,
            "rows_per_cpu_s": args.predict_rows / result["tree_cpu_s"] if result["tree_cpu_s"] else None,
        }
        outputs[name] = pd.read_csv(output, keep_default_na=False)
        rows.append(result)
        progress("predict", f"{name}: {result['wall_s']:.1f} s, {rows_per_s:.0f} rows/s")
    local = outputs["local"]
    for row in rows:
        other = outputs[row["contender"]]
        row["labels_differ"] = int((other["label"].astype(str) != local["label"].astype(str)).sum())
        row["max_score_diff"] = float((other["score"].astype(float) - local["score"].astype(float)).abs().max())
        row["ray_per_core_vs_local"] = row["rows_per_s_per_core"] / rows[0]["rows_per_s_per_core"]
    text = (
        f"### predict: {args.predict_rows} rows CSV -> CSV, model {model}, {args.cores} cores\n\n"
        + table(
            [
                "engine",
                "wall s",
                "rows/s",
                "Ray start s",
                "rows/s after start",
                "peak RSS MB (driver)",
                "peak RSS MB (tree total)",
                "CPU s (tree, sampled)",
                "cores",
                "rows/s per core",
                "per core vs local",
                "labels differ",
                "max score diff",
            ],
            [
                [
                    r["contender"],
                    fmt(r["wall_s"]),
                    fmt(r["rows_per_s"], ".0f"),
                    fmt(r["mark_s"]),
                    fmt(r["rows_per_s_after_start"], ".0f"),
                    fmt(r["driver_peak_rss_mb"], ".0f"),
                    fmt(r["tree_peak_rss_mb"], ".0f"),
                    fmt(r["tree_cpu_s"]),
                    str(r["cores"]),
                    fmt(r["rows_per_s_per_core"], ".0f"),
                    fmt(r["ray_per_core_vs_local"], ".2f"),
                    str(r["labels_differ"]),
                    fmt(r["max_score_diff"], ".2e"),
                ]
                for r in rows
            ],
        )
        + "\n\nRay start s: until adaptext logs 'predicting ... on N Ray workers' (Ray started, input scanned); "
        "the workers load their models after it. Driver: getrusage(RUSAGE_CHILDREN) of a wrapper, so the largest "
        "process it reaped (Ray's workers are not among them). Tree total RSS (psutil, every 0.5 s) counts Ray's "
        "shared object store once per process that maps it; tree CPU s misses each process's last 0.5 s."
    )
    return {"rows": rows}, text


TINY_WORDS = ["good", "bad", "fine", "awful", "film", "plot", "actor", "great", "dull", "story", "very", "not"]


def build_tiny_model(folder: Path) -> None:
    """A randomly initialised 2-layer BERT (hidden 32) with a WordPiece tokenizer, as tests/conftest.py builds."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS])}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.model_max_length = 128
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=2,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def short_texts(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(TINY_WORDS, k=rng.randint(3, 8))) for _ in range(n)]


def section_memory(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], str]:
    import pandas as pd

    folder = work / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "tiny-bert"
    if not (base / "config.json").is_file():
        subprocess.run([sys.executable, __file__, "_tiny", str(base)], check=True)
    labels = ["neg", "pos"] * 20
    pd.DataFrame({"text": short_texts(40, 1), "label": labels}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"text": short_texts(10, 2), "label": labels[:10]}).to_csv(folder / "dev.csv", index=False)
    config = {
        "output_dir": str(folder / "run"),
        "seed": args.seed,
        "model": {"name": str(base)},
        "data": {"train": str(folder / "train.csv"), "validation": str(folder / "dev.csv"), "max_length": 32},
        "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
        "tracking": {"backend": "none"},
    }
    progress("memory", "1-step train of the tiny model ...")
    run_command(adaptext("train", str(write_yaml(folder / "tiny.yaml", config)), "--overwrite"), folder / "train.log")
    rows = []
    for n in args.memory_rows:
        source = folder / f"input_{n}.csv"
        pd.DataFrame({"text": short_texts(n, n)}).to_csv(source, index=False)
        output = folder / f"out_{n}.csv"
        command = adaptext("predict", str(folder / "run"), "--input", str(source), "--output", str(output))
        progress("memory", f"{n} rows ...")
        result = run_command([*command, "--overwrite"], folder / f"predict_{n}.log")
        output.unlink()
        source.unlink()
        result |= {"contender": f"{n} rows", "rows": n, "rows_per_s": n / result["wall_s"]}
        rows.append(result)
        progress("memory", f"{n} rows: {result['wall_s']:.1f} s, peak RSS {result['driver_peak_rss_mb']:.0f} MB")
    first, last = rows[0], rows[-1]
    delta = last["driver_peak_rss_mb"] - first["driver_peak_rss_mb"]
    text = (
        "### memory: `adaptext predict` (local engine, default --chunk-size), tiny BERT, short texts, CSV -> CSV\n\n"
        + table(
            ["rows", "wall s", "rows/s", "peak RSS MB (process)", "peak RSS MB (sampled)"],
            [
                [
                    str(r["rows"]),
                    fmt(r["wall_s"]),
                    fmt(r["rows_per_s"], ".0f"),
                    fmt(r["driver_peak_rss_mb"], ".0f"),
                    fmt(r["tree_peak_rss_mb"], ".0f"),
                ]
                for r in rows
            ],
        )
        + f"\n\npeak RSS {last['rows']} rows - {first['rows']} rows: {delta:+.0f} MB "
        f"({100 * delta / first['driver_peak_rss_mb']:+.1f}%)"
    )
    return {"rows": rows, "rss_delta_mb": delta}, text


def section_tune(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], str]:
    folder = work / "tune"
    data = sst2(args, folder / "data", args.tune_train_size, args.dev_size, args.tune_data_dir)
    space = {"train.epochs": {"type": "int", "low": 1, "high": args.tune_max_epochs}}
    rows = []
    for pruner in [*args.pruners, "none"]:
        output = folder / pruner
        config = run_config(args, output, data)
        del config["train"]  # batch size and epochs are searched
        config["tune"] = {"metric": "accuracy", "pruner": pruner, "space": space}
        path = write_yaml(folder / f"{pruner}.yaml", config)
        command = adaptext("tune", str(path), "--trials", str(args.trials))
        if not args.tune_resume:
            command.append("--overwrite")
        progress("tune", f"pruner {pruner}, {args.trials} trials ...")
        result = run_command(command, folder / f"{pruner}.log")
        summary = json.loads((output / "tune.json").read_text())
        result |= {
            "contender": pruner,
            "best_value": summary["best_value"],
            "best_params": summary["best_params"],
            "steps_trained": summary["steps_trained"],
            "examples_trained": examples_trained(output / "trials.csv"),
            "evaluations": evaluations(output / "trials.csv"),
            "trials": summary["trials"],
        }
        rows.append(result)
        progress("tune", f"{pruner}: {result['wall_s']:.1f} s, best {summary['best_value']}, {summary['trials']}")
    full = rows[-1]
    against = {}
    for pruned in rows[:-1]:
        compute = pruned["examples_trained"] / full["examples_trained"] if full["examples_trained"] else None
        steps = pruned["steps_trained"] / full["steps_trained"] if full["steps_trained"] else None
        cpu = pruned["tree_cpu_s"] / full["tree_cpu_s"] if full["tree_cpu_s"] else None
        gap = (
            100 * (pruned["best_value"] - full["best_value"])
            if pruned["best_value"] is not None and full["best_value"] is not None
            else None
        )
        against[pruned["contender"]] = {
            "compute_ratio": compute,
            "steps_ratio": steps,
            "cpu_ratio": cpu,
            "best_gap_points": gap,
        }
    import pandas as pd

    train_rows = len(pd.read_csv(data["train"], keep_default_na=False))  # fewer than asked where the source is small
    text = (
        f"### tune: {args.trials} trials per pruner on {train_rows} "
        f"{Path(args.tune_data_dir or args.data_dir).name} examples, dev "
        f"{args.dev_size or 'all'}, max_length {args.max_length}, seed {args.seed}; default space with "
        f"train.epochs limited to 1..{args.tune_max_epochs} (to fit the machine)\n\n"
        + table(
            [
                "pruner",
                "best dev accuracy",
                "examples trained",
                "steps trained",
                "validation passes",
                "wall s",
                "CPU s",
                "trials",
            ],
            [
                [
                    r["contender"],
                    fmt(r["best_value"], ".4f"),
                    str(r["examples_trained"]),
                    str(r["steps_trained"]),
                    fmt(r["evaluations"], "d"),
                    fmt(r["wall_s"]),
                    fmt(r["tree_cpu_s"], ".0f"),
                    ", ".join(f"{n} {s}" for s, n in sorted(r["trials"].items())),
                ]
                for r in rows
            ],
        )
        + "".join(
            f"\n\n{name}: pruned / unpruned compute (examples trained) {fmt(v['compute_ratio'], '.2f')}, CPU seconds "
            f"{fmt(v['cpu_ratio'], '.2f')}, optimizer steps {fmt(v['steps_ratio'], '.2f')}; best (pruned - unpruned) "
            f"{fmt(v['best_gap_points'], '+.2f')} points"
            for name, v in against.items()
        )
        + "\n\nThe studies are resumable: rerun with the same --work-dir and --tune-resume to continue them."
    )
    return {"rows": rows, "against_none": against}, text


def examples_trained(trials_csv: Path) -> int:
    """Training examples over every trial of a study: each trial's optimizer steps times its batch size.

    The compute of a study whose trials differ in batch size: a step of 64 examples costs four steps of 16.
    """
    with trials_csv.open(encoding="utf-8") as handle:
        return sum(int(row["steps"] or 0) * int(row["train.batch_size"]) for row in csv.DictReader(handle))


def evaluations(trials_csv: Path) -> int | None:
    """Validation passes over every trial of a study (None for a study recorded before they were counted)."""
    with trials_csv.open(encoding="utf-8") as handle:
        counts = [row.get("evaluations") or "" for row in csv.DictReader(handle)]
    return sum(int(c) for c in counts) if all(counts) else None


def section_tracking(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], str]:
    folder = work / "tracking"
    data = sst2(args, folder / "data", args.tracking_train_size, args.dev_size)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    backends = ["none", "tensorboard", "mlflow"]
    rows = []
    for repeat in range(args.repeats):
        for backend in backends if repeat % 2 == 0 else list(reversed(backends)):
            output = folder / f"{backend}_{repeat}"
            config = run_config(args, output, data) | {"tracking": {"backend": backend, "log_model": True}}
            path = write_yaml(folder / f"{backend}_{repeat}.yaml", config)
            progress("tracking", f"{backend}, repeat {repeat + 1}/{args.repeats} ...")
            result = run_command(adaptext("train", str(path), "--overwrite"), folder / f"{backend}_{repeat}.log", env)
            result |= read_run(output) | {"contender": backend, "repeat": repeat}
            rows.append(result)
            progress("tracking", f"{backend}: train {result['train_seconds']} s, wall {result['wall_s']:.1f} s")
    median = {
        b: {k: statistics.median(r[k] for r in rows if r["contender"] == b) for k in ("train_seconds", "wall_s")}
        for b in backends
    }
    base = median["none"]["train_seconds"]
    text = (
        f"### tracking: {args.tracking_train_size} SST-2 examples, 1 epoch, {args.repeats} repeat(s), order "
        "alternating; MLflow: SQLite store in the work dir, log_model true\n\n"
        + table(
            ["backend", "median train s", "median wall s", "train s overhead vs none"],
            [
                [
                    b,
                    fmt(m["train_seconds"], ".2f"),
                    fmt(m["wall_s"]),
                    f"{100 * (m['train_seconds'] / base - 1):+.1f}%" if base else "n/a",
                ]
                for b, m in median.items()
            ],
        )
    )
    return {"rows": rows, "median": median}, text


# --- main -----------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--quick", action="store_true", help="shrink every size: a smoke test of a few minutes")
    parser.add_argument("--work-dir", help="folder for every run and file (kept); default a temporary one")
    parser.add_argument("--json", help="also write all raw results to this file")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder with SST-2 train.csv and dev.csv")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores of this machine")
    parser.add_argument("--dev-size", type=int, help="first rows of SST-2 dev to score on (default: all)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--predict-rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--tune-train-size", type=int, default=4000)
    parser.add_argument("--tune-max-epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20, help="trials per study (one with pruning, one without)")
    parser.add_argument(
        "--pruners",
        nargs="+",
        choices=["median", "percentile", "successive_halving", "hyperband"],
        default=["median"],
        help="pruned studies of the tune section, each compared with one study without pruning",
    )
    parser.add_argument(
        "--tune-data-dir",
        help="the tune section's data: a folder with train.csv and dev.csv or test.csv (default: --data-dir, SST-2)",
    )
    parser.add_argument("--tune-resume", action="store_true", help="continue the studies in --work-dir")
    parser.add_argument("--tracking-train-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the tracking section")
    args = parser.parse_args()
    if args.quick:
        args.dev_size = args.dev_size or 200
        args.train_size, args.predict_rows, args.memory_rows = 200, 2000, [20_000, 100_000]
        args.tune_train_size, args.tune_max_epochs, args.trials = 200, 2, 4
        args.tracking_train_size, args.repeats = 100, 1
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    return args


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == WRAP:
        sys.exit(wrap(sys.argv[2], sys.argv[3:]))
    if len(sys.argv) == 3 and sys.argv[1] == "_tiny":
        build_tiny_model(Path(sys.argv[2]))
        return
    args = parse_args()
    if not (Path(args.data_dir) / "train.csv").is_file():
        sys.exit(f"no SST-2 data at {args.data_dir}; pass --data-dir")
    sections: dict[str, Callable[[argparse.Namespace, Path], tuple[dict[str, Any], str]]] = {
        "train": section_train,
        "predict": section_predict,
        "memory": section_memory,
        "tune": section_tune,
        "tracking": section_tracking,
    }
    temporary = None if args.work_dir else tempfile.TemporaryDirectory(prefix="adaptext-scale-")
    work = Path(args.work_dir or temporary.name).resolve()  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    progress("scale", f"work dir {work}{' (quick)' if args.quick else ''}")
    results: dict[str, Any] = {"command": " ".join(sys.argv), "quick": args.quick, "cores": args.cores}
    texts = []
    try:
        for name in SECTIONS:
            if name in args.sections:
                started = time.perf_counter()
                results[name], text = sections[name](args, work)
                results[name]["section_s"] = time.perf_counter() - started
                texts.append(text)
                print(text + "\n", flush=True)
    finally:
        if temporary is not None:
            temporary.cleanup()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    progress("scale", "done")


if __name__ == "__main__":
    main()
