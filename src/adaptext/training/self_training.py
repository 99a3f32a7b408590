"""Self-training: confident, class-balanced pseudo-labels from unlabelled text, in rounds, on top of any strategy
that trains on `prepare`'s `splits.train` (`Strategy.self_trainable`: fine-tuning and few-shot).

`run_strategy` calls `self_train` in place of `Strategy.fit` when `self_training.rounds` > 0:

    round 0: fit on the labelled data
    round k (1..rounds): the model of round k-1 labels what is left of the pool; the texts whose top probability
        (calibrated on validation, as the final model's is) reaches `self_training.threshold` are candidates; each
        class keeps its `per_class` most probable (`max_per_round` cuts in turns over the classes); they join the
        training data for good and the strategy fits again, from `model.name` as in round 0 (Yarowsky-style
        self-training as in the literature: each round a fresh student, not a continued one, so that an early
        round's mistakes are not baked into the weights the next round starts from)
    stop after `rounds`, or earlier when a round adds no pseudo-label (the next fit would repeat this one)

Each round fits in its own folder, `self_training/round_<k>/` (train log; the model when `keep_round_models`);
the last round's model, checkpoint and train log become the run's, so the run folder is an ordinary one that the
lifecycle evaluates and reports like any other. `pseudo_labels.csv` (text, label, probability, round) and
`self_training.json` (per round: examples, pseudo-labels added per class, validation accuracy) record the rounds.

The pool never includes validation or test data: it is read from `data.unlabelled` alone, and its texts that equal
a training, validation or test text (or an earlier pool text) are dropped before the first round.
"""

from __future__ import annotations

import csv
import gc
import html
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import set_seed

from adaptext.core.config import Config
from adaptext.core.device import process_state
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.core.run import RunPaths, write_json
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.examples import Splits, TextData
from adaptext.data.io import read_texts
from adaptext.data.labels import label_targets
from adaptext.evaluation.calibration import fit_temperature
from adaptext.evaluation.metrics import evaluate_data
from adaptext.inference.predictor import Predictor
from adaptext.training.optim import eval_batch_size
from adaptext.training.state import TrainingState
from adaptext.training.strategy import Prepared, Run, Strategy

logger = logging.getLogger(__name__)

ROUNDS_DIR = "self_training"
PSEUDO_LABELS_FILE = "pseudo_labels.csv"
RECORD_FILE = "self_training.json"


@dataclass
class Pool:
    """The unlabelled texts self-training may pseudo-label, after the leakage and duplicate checks."""

    texts: list[str]
    source: str
    read: int = 0  # texts in the file
    leaked: int = 0  # dropped: equal to a training, validation or test text
    repeated: int = 0  # dropped: equal to an earlier text of the pool


@dataclass
class PseudoLabel:
    """One pool text with the label a model gave it, the probability of that label, and the round it joined."""

    text: str
    label: str
    probability: float
    round: int


@dataclass
class RoundRecord:
    """What one round trained on and how its model scored on validation."""

    round: int
    labelled: int  # labelled training examples
    pseudo_labelled: int  # pseudo-labelled examples trained on (all rounds so far)
    added: int  # pseudo-labels that joined in this round
    added_per_class: dict[str, int] = field(default_factory=dict)
    candidates: int = 0  # pool texts at or above the threshold when this round's pseudo-labels were chosen
    pool_left: int = 0  # pool texts not pseudo-labelled after this round's were chosen
    validation_accuracy: float = float("nan")
    validation_macro_f1: float = float("nan")


def check_self_training(strategy: Strategy, config: Config, *, resume: bool) -> None:
    """Refuse self-training where it cannot run: a strategy that does not train on its splits, or a resumed run."""
    if not config.self_training.rounds:
        return
    if not strategy.self_trainable:
        reason = (
            "does not train on labelled examples"
            if config.strategy == "zeroshot"
            else "does not support retraining on added examples"
        )
        raise ConfigError(
            f"self_training.rounds: strategy {config.strategy} {reason}; self-training works with strategy "
            "finetune or fewshot (or set self_training.rounds=0)"
        )
    if resume:
        raise AdaptextError(
            "a self-training run cannot be resumed: its rounds would mix models and pseudo-labels of two runs; "
            "start it again with --overwrite"
        )
    processes = process_state().num_processes
    if processes > 1:
        raise AdaptextError(
            f"self-training runs its rounds in one process; it was launched in {processes}: run it without "
            "accelerate launch / torchrun"
        )


