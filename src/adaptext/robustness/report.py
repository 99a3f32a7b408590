"""The robustness report: accuracy and prediction flips under label-preserving perturbations, and an attack.

`check_robustness` scores a `Predictor` on labelled `TextData`: each perturbation of `adaptext.data.perturb` is
applied to every text, and only the texts it changed are predicted again and counted. A flip is a changed
prediction (single-label: another label; multi-label: another label set), whether or not the first one was right.
Then the word-substitution attack of `adaptext.robustness.attack` runs on every text the model gets right.
`adaptext.robustness.files.robustness_file` does this for a saved model and a labelled file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adaptext.core.console import progress_bar
from adaptext.core.errors import AdaptextError
from adaptext.data.examples import TextData
from adaptext.data.labels import check_known_labels, label_targets
from adaptext.data.perturb import DEFAULT_PERTURBATIONS, PERTURBATIONS, perturb_texts
from adaptext.inference.predictor import Predictor
from adaptext.robustness.attack import AttackOutcome, AttackSettings, WordNeighbours, attack_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RobustnessSettings:
    """What `check_robustness` does.

    Attributes:
        perturbations: Names in `PERTURBATIONS`, applied one at a time.
        seed: Seeds every perturbation (per text, see `perturb_texts`) and the attack.
        attack: The attack's budget; `max_words=0` skips it.
        worst: Examples kept per perturbation (flips first, then the largest change of a probability).
        limit: Only the first `limit` texts of the data (None: all).
    """

    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    seed: int = 0
    attack: AttackSettings = field(default_factory=AttackSettings)
    worst: int = 5
    limit: int | None = None


@dataclass
class PerturbationScore:
    """One perturbation on the texts it changed: accuracy after it and before it, and the share of flips."""

    accuracy: float | None
    clean_accuracy_on_changed: float | None
    flip_rate: float | None
    changed: int


@dataclass
class AttackSummary:
    """The attack over the texts the model got right (`attacked`): the share it flipped within budget, accuracy on
    all texts with those flipped counted wrong, words changed per successful attack, queries per attacked text."""

    success_rate: float | None
    accuracy_under_attack: float | None
    mean_words_changed: float | None
    mean_queries: float | None
    max_words: int
    max_queries: int
    attacked: int


@dataclass
class RobustnessReport:
    """What `robustness.json` holds (`to_dict`), and the settings and timing the page shows besides."""

    clean_accuracy: float
    n: int
    perturbations: dict[str, PerturbationScore]
    flip_rate: float | None
    attack: AttackSummary
    worst: dict[str, list[dict[str, Any]]]
    settings: RobustnessSettings = field(default_factory=RobustnessSettings)
    seconds: float = 0.0
    model: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The six keys of `robustness.json`: clean_accuracy, n, perturbations, flip_rate, attack, worst."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "n": self.n,
            "perturbations": {name: vars(score) for name, score in self.perturbations.items()},
            "flip_rate": self.flip_rate,
            "attack": vars(self.attack),
            "worst": self.worst,
        }


def check_robustness(
    predictor: Predictor, data: TextData, settings: RobustnessSettings | None = None, *, progress: bool = False
) -> RobustnessReport:
    """Score `predictor` on labelled `data` under each perturbation of `settings` and under the attack.

    >>> report = check_robustness(Predictor.from_dir("runs/sst2"), data)  # doctest: +SKIP
    >>> report.perturbations["typos"].flip_rate  # doctest: +SKIP
    0.041
    """
    settings = settings or RobustnessSettings()
    start = time.perf_counter()
    chosen = [PERTURBATIONS.get(name) for name in settings.perturbations]
    if settings.limit is not None and len(data) > settings.limit:
        data = data.subset(list(range(settings.limit)))
    if not len(data):
        raise AdaptextError(f"{data.source}: no rows to score")
    gold = _gold(predictor, data)
    probs = predictor.predict_proba(data.texts, data.pairs, progress=progress)
    decided = predictor.task.decide(probs, predictor.threshold)
    correct = (decided == gold).all(axis=1)
    scores: dict[str, PerturbationScore] = {}
    worst: dict[str, list[dict[str, Any]]] = {}
    flips = changed_total = 0
    for perturbation in progress_bar(chosen, show=progress, desc="perturb", unit="perturbation"):
        changed_texts = perturb_texts(data.texts, perturbation, settings.seed)
        changed = [i for i, (old, new) in enumerate(zip(data.texts, changed_texts, strict=True)) if old != new]
        pairs = None if data.pairs is None else [data.pairs[i] for i in changed]
        after = predictor.predict_proba([changed_texts[i] for i in changed], pairs)
        decided_after = predictor.task.decide(after, predictor.threshold)
        flipped = (decided_after != decided[changed]).any(axis=1)
        scores[perturbation.name] = PerturbationScore(
            accuracy=_mean((decided_after == gold[changed]).all(axis=1)),
            clean_accuracy_on_changed=_mean(correct[changed]),
            flip_rate=_mean(flipped),
            changed=len(changed),
        )
        if perturbation.label_preserving:
            flips, changed_total = flips + int(flipped.sum()), changed_total + len(changed)
        shift = np.abs(after - probs[changed]).max(axis=1) if changed else np.zeros(0)
        order = sorted(range(len(changed)), key=lambda j: (not flipped[j], -shift[j]))[: settings.worst]
        worst[perturbation.name] = [
            _example(predictor, data, changed[j], changed_texts[changed[j]], probs[changed[j]], after[j], gold)
            for j in order
        ]
    attack, outcomes = _attack(predictor, data, gold, probs, correct, settings, progress)
    if outcomes:
        shown = sorted((o for o in outcomes if o[1].flipped), key=lambda o: (o[1].words_changed, o[1].queries))
        worst["attack"] = [
            _example(predictor, data, i, o.adversarial, o.probs_before, o.probs_after, gold)
            for i, o in shown[: settings.worst]
        ]
    return RobustnessReport(
        clean_accuracy=float(correct.mean()),
        n=len(data),
        perturbations=scores,
        flip_rate=flips / changed_total if changed_total else None,
        attack=attack,
        worst=worst,
        settings=settings,
        seconds=time.perf_counter() - start,
        source=data.source,
    )


def _gold(predictor: Predictor, data: TextData) -> np.ndarray:
    """The data's labels as booleans (n, num_labels)."""
    check_known_labels(data, predictor.labels)
    targets = label_targets(data, predictor.labels, predictor.task)
    if predictor.multi_label:
        return targets.astype(bool)
    return np.eye(len(predictor.labels), dtype=bool)[targets]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _attack(
    predictor: Predictor,
    data: TextData,
    gold: np.ndarray,
    probs: np.ndarray,
    correct: np.ndarray,
    settings: RobustnessSettings,
    progress: bool,
) -> tuple[AttackSummary, list[tuple[int, AttackOutcome]]]:
    budget = settings.attack
    if budget.max_words <= 0 or budget.max_queries <= 0:
        return AttackSummary(None, None, None, None, budget.max_words, budget.max_queries, 0), []
    if budget.embeddings:
        neighbours = WordNeighbours.of_model(budget.embeddings)
    else:
        neighbours = WordNeighbours.of_predictor(predictor)
    targets = np.flatnonzero(correct).tolist()
    outcomes = [
        (
            i,
            attack_text(
                predictor,
                neighbours,
                data.texts[i],
                gold[i],
                budget,
                pair=None if data.pairs is None else data.pairs[i],
                probs=probs[i],
            ),
        )
        for i in progress_bar(targets, show=progress, desc="attack", unit="text")
    ]
    flipped = [o for _, o in outcomes if o.flipped]
    summary = AttackSummary(
        success_rate=len(flipped) / len(outcomes) if outcomes else None,
        accuracy_under_attack=(len(outcomes) - len(flipped)) / len(data),
        mean_words_changed=float(np.mean([o.words_changed for o in flipped])) if flipped else None,
        mean_queries=float(np.mean([o.queries for _, o in outcomes])) if outcomes else None,
        max_words=budget.max_words,
        max_queries=budget.max_queries,
        attacked=len(outcomes),
    )
    return summary, outcomes


