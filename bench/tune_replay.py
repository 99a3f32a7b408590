"""Replay a finished unpruned study under optuna's pruners: what each would have stopped, kept and cost.

A study run with `tune.pruner=none` holds, for every trial, its scores at the three rungs (a ninth, a third and all of
its training; `adaptext.tuning.pruning`) and its optimizer steps. This script feeds those trials, in their order, to
a fresh in-memory study with each pruner: a trial reports its rung scores until the pruner stops it, and its compute
is then the steps up to that rung times its batch size (a complete trial's: all of them). It reports, per pruner, the
trials kept, the examples trained against the unpruned study's, and the best complete trial against the unpruned best.

It is a replay, not a study: the trials are the unpruned study's, while a pruned study's sampler would have drawn its
later trials from other evidence (pruned trials' scores). Use it to see how a pruner acts on one set of trials at no
cost; measure with `bench/scale.py --only tune` before claiming a result.

    python bench/tune_replay.py /tmp/scale-rungs/tune/none --json bench/results/tune_replay.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from adaptext.tuning.pruning import FINAL, REDUCTION, RUNGS, rung_steps
from adaptext.tuning.study import STUDY_DB, build_pruner

PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: build_pruner("median"),  # adaptext's own
    "successive_halving": lambda: build_pruner("successive_halving"),
    # the median pruner acting only from the second rung (a third of training) on
    "median from 1/3": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=REDUCTION),
    # median with more complete trials before it acts
    "median, 5 startup": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    # stop only trials in the bottom quarter of the complete ones at the same rung
    "percentile 75": lambda: build_pruner("percentile", 75.0),  # adaptext's own (tune.percentile=75)
}


def read_trials(folder: Path) -> list[dict[str, Any]]:
    """The complete trials of the unpruned study in `folder`, in order: rung scores, value, steps, batch size."""
    with (folder / "trials.csv").open(encoding="utf-8") as handle:
        batch = {int(row["number"]): int(row["train.batch_size"]) for row in csv.DictReader(handle)}
    storage = f"sqlite:///{(folder / STUDY_DB).resolve()}"
    study = optuna.load_study(study_name=folder.resolve().name, storage=storage)
    trials = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        scores = dict(t.intermediate_values)
        if any(REDUCTION**k not in scores for k in range(RUNGS)):
            sys.exit(f"{folder}: trial {t.number} has no score at every rung ({sorted(scores)}): not a rung study")
        steps, size = int(t.user_attrs["steps"]), batch[t.number]
        trials.append({"number": t.number, "scores": scores, "value": t.value, "steps": steps, "batch": size})
    return sorted(trials, key=lambda t: t["number"])


def replay(trials: list[dict[str, Any]], pruner: optuna.pruners.BasePruner) -> dict[str, Any]:
    """Feed `trials` to a fresh study with `pruner`; what it kept, what that cost, its best."""
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    examples, best, kept, stopped_at = 0, None, 0, []
    for t in trials:
        trial = study.ask()
        for k, at in enumerate(rung_steps(t["steps"])):
            number = REDUCTION**k
            trial.report(t["scores"][number], number)
            if number < FINAL and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                examples += at * t["batch"]
                stopped_at.append(number)
                break
        else:
            study.tell(trial, t["value"])
            examples += t["steps"] * t["batch"]
            kept += 1
            best = t["value"] if best is None else max(best, t["value"])
    return {
        "kept": kept,
        "pruned_at": {n: stopped_at.count(n) for n in sorted(set(stopped_at))},
        "examples": examples,
        "best": best,
    }


def rung_chosen(folder: Path, trials: list[dict[str, Any]]) -> list[int]:
    """The complete trials whose value is not their best end-of-epoch score: a rung evaluation chose their model.

    Since c9b07c5 an evaluation a callback asks for (a rung) neither chooses the model nor counts toward early
    stopping. A study run before that could have taken a trial's value from a rung; where no complete trial's did,
    the study's results are what the code now gives (the rung reports, and so the pruning, are the same).
    """
    metric = "eval_" + json.loads((folder / "tune.json").read_text(encoding="utf-8"))["metric"]
    chosen = []
    for t in trials:
        log = folder / "trials" / f"trial_{t['number']:04d}" / "train_log.jsonl"
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        ends = [r[metric] for r in records if metric in r and float(r["epoch"]).is_integer()]
        if not ends or abs(max(ends) - t["value"]) > 1e-12:
            chosen.append(t["number"])
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="the tune folder of a finished study with tune.pruner=none")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = read_trials(args.study)
    full = sum(t["steps"] * t["batch"] for t in trials)
    top = max(t["value"] for t in trials)
    rows = []
    chosen = rung_chosen(args.study, trials)
    print(f"{len(trials)} complete trials, {full} examples trained, best {top:.4f}")
    print(f"complete trials whose value a rung evaluation chose: {chosen or 'none'}\n")
    print("| pruner | trials kept | stopped at 1/9, 1/3 | examples trained | vs none | best | best vs none (points) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, build in PRUNERS.items():
        result = replay(trials, build()) | {"pruner": name}
        rows.append(result)
        stopped = f"{result['pruned_at'].get(1, 0)}, {result['pruned_at'].get(REDUCTION, 0)}"
        print(
            f"| {name} | {result['kept']} | {stopped} | {result['examples']:,} | {result['examples'] / full:.2f} | "
            f"{result['best']:.4f} | {100 * (result['best'] - top):+.2f} |"
        )
    if args.json:
        record = {
            "command": " ".join(sys.argv),
            "trials": len(trials),
            "examples": full,
            "best": top,
            "rung_chosen": chosen,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