def read_pool(config: Config, splits: Splits) -> Pool:
    """`data.unlabelled`'s texts, without those that equal a training, validation or test text (logged) and
    without repeats; a `DataError` when none is left."""
    path = config.data.unlabelled
    if path is None:
        raise ConfigError("self_training.rounds needs data.unlabelled: the file of unlabelled texts to pseudo-label")
    texts = read_texts(path, config.data.text_column)
    known = {text.strip() for data in (splits.train, splits.validation, splits.test) if data for text in data.texts}
    pool = Pool(texts=[], source=str(path), read=len(texts))
    seen: set[str] = set()
    for text in texts:
        key = text.strip()
        if key in known:
            pool.leaked += 1
        elif key in seen:
            pool.repeated += 1
        else:
            seen.add(key)
            pool.texts.append(text)
    if pool.leaked:
        logger.info(
            "data.unlabelled: dropped %d of %d texts that equal a training, validation or test text (leakage)",
            pool.leaked,
            pool.read,
        )
    if pool.repeated:
        logger.info("data.unlabelled: dropped %d repeated texts", pool.repeated)
    if not pool.texts:
        raise DataError(f"{path}: no unlabelled text is left once texts equal to labelled ones are dropped")
    return pool


def per_class_cap(config: Config, splits: Splits) -> int:
    """Pseudo-labels a class may gain in a round: `self_training.per_class`, or for `auto` the labelled training
    examples of the largest class."""
    cap = config.self_training.per_class
    if cap != "auto":
        return int(cap)
    counts: dict[str, int] = {}
    for label in splits.train.labels or []:
        counts[str(label)] = counts.get(str(label), 0) + 1
    return max(counts.values(), default=1)


def select_pseudo_labels(
    log_probs: np.ndarray, threshold: float, per_class: int, max_total: int | None = None
) -> list[tuple[int, int, float]]:
    """The pool rows to pseudo-label, as (row, class, probability), most probable first within each class.

    `log_probs` are the rows' log-probabilities (float64): ranking on them keeps the order of confident rows whose
    probabilities all round to 1.0. A row is a candidate when its top probability is at least `threshold`; its
    class is that top one. Each class keeps its `per_class` most probable candidates (ties: the earlier row). With
    `max_total`, the kept rows are taken in turns over the classes (every class's first, by probability, then every
    class's second, ...) until `max_total`, so the cut keeps the classes balanced.

    >>> probs = np.array([[0.95, 0.05], [0.4, 0.6], [0.08, 0.92], [0.97, 0.03]])
    >>> select_pseudo_labels(np.log(probs), 0.9, 1)
    [(3, 0, 0.97), (2, 1, 0.92)]
    """
    if log_probs.ndim != 2 or len(log_probs) == 0:
        return []
    best = log_probs.argmax(axis=1)
    top = log_probs[np.arange(len(log_probs)), best]
    by_class: dict[int, list[int]] = {}
    for row in np.flatnonzero(confident(log_probs, threshold)):
        by_class.setdefault(int(best[row]), []).append(int(row))
    ranked: list[tuple[int, float, int, int]] = []  # (rank in its class, -log-probability, row, class)
    for cls, rows in by_class.items():
        rows.sort(key=lambda r: (-top[r], r))
        ranked.extend((rank, -float(top[row]), row, cls) for rank, row in enumerate(rows[:per_class]))
    ranked.sort()
    if max_total is not None:
        ranked = ranked[:max_total]
    chosen = sorted(ranked, key=lambda item: (item[3], item[0]))
    return [(row, cls, round(float(np.exp(-negative)), 6)) for _, negative, row, cls in chosen]


