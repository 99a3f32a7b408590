"""Few-shot accuracy and training time: adaptext few-shot against the `setfit` library, fine-tuning and zero-shot.

    python bench/fewshot.py                                  # 5 data sets x N 8/16/32/64 x 5 seeds x 3 methods
    python bench/fewshot.py --resume                         # continue a killed run from its JSON file
    python bench/fewshot.py --dry-run                        # build every sample, print sizes and pair counts
    python bench/fewshot.py --quick --datasets sst2          # smoke run: N=8, seed 0, 200 evaluation examples

For every data set, N examples per class (`--shots`) are drawn from its training file with seed s (`--seeds`)
by `adaptext.data.splits.sample_per_class`, exactly as `adaptext sample POOL --per-class N --seed s` draws them, into
one CSV that every method trains on:

  adaptext   `strategy: fewshot` with its defaults (`fewshot.encoder: auto`; no validation file, so it trains on
             all N examples, as a user's run does); --adaptext-set KEY=VALUE ... runs a variant instead, and the
             records keep the overrides, so a variant's results never mix with the defaults
  setfit     the `setfit` library (SetFitModel + Trainer, CosineSimilarityLoss, logistic-regression head) on the
             same `minilm` sentence-transformers folder, batch 16, 1 epoch, `num_iterations` = --setfit-iterations
  finetune   `strategy: finetune` with all defaults (validation = the sample itself, so no method ever selects a
             checkpoint on the evaluation data)
  zeroshot   `strategy: zeroshot` from the label names only (no training examples), once per data set
  frozen     `strategy: fewshot` with `fewshot.encoder: frozen`: the logistic-regression head on the untouched
             encoder's embeddings (the floor; not in the default --methods)

Data (under --data-root, default ../shared/datasets):
  sst2                   train.csv -> dev.csv (872, all of it)
  banking77              no test file here: a stratified 20% of train.csv (seed 1234) is held out for evaluation
                         and the samples are drawn from the other 80% only. Its smallest intents have fewer than
                         64 (even 32) examples there, so they get all they have; --dry-run lists them.
  financial_phrasebank   train.csv -> test.csv (all agreement levels)
  clinc150               train.csv -> dev.csv, the 150 in-scope intents only (label `oos` dropped from both)
  clinc150_domains       the same texts labelled by their intent's domain (10 classes): a task no default was chosen
                         on, between the 2-3 classes of the sentiment sets and the 77-150 of the intent sets
Evaluation sets larger than --eval-size are cut to about that many by a stratified draw (seed 1234).

SetFit's pair budget: its default `sampling_strategy="oversampling"` trains on every pair of the sample at least
once, O(n^2) in n = N x classes (CLINC150 at N=64: 9,600 texts, 46 million pairs), which is infeasible on CPU.
We use `num_iterations=20` as in the SetFit paper: 2 x 20 x n pairs (20 positive and 20 negative per text), one
epoch of batch 16. SetFit still enumerates all O(n^2) pairs before taking the first 2 x 20 x n of them (about 10 GB
of Python objects for CLINC150 at N=64), so by default we also pass `max_steps` = exactly the number of steps of
that one epoch: SetFit then stops enumerating once it has those pairs. The pairs, their order and the training are
unchanged (only the memory and the time spent enumerating shrink, in SetFit's favour); `--setfit-uncapped` turns
this off. SetFit's `TrainingArguments(max_length=...)` only reaches its differentiable head, not the contrastive
phase or the sklearn head, so we also set `model_body.max_seq_length` to --max-length: both libraries then
truncate every text to the same number of tokens.

Timing: adaptext's `train_seconds` (model load, training and head fit; not the final evaluation) against SetFit's
`SetFitModel.from_pretrained` through `trainer.train()`. Each run is its own process (its own peak RSS, a crash or
out-of-memory kill loses one run), torch threads are left at their default, and the order of the methods is
reversed on odd seeds so machine noise falls on every method alike. Every finished run is saved to --output at
once (a JSON list, one record per run); --resume skips the runs already there with the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "fewshot.json"
QUICK_OUTPUT = ROOT / "bench" / "results" / "fewshot-quick.json"
DATASETS = ["sst2", "banking77", "financial_phrasebank", "clinc150", "clinc150_domains"]
METHODS = ["adaptext", "setfit", "finetune", "frozen"]
SPLIT_SEED = 1234  # BANKING77 held-out split and evaluation-set cuts
SETFIT_BATCH = 16


# ---------------------------------------------------------------------------------------------------- data


def prepare_dataset(name: str, data_root: Path, eval_size: int, folder: Path) -> dict[str, Any]:
    """Write the sampling pool and the evaluation set of `name` as CSVs in `folder`; return their paths and sizes."""
    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples, read_table, write_table
    from adaptext.data.splits import stratified_split

    source = data_root / ("clinc150" if name == "clinc150_domains" else name)
    if not (source / "train.csv").is_file():
        sys.exit(f"no {name}/train.csv under {data_root}; pass --data-root")
    train = read_table(source / "train.csv")
    if name == "sst2":
        evaluation = read_table(source / "dev.csv")
    elif name == "banking77":
        kept, held = stratified_split(load_examples(source / "train.csv", DataConfig()), 0.2, seed=SPLIT_SEED)
        train, evaluation = train.iloc[kept], train.iloc[held]
    elif name == "financial_phrasebank":
        evaluation = read_table(source / "test.csv")
    elif name in ("clinc150", "clinc150_domains"):
        evaluation = read_table(source / "dev.csv")
        train = train[train["label"] != "oos"]
        evaluation = evaluation[evaluation["label"] != "oos"]
        if name == "clinc150_domains":  # the intent's domain as the label: 10 classes of 15 intents each
            train = train.assign(label=train["domain"])
            evaluation = evaluation.assign(label=evaluation["domain"])
    else:
        sys.exit(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    paths = {"pool": folder / f"{name}-pool.csv", "eval": folder / f"{name}-eval.csv"}
    write_table(train.reset_index(drop=True), paths["pool"])
    write_table(evaluation.reset_index(drop=True), paths["eval"])
    full_eval = len(evaluation)
    if len(evaluation) > eval_size:
        data = load_examples(paths["eval"], DataConfig())
        _, held = stratified_split(data, eval_size / len(data), seed=SPLIT_SEED)
        assert data.frame is not None
        write_table(data.frame.iloc[held].reset_index(drop=True), paths["eval"])
    pool = load_examples(paths["pool"], DataConfig())
    evaluated = load_examples(paths["eval"], DataConfig())
    labels = sorted(set(map(str, pool.labels or [])))
    missing = sorted(set(map(str, evaluated.labels or [])) - set(labels))
    if missing:
        sys.exit(f"{name}: evaluation labels {missing[:5]} never occur in the training pool")
    return {
        "pool": paths["pool"],
        "eval": paths["eval"],
        "pool_size": len(pool),
        "eval_size": len(evaluated),
        "eval_full_size": full_eval,
        "labels": labels,
    }


def write_sample(info: dict[str, Any], name: str, shots: int, seed: int, folder: Path) -> tuple[Path, int, dict]:
    """Draw `shots` per class from the pool with `seed` (as `adaptext sample` does) into a CSV."""
    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples, write_table
    from adaptext.data.splits import sample_per_class

    pool = load_examples(info["pool"], DataConfig())
    chosen, short = sample_per_class(pool, shots, seed)
    path = folder / f"{name}-n{shots}-s{seed}.csv"
    assert pool.frame is not None
    write_table(pool.frame.iloc[chosen], path)
    return path, len(chosen), short


def adaptext_steps(examples: int) -> int:
    from adaptext.core.config import FewshotSection
    from adaptext.strategies.fewshot import default_steps

    cfg = FewshotSection()
    return default_steps(examples, cfg.batch_size) if cfg.steps == "auto" else int(cfg.steps)


def setfit_budget(examples: int, iterations: int) -> tuple[int, int]:
    """(pairs, steps) of one SetFit epoch with `num_iterations`: 2 x iterations x examples pairs, batch 16."""
    pairs = 2 * iterations * examples
    return pairs, math.ceil(pairs / SETFIT_BATCH)


# ---------------------------------------------------------------------------------------------------- workers


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_adaptext(spec: dict[str, Any], strategy: str) -> dict[str, Any]:
    from adaptext.core.config import load_config
    from adaptext.strategies import train

    overrides = [
        f"strategy={strategy}",
        f"model.name={spec['model']}",
        f"output_dir={spec['run_dir']}",
        f"seed={spec['seed']}",
        f"data.max_length={spec['max_length']}",
    ]
    if strategy == "zeroshot":
        # Label names only: no training file, the evaluation file is the validation split.
        overrides += [f"zeroshot.labels={json.dumps(spec['labels'])}", f"data.validation={spec['eval']}"]
    elif strategy == "fewshot":
        # Exactly the defaults: no validation file, so the run trains on all N and fits no temperature.
        overrides += [f"data.train={spec['train']}", f"data.test={spec['eval']}", *spec["adaptext_set"]]
        if spec["method"] == "frozen":
            overrides.append("fewshot.encoder=frozen")
    else:
        overrides += [f"data.train={spec['train']}", f"data.validation={spec['train']}", f"data.test={spec['eval']}"]
    config = load_config(None, overrides)
    start = time.perf_counter()
    result = train(config, overwrite=True)
    wall = time.perf_counter() - start
    expected = "validation" if strategy == "zeroshot" else "test"
    if result.eval_split != expected:
        raise RuntimeError(f"adaptext evaluated its {result.eval_split} split, expected {expected}")
    return {
        "accuracy": result.metrics["accuracy"],
        "macro_f1": result.metrics.get("macro_f1"),
        "train_seconds": result.stats["train_seconds"],
        "wall_seconds": wall,
        "steps": result.global_step,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_setfit(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.metrics import f1_score

    from adaptext.core.config import DataConfig
    from adaptext.data.io import load_examples
    from adaptext.modeling.hub import resolve_model_name

    train_data = load_examples(spec["train"], DataConfig())
    eval_data = load_examples(spec["eval"], DataConfig())
    names = sorted(set(map(str, train_data.labels or [])))
    index = {name: i for i, name in enumerate(names)}
    train_ids = [index[str(label)] for label in train_data.labels or []]
    eval_ids = np.asarray([index[str(label)] for label in eval_data.labels or []])
    pairs, steps = setfit_budget(len(train_data), spec["setfit_iterations"])
    extra = {} if spec["setfit_uncapped"] else {"max_steps": steps}  # see the module docstring: same pairs
    start = time.perf_counter()
    model = SetFitModel.from_pretrained(resolve_model_name(spec["model"]))
    model.model_body.max_seq_length = spec["max_length"]  # TrainingArguments.max_length misses the body
    args = TrainingArguments(
        output_dir=str(spec["run_dir"]),
        batch_size=SETFIT_BATCH,
        num_epochs=1,
        num_iterations=spec["setfit_iterations"],
        seed=spec["seed"],
        max_length=spec["max_length"],
        report_to="none",
        show_progress_bar=False,
        save_strategy="no",
        logging_strategy="no",
        **extra,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": train_data.texts, "label": train_ids})
    )
    trainer.train()
    train_seconds = time.perf_counter() - start
    predicted = np.asarray(model.predict(eval_data.texts, as_numpy=True)).astype(int)
    wall = time.perf_counter() - start
    return {
        "accuracy": float((predicted == eval_ids).mean()),
        "macro_f1": float(f1_score(eval_ids, predicted, labels=list(range(len(names))), average="macro")),
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": wall,
        "steps": int(trainer.st_trainer.state.global_step),
        "setfit_pairs": pairs,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker(spec: dict[str, Any]) -> None:
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    method = spec["method"]
    if method == "setfit":
        result = run_setfit(spec)
    else:
        strategies = {"adaptext": "fewshot", "frozen": "fewshot", "finetune": "finetune", "zeroshot": "zeroshot"}
        result = run_adaptext(spec, strategies[method])
    result["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------- driver


def settings_of(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The settings a record must share with this invocation to be reused by --resume and counted in the tables."""
    settings: dict[str, Any] = {"model": args.model, "max_length": args.max_length, "eval_cap": args.eval_size}
    if method == "setfit":
        settings |= {"setfit_iterations": args.setfit_iterations, "setfit_uncapped": args.setfit_uncapped}
    if method == "adaptext" and args.adaptext_set:
        settings["adaptext_set"] = sorted(args.adaptext_set)
    return settings


