"""The sentiment monitor: ingest throughput into SQLite, and alert delay / false alarms on replayed streams.

    python bench/monitor.py                      # everything: throughput, detection grid, dashboard screenshot
    python bench/monitor.py --skip-throughput    # detection and screenshot only
    python bench/monitor.py --throughput-only    # throughput only (5 interleaved rounds), other results kept
    python bench/monitor.py --table-only         # the tables of bench/results/monitor.json

Models: the bundled MiniLM fine-tuned on Financial PhraseBank with the defaults (`adaptext train`, cached under
/tmp/adaptext-bench-monitor/fpb/run), and the SST-2 MiniLM run of bench/robust_training.py
(/tmp/adaptext-bench-robustness/sst2/run, trained on 18,000 SST-2 training texts).

Throughput: `--events` Financial PhraseBank test texts with times, ingested into a new SQLite database by
`adaptext.apps.monitor.ingest`, the function `adaptext monitor ingest` calls (reading, checking, hashing,
classifying in batches, storing per batch, evaluating alerts), for the PyTorch model in fp32, under bf16 autocast,
and as an int8 ONNX export (`adaptext export --quantize int8`). In the same run, the same texts are classified alone
(`Predictor.predict`), so the ratio says what the monitor costs beyond classifying on this shared machine.

Detection: every held-out text (Financial PhraseBank test, 969; SST-2 training texts the run never saw, a sample of
`--sst2-pool`) is classified once by the real model. A stream is `--events-per-window` events per hourly window,
each drawn at random from the pool: a negative text with probability p (the pool's own negative share), another
text otherwise; from window 48 on, for 6 windows, p rises by +10, +20 or +40 points. Each window's count of
texts the model labelled negative goes through `judge_series`, the rule `ingest` applies. Detected: an alert in
the 6 spiked windows; delay: the spiked window it came in (1 = the first). False alarms: alerts on clean streams of
500 windows (50,000 events at 100 per window) per seed, per 10,000 events. Every rule of GRID is scored this way;
the defaults of `MonitorConfig` are the first row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = Path("/tmp/adaptext-bench-monitor")
SST2_RUN = Path("/tmp/adaptext-bench-robustness/sst2/run")
RESULTS = ROOT / "bench" / "results" / "monitor.json"
SCREENSHOT = ROOT / "bench" / "results" / "monitor-dashboard.png"
START = 1_714_521_600  # 2024-05-01T00:00:00Z
HOUR = 3600
SPIKE_AT, SPIKE_WINDOWS, CLEAN_WINDOWS = 48, 6, 500
SHIFTS = (0.10, 0.20, 0.40)

# (name, monitor.yaml settings); the first is MonitorConfig's defaults.
GRID: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    ("zscore 2.5, rolling 24", {"rule": {"method": "zscore", "threshold": 2.5}}),
    ("zscore 3, rolling 24", {"rule": {"method": "zscore", "threshold": 3.0}}),
    ("zscore 3.5, rolling 24", {"rule": {"method": "zscore", "threshold": 3.5}}),
    ("zscore 4.5, rolling 24", {"rule": {"method": "zscore", "threshold": 4.5}}),
    ("zscore 3, ewma 0.1", {"rule": {"method": "zscore", "threshold": 3.0}, "baseline": {"method": "ewma"}}),
    ("cusum k=0.5 h=3, rolling 24", {"rule": {"method": "cusum", "k": 0.5, "h": 3.0}}),
    ("cusum k=0.5 h=3.5, rolling 24", {"rule": {"method": "cusum", "k": 0.5, "h": 3.5}}),
    ("cusum k=0.5 h=4, rolling 24", {"rule": {"method": "cusum", "k": 0.5, "h": 4.0}}),
    ("cusum k=1 h=2.5, rolling 24", {"rule": {"method": "cusum", "k": 1.0, "h": 2.5}}),
    ("cusum k=1 h=3, rolling 24", {"rule": {"method": "cusum", "k": 1.0, "h": 3.0}}),
    ("cusum k=1 h=4, rolling 24", {"rule": {"method": "cusum", "k": 1.0, "h": 4.0}}),
    ("cusum k=1 h=3, ewma 0.1", {"rule": {"method": "cusum", "k": 1.0, "h": 3.0}, "baseline": {"method": "ewma"}}),
]


def adaptext(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "adaptext", "-q", *args], check=True)


def fpb_run() -> Path:
    """The bundled MiniLM fine-tuned on Financial PhraseBank train with every default (trained once, cached)."""
    folder = CACHE / "fpb"
    run = folder / "run"
    if (run / "model").is_dir():
        return run
    folder.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(DATASETS / "financial_phrasebank" / "train.csv", keep_default_na=False)
    train[["text", "label"]].to_csv(folder / "train.csv", index=False)
    config = folder / "run.yaml"
    config.write_text(f"output_dir: {run}\nseed: 0\nmodel:\n  name: minilm\ndata:\n  train: {folder / 'train.csv'}\n")
    adaptext("train", str(config))
    return run


def pools(sst2_size: int) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Per data set: its run and its held-out texts (never trained or validated on)."""
    fpb = pd.read_csv(DATASETS / "financial_phrasebank" / "test.csv", keep_default_na=False)[["text", "label"]]
    seen: set[str] = set()
    for name in ("train", "validation", "test"):
        path = SST2_RUN.parent / "data" / f"{name}.csv"
        if path.is_file():
            seen |= set(pd.read_csv(path, keep_default_na=False)["text"])
    sst2 = pd.read_csv(DATASETS / "sst2" / "train.csv", keep_default_na=False)
    sst2 = sst2[~sst2["text"].isin(seen)].sample(n=sst2_size, random_state=0)[["text", "label"]]
    return {"financial_phrasebank": (fpb_run(), fpb), "sst2": (SST2_RUN, sst2.reset_index(drop=True))}


