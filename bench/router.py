"""Intent router on CLINC150 with its out-of-scope texts: automation against wrong answers (issue 18).

Routes CLINC150's test file (4,500 in-scope + 1,000 out-of-scope texts) with `adaptext route --evaluate`'s code on a
run trained on the 150 in-scope intents (by default the run `bench/robustness.py` trains, with its out-of-scope
detector). Each intent gets an answer; the FAQ holds CLINC150's out-of-scope *training* texts (never a test text),
searched by the bundled MiniLM. Reports the rates at the configured `min_confidence` and at the lowest threshold
that keeps wrong answers within 2%, and writes the curve as bench/results/router-curve.png.

    python bench/router.py --run /tmp/adaptext-bench-robustness/clinc150/run
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from adaptext.apps.router.config import load_route_config
from adaptext.apps.router.files import route_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clinc150"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("/tmp/adaptext-bench-robustness/clinc150/run"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adaptext-bench-router"))
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--min-similarity", type=float, default=0.7)
    args = parser.parse_args()
    if not (args.run / "model").is_dir():
        raise SystemExit(f"{args.run}: no trained run; train it with: python bench/robustness.py --tasks clinc150")
    args.work.mkdir(parents=True, exist_ok=True)
    labels = json.loads((args.run / "labels.json").read_text())
    pd.DataFrame({"intent": labels, "answer": [f"Answer for {label}." for label in labels]}).to_csv(
        args.work / "answers.csv", index=False
    )
    train = pd.read_csv(args.data / "train.csv")
    oos = train.loc[train["label"] == "oos", "text"].drop_duplicates()
    pd.DataFrame({"question": oos, "answer": "That is outside what this assistant handles."}).to_csv(
        args.work / "faq.csv", index=False
    )
    (args.work / "route.yaml").write_text(
        f"model: {args.run.resolve()}\nanswers: answers.csv\nhandoff:\n  min_confidence: {args.min_confidence}\n"
        f"faq:\n  file: faq.csv\n  min_similarity: {args.min_similarity}\nevaluate:\n  ood_label: oos\n"
    )
    config = load_route_config(args.work / "route.yaml")
    start = time.perf_counter()
    result = route_file(config, args.data / "test.csv", args.work / "routed.csv", evaluate=True, overwrite=True)
    seconds = time.perf_counter() - start
    assert result.report is not None and result.curve_png is not None
    report = result.report.to_dict()
    summary = {
        "run": str(args.run),
        "detector": result.report.metrics["detector"],
        "seconds": round(seconds, 1),
        "configured": result.report.metrics,
        "actions": result.actions,
        "lowest_threshold_within_2pct_wrong": report["suggested_min_confidence"],
        "curve_png": "router-curve.png",  # every threshold's rates: the --evaluate JSON in the work folder
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.copy(result.curve_png, RESULTS / "router-curve.png")
    m, best = result.report.metrics, report["suggested_min_confidence"]
    print("| threshold | in-scope answered correctly | wrong answers (all) | OOS handed over / FAQ | FAQ | handoff |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| configured {m['min_confidence']:.2f} | {100 * m['in_scope_automation']:.1f}% | "
        f"{100 * m['wrong_answer_rate']:.2f}% | {100 * m['out_of_scope_contained']:.1f}% | {100 * m['faq_rate']:.1f}% "
        f"| {100 * m['handoff_rate']:.1f}% |"
    )
    if best is not None:
        print(
            f"| lowest with <= 2% wrong: {best['min_confidence']:.4f} | {100 * best['in_scope_automation']:.1f}% | "
            f"{100 * best['wrong_answer_rate']:.2f}% | {100 * best['out_of_scope_contained']:.1f}% | | |"
        )


if __name__ == "__main__":
    main()
