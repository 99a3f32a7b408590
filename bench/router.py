"""Intent router: automation against wrong answers, with the threshold chosen on validation (issue 18).

For each task, a run trained on the in-scope intents (by default the runs `bench/robustness.py` trains, with their
knn out-of-scope detector) routes the task's validation file with `adaptext route --evaluate`'s code; the lowest
`min_confidence` that keeps the validation wrong answers within `--max-wrong` is then applied to the test file.
The wrong-answer rate over all texts depends on how many texts are out of scope, so the choice is made on the
validation file's own mix and again with its rates weighted to each of `--out-of-scope-shares` (the router's
`evaluate.out_of_scope_share`), which a user sets to the share expected in real traffic; each choice is made on the
validation rates themselves and on their 95% upper bound (`evaluate.wrong_rate_confidence`). The test file is also
routed at the configured `--min-confidence` (with `adaptext route --evaluate`'s code, which draws the curve), and
the test file's own lowest threshold is reported as what choosing on test would give (an oracle, not a method).

- `clinc150`: validation = CLINC150's dev file (3,000 in-scope + 100 out-of-scope texts), test = its test file
  (4,500 + 1,000). The FAQ holds CLINC150's out-of-scope *training* texts, searched by the bundled MiniLM.
- `clinc150-oos-class`: the same, but the run is trained with CLINC150's 100 out-of-scope training texts as a class
  `oos` (validated on the dev file with its 100), which has no answer; this script trains it (about 8 minutes).
- `banking77-open-0`: the open-intent split of `bench/robustness.py` (58 of 77 intents known, seed 0). Validation
  is in scope only (10% of the known intents' training part); out-of-scope texts are the test rows of the 19 unknown
  intents. No FAQ: an out-of-scope text is contained when it is handed over.

Every intent has an answer. Wrong answers = texts answered with a wrong intent, including out-of-scope texts
answered, over all texts of the file. Writes bench/results/router.json and a curve PNG per task.

    python bench/robustness.py --tasks clinc150,banking77-open-0   # trains the runs (about 45 minutes here)
    python bench/router.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

from adaptext.apps.router.config import RouteConfig, load_route_config
from adaptext.apps.router.evaluation import RoutingReport, evaluate_routing
from adaptext.apps.router.files import route_file
from adaptext.apps.router.route import Router, Signals, load_router

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
RUNS = Path("/tmp/adaptext-bench-robustness")
RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("clinc150", "clinc150-oos-class", "banking77-open-0")
OOS = "oos"
RATES = ("in_scope_automation", "wrong_answer_rate", "out_of_scope_contained", "faq_rate", "handoff_rate")


def task_files(task: str, data: Path, runs: Path) -> tuple[Path, Path, Path | None]:
    """(validation, test, FAQ source or None) for a task."""
    if task.startswith("clinc150"):
        return data / "clinc150" / "dev.csv", data / "clinc150" / "test.csv", data / "clinc150" / "train.csv"
    folder = runs / task / "data"
    return folder / "validation.csv", folder / "test.csv", None


def write_config(task: str, run: Path, faq_source: Path | None, work: Path, args: argparse.Namespace) -> RouteConfig:
    labels = [label for label in json.loads((run / "labels.json").read_text()) if label != OOS]  # oos: no answer
    answers = pd.DataFrame({"intent": labels, "answer": [f"Answer for {label}." for label in labels]})
    answers.to_csv(work / "answers.csv", index=False)
    text = (
        f"model: {run.resolve()}\nanswers: answers.csv\nhandoff:\n  min_confidence: {args.min_confidence}\n"
        f"evaluate:\n  ood_label: {OOS}\n  max_wrong_rate: {args.max_wrong}\n"
    )
    if faq_source is not None:
        train = pd.read_csv(faq_source, keep_default_na=False)
        oos = train.loc[train["label"] == OOS, "text"].drop_duplicates()
        faq = pd.DataFrame({"question": oos, "answer": "That is outside what this assistant handles."})
        faq.to_csv(work / "faq.csv", index=False)
        text += f"faq:\n  file: faq.csv\n  min_similarity: {args.min_similarity}\n"
    (work / "route.yaml").write_text(text)
    return load_route_config(work / "route.yaml")


def rates(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"min_confidence": metrics["min_confidence"]} | {key: metrics[key] for key in RATES}


def labelled(path: Path) -> tuple[list[str], list[str]]:
    frame = pd.read_csv(path, keep_default_na=False)
    return frame["text"].tolist(), frame["label"].tolist()


def at_threshold(router: Router, threshold: float) -> Router:
    rule = router.rule.model_copy(update={"min_confidence": threshold})
    return Router(router.predictor, router.answers, rule, router.faq)


def evaluate(
    router: Router,
    texts: list[str],
    gold: list[str],
    signals: Signals,
    max_wrong: float,
    share: float | None = None,
    level: float | None = None,
) -> RoutingReport:
    return evaluate_routing(router, signals, router.decide(texts, signals), gold, OOS, max_wrong, share, level)


def train_with_oos_class(data: Path, folder: Path) -> None:
    """CLINC150 trained as `bench/robustness.py` trains it, but with its out-of-scope training texts kept as a class
    (`oos`, 100 texts; validation: the dev file with its 100), which the router leaves without an answer."""
    from robustness import train  # bench/robustness.py: the same `adaptext train` config (defaults, knn detector)

    files = {"train": folder / "data" / "train.csv", "validation": folder / "data" / "validation.csv"}
    files["train"].parent.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", "train"), ("validation", "dev")):
        pd.read_csv(data / "clinc150" / f"{split}.csv", keep_default_na=False)[["text", "label"]].to_csv(
            files[name], index=False
        )
    train(files, folder / "run")


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    run = args.runs / task / "run"
    if task == "clinc150-oos-class" and not (run / "model").is_dir():
        train_with_oos_class(args.data, args.runs / task)
    if not (run / "model").is_dir():
        raise SystemExit(f"{run}: no trained run; train it with: python bench/robustness.py --tasks {task}")
    work = args.work / task
    work.mkdir(parents=True, exist_ok=True)
    validation, test, faq_source = task_files(task, args.data, args.runs)
    config = write_config(task, run, faq_source, work, args)
    start = time.perf_counter()
    router = load_router(config)
    # the headline through `adaptext route --evaluate`'s own code: the test file at the configured threshold
    configured = route_file(config, test, work / "test-routed.csv", evaluate=True, overwrite=True, router=router)
    assert configured.report is not None and configured.curve_png is not None
    shutil.copy(configured.curve_png, RESULTS / f"router-curve-{task}.png")
    # the threshold chosen on validation (its own mix, then weighted to each out-of-scope share), applied to test
    valid_texts, valid_gold = labelled(validation)
    valid_signals = router.signals_for(valid_texts, progress=True)
    test_texts, test_gold = labelled(test)
    test_signals = router.signals_for(test_texts, progress=True)
    # the shares to weigh validation to: the fixed grid, and the test file's own (as if traffic's were known)
    shares = sorted({*args.out_of_scope_shares, round(test_gold.count(OOS) / len(test_gold), 4)})
    choices: list[dict[str, Any]] = []
    for share, level in itertools.product(
        [None, *(shares if OOS in valid_gold else [])], [None, *args.wrong_rate_confidence]
    ):
        chosen = evaluate(router, valid_texts, valid_gold, valid_signals, args.max_wrong, share, level).suggested
        row: dict[str, Any] = {
            "out_of_scope_share": share,
            "wrong_rate_confidence": level,
            "validation_at_chosen": chosen,
            "test": None,
        }
        if chosen is not None:
            tested = evaluate(
                at_threshold(router, chosen["min_confidence"]), test_texts, test_gold, test_signals, args.max_wrong
            )
            row["test"] = rates(tested.metrics)
        choices.append(row)
        print(json.dumps(row), flush=True)
    return {
        "run": str(run),
        "detector": configured.report.metrics["detector"],
        "validation": {"file": str(validation), "n": len(valid_gold), "n_out_of_scope": valid_gold.count(OOS)},
        "test": {"file": str(test), "n": len(test_gold), "n_out_of_scope": test_gold.count(OOS)},
        "max_wrong_rate": args.max_wrong,
        "configured_on_test": rates(configured.report.metrics),
        "chosen_on_validation": choices,
        "oracle_lowest_on_test": configured.report.to_dict()["suggested_min_confidence"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(results: dict[str, Any]) -> str:
    head = (
        "| task | threshold | min_confidence | in-scope answered correctly | wrong answers (all texts) "
        "| OOS to FAQ / person | FAQ | handoff |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for task, record in results.get("tasks", {}).items():
        limit = f"{100 * record['max_wrong_rate']:g}%"
        rows = [("configured", record["configured_on_test"])]
        for choice in record["chosen_on_validation"]:
            share = choice["out_of_scope_share"]
            mix = "its own mix" if share is None else f"weighted to {100 * share:g}% out of scope"
            if share is not None and abs(share - record["test"]["n_out_of_scope"] / record["test"]["n"]) < 1e-4:
                mix += ", the test file's share"
            level = choice.get("wrong_rate_confidence")
            bound = "" if level is None else f" with {100 * level:g}% confidence"
            rows.append((f"chosen on validation ({mix}, ≤ {limit} wrong{bound})", choice["test"]))
        rows.append(("oracle: lowest on test", record["oracle_lowest_on_test"]))
        for name, row in rows:
            if row is None:
                lines.append(f"| {task} | {name} | none | | | | | |")
                continue
            faq = f"{100 * row['faq_rate']:.1f}%" if "faq_rate" in row else ""
            handoff = f"{100 * row['handoff_rate']:.1f}%" if "handoff_rate" in row else ""
            lines.append(
                f"| {task} | {name} | {row['min_confidence']:.4f} | {100 * row['in_scope_automation']:.1f}% | "
                f"{100 * row['wrong_answer_rate']:.2f}% | {100 * row['out_of_scope_contained']:.1f}% | {faq} | "
                f"{handoff} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--runs", type=Path, default=RUNS, help="bench/robustness.py's work folder")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-router"))
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--min-similarity", type=float, default=0.7)
    parser.add_argument("--max-wrong", type=float, default=0.02)
    parser.add_argument(
        "--wrong-rate-confidence",
        type=float,
        nargs="*",
        default=[0.95],
        help="also choose by the wrong-answer rate's upper bound at these levels (evaluate.wrong_rate_confidence)",
    )
    parser.add_argument(
        "--out-of-scope-shares",
        type=float,
        nargs="*",
        default=[0.05, 0.1, 0.2, 0.3],
        help="shares of out-of-scope traffic the validation rates are weighted to (evaluate.out_of_scope_share)",
    )
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    out = RESULTS / "router.json"
    if args.table_only:
        print(table(json.loads(out.read_text())))
        return
    RESULTS.mkdir(exist_ok=True)
    # the other tasks' records are kept: a run of some tasks replaces only theirs
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("tasks", {})
    results.pop("command", None)
    for task in args.tasks.split(","):
        results["tasks"][task] = run_task(task, args) | {
            "command": " ".join(["python", "bench/router.py", *sys.argv[1:]])
        }
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(table({"tasks": {task: results["tasks"][task]}}), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