def events_frame(texts: list[str], per_window: int) -> pd.DataFrame:
    times = [START + (i // per_window) * HOUR + (i % per_window) * (HOUR // per_window) for i in range(len(texts))]
    return pd.DataFrame({"text": texts, "time": [pd.Timestamp(t, unit="s", tz="UTC").isoformat() for t in times]})


def throughput(run: Path, pool: pd.DataFrame, n: int, repeats: int) -> dict[str, Any]:
    """Ingest and classify-only rates of each model variant, measured `repeats` times in interleaved rounds (every
    variant once per round, so a change of load on the shared machine touches all of them); the median is reported,
    with every round's rate and the one-minute load average before it."""
    import torch

    from adaptext.apps.monitor import MonitorConfig, ingest, open_store
    from adaptext.inference.predictor import Predictor

    folder = CACHE / "throughput"
    folder.mkdir(parents=True, exist_ok=True)
    texts = pool["text"].sample(n=n, replace=n > len(pool), random_state=1).tolist()
    # distinct events: the same sentence at another time is another event
    path = folder / "events.csv"
    events_frame(texts, 100).to_csv(path, index=False)
    onnx = CACHE / f"{run.parent.name}-int8"
    if not (onnx / "model.onnx").is_file():
        adaptext("export", str(run), "--quantize", "int8", "--output", str(onnx), "--overwrite")
    default = MonitorConfig(label="negative")
    # (model folder, autocast dtype, ingest batch size): the default batch, and bf16 at the old default of 256
    variants = {
        "fp32": (run, None, default.batch_size),
        "bf16": (run, torch.bfloat16, default.batch_size),
        "bf16, batch 256": (run, torch.bfloat16, 256),
        "int8 onnx": (onnx, None, default.batch_size),
    }
    predictors = {}
    for name, (folder_of_model, precision, _) in variants.items():
        predictors[name] = Predictor.from_dir(folder_of_model)
        predictors[name].autocast_dtype = precision
        predictors[name].predict(texts[:64])  # warm-up
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_no in range(repeats):
        for name, predictor in predictors.items():
            load = os.getloadavg()[0]
            started = time.perf_counter()
            predictor.predict(texts)
            classify = n / (time.perf_counter() - started)
            database = folder / f"{name.replace(' ', '-').replace(',', '')}.db"
            for stale in folder.glob(f"{database.name}*"):
                stale.unlink()
            store = open_store(f"sqlite:///{database}")
            config = default.model_copy(update={"batch_size": variants[name][2]})
            result = ingest(predictor, store, path, config, progress=False)
            rounds[name].append({"ingest": result.rate, "classify_only": classify, "load_1min": load})
            print(json.dumps({"round": round_no, "model": name, **rounds[name][-1]}), flush=True)
    rows = []
    for name, measured in rounds.items():
        ingest_rates = [m["ingest"] for m in measured]
        classify_rates = [m["classify_only"] for m in measured]
        loads = [m["load_1min"] for m in measured]
        rows.append(
            {
                "model": name,
                "events": n,
                "batch_size": variants[name][2],
                "rounds": repeats,
                "ingest_events_per_s_median": round(float(np.median(ingest_rates)), 1),
                "ingest_min": round(min(ingest_rates), 1),
                "ingest_max": round(max(ingest_rates), 1),
                "classify_only_events_per_s_median": round(float(np.median(classify_rates)), 1),
                "ratio_of_medians": round(float(np.median(ingest_rates) / np.median(classify_rates)), 3),
                "load_1min_range": f"{min(loads):.2f}-{max(loads):.2f}",
                "torch_threads": torch.get_num_threads(),
            }
        )
    return {"rows": rows, "rounds": rounds}


def classify_pool(run: Path, pool: pd.DataFrame, name: str) -> np.ndarray:
    """Whether the model labels each pool text negative (cached beside the run's other bench files)."""
    from adaptext.inference.predictor import Predictor

    cache = CACHE / f"{name}-{len(pool)}-predicted.json"
    if cache.is_file() and json.loads(cache.read_text())["texts"] == pool["text"].tolist():
        return np.array(json.loads(cache.read_text())["negative"])
    predictor = Predictor.from_dir(run)
    negative = [p.label == "negative" for p in predictor.predict(pool["text"].tolist(), progress=True)]
    cache.write_text(json.dumps({"texts": pool["text"].tolist(), "negative": negative}))
    return np.array(negative)


def windows_of(
    predicted: np.ndarray, truth: np.ndarray, shares: list[float], per_window: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    negatives, others = np.flatnonzero(truth), np.flatnonzero(~truth)
    out = []
    for w, share in enumerate(shares):
        is_negative = rng.random(per_window) < share
        drawn = np.where(is_negative, rng.choice(negatives, per_window), rng.choice(others, per_window))
        out.append((START + w * HOUR, per_window, int(predicted[drawn].sum())))
    return out


def detection(predicted: np.ndarray, truth: np.ndarray, per_window: int, seeds: int) -> list[dict[str, Any]]:
    from adaptext.apps.monitor import MonitorConfig, judge_series

    base = float(truth.mean())
    rows = []
    for name, settings in GRID:
        config = MonitorConfig.model_validate({"label": "negative", **settings})
        row: dict[str, Any] = {"rule": name}
        false_alarms, clean_events = 0, 0
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            points = judge_series(windows_of(predicted, truth, [base] * CLEAN_WINDOWS, per_window, rng), config)
            false_alarms += sum(p.alert for p in points)
            clean_events += CLEAN_WINDOWS * per_window
        row["false_alarms_per_10k"] = round(10_000 * false_alarms / clean_events, 3)
        for shift in SHIFTS:
            delays = []
            for seed in range(seeds):
                rng = np.random.default_rng(1000 + seed)
                shares = [base] * SPIKE_AT + [min(1.0, base + shift)] * SPIKE_WINDOWS
                points = judge_series(windows_of(predicted, truth, shares, per_window, rng), config)
                hit = [i - SPIKE_AT + 1 for i, p in enumerate(points) if p.alert and i >= SPIKE_AT]
                delays.append(hit[0] if hit else None)
            found = [d for d in delays if d is not None]
            key = f"+{round(shift * 100)}"
            row[f"{key}_detected"] = f"{len(found)}/{seeds}"
            row[f"{key}_mean_delay"] = round(float(np.mean(found)), 2) if found else None
            row[f"{key}_max_delay"] = max(found) if found else None
        rows.append(row)
    return rows


def screenshot(run: Path, pool: pd.DataFrame) -> dict[str, Any]:
    """A Financial PhraseBank stream with a +20-point spike at window 48, ingested, served and photographed."""
    import socket
    import threading

    from playwright.sync_api import sync_playwright

    from adaptext.apps.monitor import MonitorConfig, ingest, open_store
    from adaptext.apps.monitor.drift import training_shares
    from adaptext.apps.monitor.server import Monitor, create_monitor_app
    from adaptext.deploy.serve import ServeOptions, build_server
    from adaptext.inference.predictor import Predictor

    rng = np.random.default_rng(7)
    truth = (pool["label"] == "negative").to_numpy()
    base, texts, sources = float(truth.mean()), [], []
    for w in range(SPIKE_AT + 4):
        share = base + (0.2 if w >= SPIKE_AT else 0.0)
        for _ in range(100):
            negative = rng.random() < share
            texts.append(str(pool["text"].iloc[int(rng.choice(np.flatnonzero(truth == negative)))]))
            sources.append(["newswire", "press releases"][int(rng.random() < 0.4)])
    frame = events_frame(texts, 100)
    frame["source"] = sources
    path = CACHE / "spike.csv"
    frame.to_csv(path, index=False)
    # the same stream each run: a second run finds its events stored and classifies nothing again
    database = CACHE / f"spike-{run.parent.name}.db"
    predictor = Predictor.from_dir(run)
    store = open_store(f"sqlite:///{database}")
    config = MonitorConfig(label="negative")
    result = ingest(predictor, store, path, config, progress=False)
    app = create_monitor_app(Monitor(predictor, store, config, training_shares(run, predictor.labels)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = build_server(app, ServeOptions())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/?")
            page.wait_for_selector("#alerts tbody tr.alert-row")
            page.select_option("#window", frame["time"].iloc[SPIKE_AT * 100][:13] + ":00:00Z")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    return {"events": len(frame), "alerts": result.evaluation.new_alerts}


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if row[k] is None else str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def print_tables(results: dict[str, Any]) -> None:
    if results.get("throughput"):
        print("\nIngest throughput (Financial PhraseBank texts into SQLite, classification included)\n")
        block = results["throughput"]
        print(markdown(block["rows"] if isinstance(block, dict) else block))
    for dataset, block in results.get("detection", {}).items():
        for per_window, rows in block["by_events_per_window"].items():
            print(
                f"\nDetection, {dataset}: base negative share {block['base_share']:.3f}, {per_window} events per "
                f"window, {block['seeds']} seeds\n"
            )
            print(markdown(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="events ingested per throughput variant")
    parser.add_argument("--events-per-window", default="100,300")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sst2-pool", type=int, default=5000)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--throughput-only", action="store_true", help="measure throughput, keep the other results")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved throughput rounds (median reported)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.table_only:
        print_tables(json.loads(RESULTS.read_text()))
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.throughput_only:
        fpb = pd.read_csv(DATASETS / "financial_phrasebank" / "test.csv", keep_default_na=False)
        results["throughput"] = throughput(fpb_run(), fpb, args.events, args.repeats)
        results["throughput_command"] = " ".join(["python", "bench/monitor.py", *sys.argv[1:]])
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print_tables(results)
        return
    data = pools(args.sst2_pool)
    if not args.skip_throughput:
        fpb_run_dir, fpb = data["financial_phrasebank"]
        results["throughput"] = throughput(fpb_run_dir, fpb, args.events, args.repeats)
    results["detection"] = {}
    for dataset, (run, pool) in data.items():
        truth = (pool["label"] == "negative").to_numpy()
        predicted = classify_pool(run, pool, dataset)
        block: dict[str, Any] = {
            "pool": len(pool),
            "base_share": float(truth.mean()),
            "predicted_negative_share": float(predicted.mean()),
            "negative_recall": float(predicted[truth].mean()),
            "negative_rate_on_others": float(predicted[~truth].mean()),
            "seeds": args.seeds,
            "by_events_per_window": {},
        }
        for per_window in (int(v) for v in args.events_per_window.split(",")):
            block["by_events_per_window"][str(per_window)] = detection(predicted, truth, per_window, args.seeds)
        results["detection"][dataset] = block
    results["screenshot"] = screenshot(*data["financial_phrasebank"])
    results["command"] = " ".join(["python", "bench/monitor.py", *sys.argv[1:]])
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)


if __name__ == "__main__":
    main()