def record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["dataset"], record["shots"], record["seed"], record["method"])


def matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    return all(record.get(k) == v for k, v in settings_of(args, record["method"]).items())


def save(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def launch(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one method in its own process; the result dict, or {'error': ...} if it failed."""
    command = [sys.executable, __file__, "--worker", json.dumps(spec, default=str)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-2000:]
        return {"error": f"exit status {done.returncode}: {tail.strip()}"}
    return json.loads(lines[-1][len("RESULT ") :])


def pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def tables(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ok = [r for r in records if "error" not in r and matches(r, args) and r["dataset"] in args.datasets]
    runs = [r for r in ok if r["method"] != "zeroshot" and r["shots"] in args.shots and r["seed"] in args.seeds]
    out = [
        "| dataset | N | method | accuracy % (mean ± std) | train s (mean) | seeds |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for dataset in args.datasets:
        for shots in args.shots:
            for method in args.methods:
                group = [r for r in runs if (r["dataset"], r["shots"], r["method"]) == (dataset, shots, method)]
                if group:
                    seconds = statistics.mean(r["train_seconds"] for r in group)
                    out.append(
                        f"| {dataset} | {shots} | {method} | {pct([r['accuracy'] for r in group])} "
                        f"| {seconds:.1f} | {len(group)} |"
                    )
    out += [
        "",
        "| dataset | N | adaptext % | SetFit % | adaptext − SetFit, points (paired mean ± std) "
        "| train time adaptext / SetFit | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset in args.datasets:
        for shots in args.shots:
            by_seed: dict[str, dict[int, dict[str, Any]]] = {"adaptext": {}, "setfit": {}}
            for r in runs:
                if (r["dataset"], r["shots"]) == (dataset, shots) and r["method"] in by_seed:
                    by_seed[r["method"]][r["seed"]] = r
            seeds = sorted(set(by_seed["adaptext"]) & set(by_seed["setfit"]))
            if not seeds:
                continue
            ours = [by_seed["adaptext"][s] for s in seeds]
            theirs = [by_seed["setfit"][s] for s in seeds]
            diff = [a["accuracy"] - b["accuracy"] for a, b in zip(ours, theirs, strict=True)]
            diff_text = (
                f"{100 * diff[0]:+.1f}"
                if len(diff) == 1
                else (f"{100 * statistics.mean(diff):+.1f} ± {100 * statistics.stdev(diff):.1f}")
            )
            ratio = statistics.mean(r["train_seconds"] for r in ours) / statistics.mean(
                r["train_seconds"] for r in theirs
            )
            out.append(
                f"| {dataset} | {shots} | {pct([r['accuracy'] for r in ours])} "
                f"| {pct([r['accuracy'] for r in theirs])} | {diff_text} | {ratio:.2f}x | {len(seeds)} |"
            )
    zero = {r["dataset"]: r for r in ok if r["method"] == "zeroshot"}
    if zero:
        head = " | ".join(f"N={n} few-shot % (points above zero-shot)" for n in args.shots)
        out += ["", f"| dataset | zero-shot % | {head} |", "|---|---:|" + "---:|" * len(args.shots)]
        for dataset in args.datasets:
            if dataset not in zero:
                continue
            z = zero[dataset]["accuracy"]
            cells = []
            for shots in args.shots:
                few = [
                    r["accuracy"]
                    for r in runs
                    if (r["dataset"], r["shots"], r["method"]) == (dataset, shots, "adaptext")
                ]
                cells.append(f"{pct(few)} ({100 * (statistics.mean(few) - z):+.1f})" if few else "n/a")
            out.append(f"| {dataset} | {100 * z:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding one folder per data set")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help=f"default: {' '.join(DATASETS)}")
    parser.add_argument("--shots", nargs="+", type=int, help="examples per class (default: 8 16 32 64)")
    parser.add_argument("--seeds", nargs="+", type=int, help="sampling and training seeds (default: 0 1 2 3 4)")
    parser.add_argument(
        "--methods", nargs="+", default=METHODS[:3], choices=METHODS, help=f"default: {' '.join(METHODS[:3])}"
    )
    parser.add_argument(
        "--adaptext-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for the adaptext method only (a variant against its defaults; kept in the records)",
    )
    parser.add_argument("--no-zeroshot", action="store_true", help="skip the zero-shot run of each data set")
    parser.add_argument("--eval-size", type=int, help="cap on evaluation examples per data set (default 2000)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text, for every method")
    parser.add_argument("--model", default="minilm", help="adaptext model name (a sentence-transformers model)")
    parser.add_argument("--setfit-iterations", type=int, default=20, help="SetFit num_iterations (paper: 20)")
    parser.add_argument(
        "--setfit-uncapped", action="store_true", help="let SetFit enumerate all O(n^2) pairs (see above)"
    )
    parser.add_argument("--output", help=f"JSON results (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--resume", action="store_true", help="keep --output's results and skip those runs")
    parser.add_argument("--overwrite", action="store_true", help="start --output afresh")
    parser.add_argument("--keep-files", help="write pools, evaluation sets and samples here instead of a temp dir")
    parser.add_argument("--dry-run", action="store_true", help="only build the samples and print their sizes")
    parser.add_argument("--quick", action="store_true", help="smoke run: sst2 banking77, N=8, seed 0, eval 200")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    quick = {"datasets": ["sst2", "banking77"], "shots": [8], "seeds": [0], "eval_size": 200}
    full = {"datasets": DATASETS, "shots": [8, 16, 32, 64], "seeds": [0, 1, 2, 3, 4], "eval_size": 2000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    output = Path(args.output) if args.output else (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    data_root = Path(args.data_root)

    records: list[dict[str, Any]] = []
    if output.exists() and not args.dry_run:
        if args.resume:
            records = json.loads(output.read_text(encoding="utf-8"))
        elif not args.overwrite:
            sys.exit(f"{output} exists: pass --resume to continue it, --overwrite to start over, or another --output")
    done = {record_key(r) for r in records if "error" not in r and matches(r, args)}

    with tempfile.TemporaryDirectory(prefix="adaptext-fewshot-") as tmp:
        folder = Path(args.keep_files) if args.keep_files else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        info = {name: prepare_dataset(name, data_root, args.eval_size, folder) for name in args.datasets}
        if args.dry_run:
            dry_run(info, args, folder)
            return

        plan: list[dict[str, Any]] = []
        if not args.no_zeroshot:
            plan += [{"dataset": d, "shots": None, "seed": None, "method": "zeroshot"} for d in args.datasets]
        for shots in args.shots:  # every data set at small N first: a stopped run still covers them all
            for dataset in args.datasets:
                for seed in args.seeds:
                    order = args.methods if seed % 2 == 0 else list(reversed(args.methods))
                    plan += [
                        {"dataset": dataset, "shots": shots, "seed": seed, "method": m, "position": i}
                        for i, m in enumerate(order)
                    ]
        todo = [p for p in plan if record_key(p) not in done]
        print(
            f"{len(plan)} runs planned, {len(plan) - len(todo)} already in {output}, {len(todo)} to do; "
            f"eval sets: " + ", ".join(f"{d} {info[d]['eval_size']}" for d in args.datasets),
            flush=True,
        )
        for number, item in enumerate(todo, start=1):
            dataset, shots, seed, method = item["dataset"], item["shots"], item["seed"], item["method"]
            data = info[dataset]
            record: dict[str, Any] = dict(item) | settings_of(args, method)
            spec: dict[str, Any] = {
                "method": method,
                "model": args.model,
                "max_length": args.max_length,
                "seed": seed if seed is not None else 0,
                "eval": str(data["eval"]),
                "setfit_iterations": args.setfit_iterations,
                "setfit_uncapped": args.setfit_uncapped,
                "adaptext_set": args.adaptext_set if method == "adaptext" else [],
            }
            if method == "zeroshot":
                spec["labels"] = data["labels"]
                record["train_examples"] = 0
            else:
                sample, size, short = write_sample(data, dataset, shots, seed, folder)
                spec["train"] = str(sample)
                record["train_examples"] = size
                if short:
                    record["short_labels"] = short
            record |= {"eval_examples": data["eval_size"], "num_labels": len(data["labels"])}
            with tempfile.TemporaryDirectory(prefix="run-", dir=tmp) as run_dir:
                spec["run_dir"] = str(Path(run_dir) / "run")
                started = time.time()
                result = launch(spec)
            record |= {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))} | result
            records = [r for r in records if not (record_key(r) == record_key(record) and matches(r, args))]
            records.append(record)
            save(records, output)
            label = f"[{number}/{len(todo)}] {dataset} N={shots if shots is not None else '-'} " + (
                f"seed={seed} {method}" if seed is not None else method
            )
            if "error" in result:
                print(f"{label}: FAILED ({result['error'].splitlines()[-1] if result['error'] else ''})", flush=True)
            else:
                print(
                    f"{label}: accuracy {result['accuracy']:.4f}, train {result['train_seconds']:.1f} s "
                    f"(wall {result['wall_seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB)",
                    flush=True,
                )
    failed = [r for r in records if "error" in r and matches(r, args)]
    print()
    print(
        f"few-shot benchmark: model {args.model}, max_length {args.max_length}, eval cap {args.eval_size}, "
        f"SetFit num_iterations {args.setfit_iterations}, results in {output}"
    )
    print()
    print(tables(records, args))
    if failed:
        print(f"\n{len(failed)} run(s) failed; their errors are in {output} (--resume retries them)")


def dry_run(info: dict[str, dict[str, Any]], args: argparse.Namespace, folder: Path) -> None:
    print(
        "| dataset | labels | pool | eval (of) | N | sample sizes over seeds | short labels | adaptext steps "
        "| SetFit pairs / steps |"
    )
    print("|---|---:|---:|---:|---:|---|---|---:|---:|")
    for name, data in info.items():
        for shots in args.shots:
            sizes, shorts = [], {}
            for seed in args.seeds:
                _, size, short = write_sample(data, name, shots, seed, folder)
                sizes.append(size)
                shorts |= short
            pairs, steps = setfit_budget(max(sizes), args.setfit_iterations)
            short_text = ", ".join(f"{k} {v}" for k, v in sorted(shorts.items())) or "-"
            print(
                f"| {name} | {len(data['labels'])} | {data['pool_size']} | {data['eval_size']} "
                f"({data['eval_full_size']}) | {shots} | {', '.join(map(str, sorted(set(sizes))))} | {short_text} "
                f"| {adaptext_steps(max(sizes))} | {pairs:,} / {steps:,} |"
            )


if __name__ == "__main__":
    main()