def pool_log_probabilities(predictor: Predictor, texts: list[str], validation: TextData, config: Config) -> np.ndarray:
    """The model's log-probabilities (float64) for `texts`, calibrated as the final model will be: a model without
    a temperature of its own gets one fitted on `validation` (when `calibrate` is on), so the threshold means the
    same in every round and for every strategy."""
    logits = predictor.predict_logits(texts).astype(np.float64) / predictor.temperature
    if config.calibrate and predictor.info.temperature is None and len(validation) and validation.labels:
        reference = predictor.predict_logits(validation.texts, validation.pairs) / predictor.temperature
        targets = label_targets(validation, predictor.labels, SINGLE_LABEL)
        logits = logits / fit_temperature(reference, targets, low=0.05, high=20.0)
    return log_softmax(logits)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax that keeps the top log-probability exact when it is within 1e-16 of 0: it is
    -log1p(sum of exp(l_j - l_top) over the other labels), where `x - logsumexp(x)` would round it to 0.

    >>> top = log_softmax(np.array([[50.0, 0.0], [60.0, 0.0]]))[:, 0]
    >>> bool(top[0] < top[1] < 0)
    True
    """
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(logits))
    best = logits.argmax(axis=1)
    shifted = logits - logits[rows, best][:, None]
    others = np.exp(shifted)
    others[rows, best] = 0.0
    return shifted - np.log1p(others.sum(axis=1))[:, None]


def confident(log_probs: np.ndarray, threshold: float) -> np.ndarray:
    """Which rows' top probability reaches `threshold` (compared as log-probabilities: see `log_softmax`)."""
    if len(log_probs) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(log_probs.max(axis=1) >= (np.log(threshold) if threshold > 0 else -np.inf))


def with_pseudo_labels(train: TextData, pseudo: list[PseudoLabel], source: str) -> TextData:
    """The labelled training data followed by the pseudo-labelled texts."""
    if not pseudo:
        return train
    start = max(train.rows, default=len(train)) + 1
    return TextData(
        texts=[*train.texts, *(p.text for p in pseudo)],
        source=f"{train.source} + {len(pseudo)} pseudo-labelled texts of {source}",
        labels=[*(train.labels or []), *(p.label for p in pseudo)],
        rows=[*train.rows, *range(start, start + len(pseudo))],
    )


def self_train(strategy: Strategy, prepared: Prepared, run: Run, pool: Pool) -> TrainingState:
    """Fit `strategy` in rounds with pseudo-labels from `pool` (see the module's docstring); the last round's model,
    checkpoint and train log become the run's. Returns the last round's training state."""
    config, settings = run.config, run.config.self_training
    splits = prepared.splits
    cap = per_class_cap(config, splits)
    batch_size = eval_batch_size(config.train)
    left = list(pool.texts)
    pseudo: list[PseudoLabel] = []
    records: list[RoundRecord] = []
    pending = RoundRecord(round=0, labelled=len(splits.train), pseudo_labelled=0, added=0, pool_left=len(left))
    logger.info(
        "self-training: %d rounds on %d unlabelled texts, threshold %g, at most %d per class%s",
        settings.rounds,
        len(left),
        settings.threshold,
        cap,
        f" and {settings.max_per_round} in all per round" if settings.max_per_round else "",
    )
    for number in range(settings.rounds + 1):
        paths = RunPaths(run.paths.root / ROUNDS_DIR / f"round_{number}")
        if paths.root.exists():
            shutil.rmtree(paths.root)
        paths.root.mkdir(parents=True)
        train = with_pseudo_labels(splits.train, pseudo, pool.source)
        logger.info(
            "self-training round %d/%d: %d labelled + %d pseudo-labelled examples",
            number,
            settings.rounds,
            len(splits.train),
            len(pseudo),
        )
        set_seed(config.seed)  # every round's model starts from the same seeded state, as round 0's does
        state = strategy.fit(replace(prepared, splits=replace(splits, train=train)), replace(run, paths=paths))
        gc.collect()
        predictor = Predictor.from_dir(paths.model, batch_size=batch_size)
        if splits.validation_held_out:  # a true few-shot run has no held-out texts to score a round on
            report = evaluate_data(predictor, splits.validation)
            pending.validation_accuracy = float(report.metrics["accuracy"])
            pending.validation_macro_f1 = float(report.metrics.get("macro_f1", float("nan")))
            logger.info(
                "self-training round %d: validation accuracy %.4f, macro_f1 %.4f",
                number,
                pending.validation_accuracy,
                pending.validation_macro_f1,
            )
        records.append(pending)
        last = number == settings.rounds or not left
        if not last:
            log_probs = pool_log_probabilities(predictor, left, splits.validation, config)
            chosen = select_pseudo_labels(log_probs, settings.threshold, cap, settings.max_per_round)
            added = [PseudoLabel(left[row], predictor.labels[cls], prob, number + 1) for row, cls, prob in chosen]
            taken = {row for row, _, _ in chosen}
            left = [text for row, text in enumerate(left) if row not in taken]
            pseudo.extend(added)
            per_class: dict[str, int] = {}
            for item in added:
                per_class[item.label] = per_class.get(item.label, 0) + 1
            pending = RoundRecord(
                round=number + 1,
                labelled=len(splits.train),
                pseudo_labelled=len(pseudo),
                added=len(added),
                added_per_class=per_class,
                candidates=int(confident(log_probs, settings.threshold).sum()),
                pool_left=len(left),
            )
            logger.info(
                "self-training: %d pool texts at or above %g, %d pseudo-labels added (%d classes), %d texts left",
                pending.candidates,
                settings.threshold,
                len(added),
                len(per_class),
                len(left),
            )
            if not added:
                logger.info("self-training: no new pseudo-label; round %d is the last", number)
                last = True
        del predictor
        write_records(run.paths.root, pseudo, records, settings.model_dump())
        if last:
            adopt_round(paths, run.paths)
            break
        if not settings.keep_round_models:
            shutil.rmtree(paths.model, ignore_errors=True)
        shutil.rmtree(paths.checkpoint, ignore_errors=True)  # a round cannot be resumed: its checkpoint is spent
    return state


