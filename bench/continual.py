"""Continual learning benchmark: every method on class-incremental intents and domain-incremental sentiment.

    python bench/continual.py --datasets banking77 clinc150 sentiment --methods naive replay ewc lwf replay+lwf joint \
        --orders 3

Data sets (read from ../shared/datasets by path):
  banking77  7 tasks of 11 intents; no test file here: a stratified 20% of train.csv (seed 1234) is the test set
  clinc150   15 tasks of 10 in-scope intents; test.csv in-scope rows are the test set, dev.csv's the validation
  sentiment  SST-2 -> IMDB -> Financial PhraseBank (positive/negative only); 2,000 training texts of each (FPB: all
             1,573), test: SST-2 dev, 1,000 IMDB test texts, FPB test

Task order k (0, 1, 2): the intents are shuffled with seed k before being cut into tasks (order 0: sorted names);
sentiment's domains are rotated. Each (data set, method, order) is one `adaptext continual` plan run in its own
process with the same base config; results are appended to bench/results/continual.json (--resume skips the ones
already there) and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from adaptext.core.config import DataConfig
from adaptext.data.io import load_examples, read_table, write_table
from adaptext.data.splits import stratified_split

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "continual.json"
SPLIT_SEED = 1234
TASKS = {"banking77": 7, "clinc150": 15}
BASE: dict[str, Any] = {
    "model": {"name": "minilm"},
    "data": {"max_length": 64},
    "train": {"epochs": 2, "batch_size": 32, "report_errors": 0},
    "tracking": {"backend": "none"},
}


def class_tasks(name: str, data_root: Path, order: int, folder: Path) -> list[dict[str, Any]]:
    """Task files of a class-incremental split of `name`: intents shuffled by `order`, cut into equal groups."""
    source = data_root / name
    train = read_table(source / "train.csv")
    validation = None
    if name == "banking77":
        kept, held = stratified_split(load_examples(source / "train.csv", DataConfig()), 0.2, seed=SPLIT_SEED)
        train, test = train.iloc[kept], train.iloc[held]
    else:
        test, validation = read_table(source / "test.csv"), read_table(source / "dev.csv")
        train, test = train[train["label"] != "oos"], test[test["label"] != "oos"]
        validation = validation[validation["label"] != "oos"]
    intents = sorted(set(train["label"]))
    if order:
        random.Random(order).shuffle(intents)
    size = len(intents) // TASKS[name]
    tasks = []
    for i in range(TASKS[name]):
        group = set(intents[i * size : (i + 1) * size] if i < TASKS[name] - 1 else intents[i * size :])
        spec: dict[str, Any] = {"name": f"t{i + 1}"}
        for split, frame in (("train", train), ("test", test), ("validation", validation)):
            if frame is None:
                continue
            path = folder / f"{name}-o{order}-t{i + 1}-{split}.csv"
            write_table(frame[frame["label"].isin(group)][["text", "label"]].reset_index(drop=True), path)
            spec[split] = str(path)
        tasks.append(spec)
    return tasks


def sentiment_tasks(data_root: Path, order: int, folder: Path) -> list[dict[str, Any]]:
    """SST-2 -> IMDB -> Financial PhraseBank (positive/negative), rotated by `order`."""
    rng_seed = SPLIT_SEED
    domains = []
    sst = read_table(data_root / "sst2" / "train.csv").sample(2000, random_state=rng_seed)
    domains.append(("sst2", sst, read_table(data_root / "sst2" / "dev.csv")))
    imdb = read_table(data_root / "imdb" / "train.csv").sample(2000, random_state=rng_seed)
    domains.append(("imdb", imdb, read_table(data_root / "imdb" / "test.csv").sample(1000, random_state=rng_seed)))
    fpb_train = read_table(data_root / "financial_phrasebank" / "train.csv")
    fpb_test = read_table(data_root / "financial_phrasebank" / "test.csv")
    polar = ("positive", "negative")
    domains.append(("fpb", fpb_train[fpb_train["label"].isin(polar)], fpb_test[fpb_test["label"].isin(polar)]))
    domains = domains[order:] + domains[:order]
    tasks = []
    for name, train, test in domains:
        spec: dict[str, Any] = {"name": name}
        for split, frame in (("train", train), ("test", test)):
            path = folder / f"sentiment-o{order}-{name}-{split}.csv"
            write_table(frame[["text", "label"]].reset_index(drop=True), path)
            spec[split] = str(path)
        tasks.append(spec)
    return tasks


def run_one(dataset: str, method: str, order: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if dataset == "sentiment":
        tasks = sentiment_tasks(args.data_root, order, folder)
    else:
        tasks = class_tasks(dataset, args.data_root, order, folder)
    base = json.loads(json.dumps(BASE))
    base["train"]["epochs"] = args.epochs
    if args.learning_rate is not None:
        base["train"]["learning_rate"] = args.learning_rate
    if dataset == "sentiment":
        base["data"]["max_length"] = 128
    if method == "joint-final":
        return joint_final(dataset, order, tasks, base, args)
    plan = {
        "output_dir": str(args.workdir / f"{dataset}-{method}-o{order}"),
        "seed": 0,
        "base": base,
        "continual": {"method": method, "memory_per_class": args.memory} | settings(args.set),
        "tasks": tasks,
    }
    plan_path = args.workdir / f"{dataset}-{method}-o{order}.yaml"
    plan_path.write_text(yaml.safe_dump(plan), encoding="utf-8")
    started = time.perf_counter()
    command = [sys.executable, "-m", "adaptext", "-q", "continual", str(plan_path), "--overwrite"]
    subprocess.run(command, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    metrics = json.loads((Path(plan["output_dir"]) / "continual_metrics.json").read_text(encoding="utf-8"))
    info = json.loads((Path(plan["output_dir"]) / "model" / "adaptext.json").read_text(encoding="utf-8"))
    return (
        {
            "dataset": dataset,
            "method": method,
            "order": order,
            "memory_per_class": args.memory,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate or "auto",
            "continual_set": sorted(args.set),
            "wall_s": round(time.perf_counter() - started, 1),
        }
        | ({"last_router_shrinkage": info["routed"]["shrinkage"]} if info.get("routed") else {})
        | {k: metrics[k] for k in metrics if k not in ("tasks",)}
    )


def settings(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE ...` as `continual` section keys (values read as YAML)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--set takes KEY=VALUE, not {pair!r}")
        out[key.removeprefix("continual.")] = yaml.safe_load(value)
    return out


def concat_files(specs: list[dict[str, Any]], split: str, path: Path) -> Path:
    frames = [read_table(Path(spec[split])) for spec in specs if split in spec]
    write_table(pd.concat(frames).reset_index(drop=True), path)
    return path


def joint_final(
    dataset: str, order: int, tasks: list[dict[str, Any]], base: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The upper bound's last row only: one `adaptext train` on every task's training data with the plan's base
    config (a joint plan retrains on all data so far at every task, which costs the sum of all those runs)."""
    folder = args.workdir / f"{dataset}-joint-final-o{order}"
    files = {
        split: concat_files(tasks, split, args.workdir / f"{dataset}-o{order}-all-{split}.csv")
        for split in ("train", "test", "validation")
        if split in tasks[0]
    }
    config = json.loads(json.dumps(base))
    config["output_dir"] = str(folder)
    config["seed"] = 0
    config["data"] |= {split: str(path) for split, path in files.items()}
    config_path = args.workdir / f"{dataset}-joint-final-o{order}.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    started = time.perf_counter()
    command = [sys.executable, "-m", "adaptext", "-q", "train", str(config_path), "--overwrite"]
    subprocess.run(command, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    stats = json.loads((folder / "run_stats.json").read_text(encoding="utf-8"))
    wall = time.perf_counter() - started
    return {
        "dataset": dataset,
        "method": "joint-final",
        "order": order,
        "memory_per_class": args.memory,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate or "auto",
        "wall_s": round(wall, 1),
        "final_accuracy": metrics["accuracy"],
        "average_accuracy": None,
        "backward_transfer": None,
        "forgetting": None,
        "mean_seconds_per_task": wall,
        "seconds": [{"task": "all", "train_s": stats["train_seconds"], "total_s": wall}],
    }


def extend_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`adaptext extend` with BANKING77's last 11 intents (order 0) on a model fine-tuned on the other 66, per method,
    against the joint model (`joint-final`, order 0) on the same test rows."""
    from adaptext.inference.predictor import Predictor

    folder = args.workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    tasks = class_tasks("banking77", args.data_root, 0, folder)
    old, new = tasks[:-1], tasks[-1]
    base_dir = args.workdir / "extend-base"
    config = json.loads(json.dumps(BASE))
    config["train"]["epochs"] = args.epochs
    config |= {"output_dir": str(base_dir), "seed": 0}
    config["data"] |= {
        "train": str(concat_files(old, "train", args.workdir / "extend-old-train.csv")),
        "test": str(concat_files(old, "test", args.workdir / "extend-old-test.csv")),
    }
    config_path = args.workdir / "extend-base.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    if not (base_dir / "model").is_dir():
        subprocess.run([sys.executable, "-m", "adaptext", "-q", "train", str(config_path)], check=True, env=env)
    joint = args.workdir / "banking77-joint-final-o0" / "model"
    if not joint.is_dir():
        sys.exit("run --datasets banking77 --methods joint-final first: the extend benchmark compares with it")
    joint_model = Predictor.from_dir(joint)
    test = read_table(Path(new["test"]))
    joint_new = float(
        (pd.Series([p.label for p in joint_model.predict(test["text"].tolist())]) == test["label"]).mean()
    )
    old_test = read_table(Path(config["data"]["test"]))
    predicted = [p.label for p in joint_model.predict(old_test["text"].tolist())]
    joint_old = float((pd.Series(predicted) == old_test["label"]).mean())
    rows = []
    for method in args.methods:
        out = args.workdir / f"extend-{method}"
        started = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "adaptext",
            "-q",
            "extend",
            str(base_dir),
            "--data",
            new["train"],
            "--test",
            new["test"],
            "--output",
            str(out),
            "--overwrite",
            f"continual.method={method}",
            f"continual.memory_per_class={args.memory}",
        ]
        subprocess.run(command, check=True, env=env)
        groups = json.loads((out / "extend_metrics.json").read_text(encoding="utf-8"))["groups"]
        by = {(g["data"].split(" (")[0], g["labels"]): g for g in groups}
        before_old = by[("previous run's data", "old labels")]["accuracy_before"]
        after_old = by[("previous run's data", "old labels")]["accuracy_after"]
        after_new = by[("new data", "new labels")]["accuracy_after"]
        rows.append(
            {
                "method": method,
                "old_before": before_old,
                "old_after": after_old,
                "old_lost_points": round(100 * (before_old - after_old), 2),
                "new_after": after_new,
                "joint_new": joint_new,
                "joint_old": joint_old,
                "new_vs_joint": round(after_new / joint_new, 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def run_key(result: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a result: data set, method, order, memory, epochs and learning rate."""
    names = ("dataset", "method", "order", "memory_per_class", "epochs")
    extra = (result.get("learning_rate", "auto"), tuple(result.get("continual_set", [])))
    return (*(result[name] for name in names), *extra)


def table(results: list[dict[str, Any]]) -> str:
    """Mean over orders of each (data set, method): final accuracy, average accuracy, BWT, seconds per task."""
    frame = pd.DataFrame(results)
    frame["s_per_task"] = frame["mean_seconds_per_task"]
    frame["train_s_per_task"] = frame["seconds"].map(lambda s: sum(t["train_s"] for t in s) / len(s))
    frame["learning_rate"] = frame["learning_rate"].fillna("auto").astype(str)
    rows = [
        "| data set | method | settings | learning rate | memory / class | orders | final accuracy | "
        "average accuracy | backward transfer | forgetting | train s / task | s / task |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    frame["settings"] = [
        ", ".join(s) if isinstance(s, list) and s else "defaults"
        for s in frame.get("continual_set", pd.Series([None] * len(frame)))
    ]
    keys = ["dataset", "method", "settings", "learning_rate", "memory_per_class"]
    for (dataset, method, variant, rate, memory), group in frame.groupby(keys, sort=False):

        def cell(key: str, scale: float = 100.0, group: pd.DataFrame = group) -> str:
            values = group[key].dropna() * scale
            if values.empty:
                return "n/a"
            spread = f" ± {values.std(ddof=0):.1f}" if len(values) > 1 else ""
            return f"{values.mean():.1f}{spread}"

        rows.append(
            f"| {dataset} | {method} | {variant} | {rate} | {memory} | {len(group)} | {cell('final_accuracy')} | "
            f"{cell('average_accuracy')} | "
            f"{cell('backward_transfer')} | {cell('forgetting')} | {cell('train_s_per_task', 1)} | "
            f"{cell('s_per_task', 1)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["banking77", "clinc150", "sentiment"])
    parser.add_argument("--methods", nargs="+", default=["naive", "replay", "ewc", "lwf", "replay+lwf", "joint"])
    parser.add_argument("--orders", type=int, default=3, help="task orders 0..N-1")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--memory", type=int, default=2, help="continual.memory_per_class")
    parser.add_argument("--learning-rate", type=float, default=None, help="train.learning_rate (default: auto)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="continual section keys for a variant (e.g. router_shrinkage=0.01), kept in its records",
    )
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/adaptext-continual"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep results already in --results, run the rest")
    parser.add_argument("--table-only", action="store_true", help="print the table of --results and stop")
    parser.add_argument(
        "--extend", action="store_true", help="the extend benchmark (66 + 11 BANKING77 intents) for --methods"
    )
    args = parser.parse_args()
    if args.extend:
        rows = extend_benchmark(args)
        path = args.results.with_name("continual_extend.json")
        path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        print(pd.DataFrame(rows).to_markdown(index=False))
        return
    results: list[dict[str, Any]] = []
    if (args.resume or args.table_only) and args.results.is_file():
        results = json.loads(args.results.read_text(encoding="utf-8"))
    if not args.table_only:
        for dataset in args.datasets:
            for order in range(args.orders):
                for method in args.methods:
                    key = (
                        *(dataset, method, order, args.memory, args.epochs),
                        *(args.learning_rate or "auto", tuple(sorted(args.set))),
                    )
                    if any(run_key(r) == key for r in results):
                        continue
                    print(f"== {dataset} {method} order {order}", flush=True)
                    results.append(run_one(dataset, method, order, args))
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    args.results.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
                    print(table(results[-1:]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