def _answer(predictor: Predictor, probs: np.ndarray) -> str | list[str]:
    """The model's answer for one row of probabilities: a label, or for a multi-label model the label set."""
    decided = predictor.task.decide(probs[None], predictor.threshold)[0]
    names = [predictor.labels[j] for j in np.argsort(-probs, kind="stable") if decided[j]]
    return names if predictor.multi_label else names[0]


def _example(
    predictor: Predictor,
    data: TextData,
    i: int,
    perturbed: str,
    before: np.ndarray,
    after: np.ndarray,
    gold: np.ndarray,
) -> dict[str, Any]:
    """One example of `worst`: the texts, the gold label(s), the answers before and after, and the probabilities of
    the labels that matter (the gold ones and the three most probable before and after)."""
    shown = set(np.flatnonzero(gold[i]).tolist())
    for row in (before, after):
        shown.update(np.argsort(-row, kind="stable")[:3].tolist())
    gold_names = [predictor.labels[j] for j in np.flatnonzero(gold[i])]
    return {
        "row": data.rows[i] if data.rows else i + 1,
        "original": data.texts[i],
        "perturbed": perturbed,
        "label": gold_names if predictor.multi_label else gold_names[0],
        "before": _answer(predictor, before),
        "after": _answer(predictor, after),
        "scores": {
            "before": {predictor.labels[j]: round(float(before[j]), 4) for j in sorted(shown)},
            "after": {predictor.labels[j]: round(float(after[j]), 4) for j in sorted(shown)},
        },
    }