def adopt_round(round_paths: RunPaths, run_paths: RunPaths) -> None:
    """Move the last round's model and checkpoint into the run folder, and copy its train log there."""
    for name in ("model", "checkpoint"):
        source, target = round_paths.root / name, run_paths.root / name
        if not source.exists():
            continue
        if target.exists():
            shutil.rmtree(target)
        source.rename(target)
    if round_paths.log.is_file():
        shutil.copyfile(round_paths.log, run_paths.log)


def write_records(root: Path, pseudo: list[PseudoLabel], records: list[RoundRecord], settings: dict[str, Any]) -> None:
    """Write `pseudo_labels.csv` and `self_training.json` (rewritten after each round, so a stopped run shows how
    far it got)."""
    with (root / PSEUDO_LABELS_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "probability", "round"])
        writer.writerows((p.text, p.label, f"{p.probability:.6f}", p.round) for p in pseudo)
    write_json(root / RECORD_FILE, {"settings": settings, "rounds": [asdict(record) for record in records]})


def read_records(root: Path) -> list[dict[str, Any]]:
    """The per-round records of a self-training run folder (empty for any other run)."""
    path = root / RECORD_FILE
    if not path.is_file():
        return []
    rounds: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["rounds"]
    return rounds


def report_section(root: Path) -> list[tuple[str, str]]:
    """The report's self-training table: per round, the examples trained on, pseudo-labels added and validation
    scores."""
    rounds = read_records(root)
    if not rounds:
        return []
    rows = "".join(
        f"<tr><td>{r['round']}</td><td>{r['labelled']}</td><td>{r['pseudo_labelled']}</td><td>{r['added']}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in sorted(r['added_per_class'].items())) or '-')}</td>"
        f"<td>{r['validation_accuracy']:.4f}</td><td>{r['validation_macro_f1']:.4f}</td></tr>"
        for r in rounds
    )
    body = (
        f"<p>{len(rounds) - 1} self-training round(s) after the model trained on the labelled data alone (round 0); "
        f"the pseudo-labels are in <code>{PSEUDO_LABELS_FILE}</code>, the final model is the last round's.</p>"
        "<table><tr><th>round</th><th>labelled</th><th>pseudo-labelled</th><th>added</th><th>added per class</th>"
        f"<th>validation accuracy</th><th>validation macro-F1</th></tr>{rows}</table>"
    )
    return [("Self-training", body)]
