"""Routing texts: answer with the intent's answer, answer from the FAQ, or hand over to a person.

A text is answered with its intent's answer when the model is confident (calibrated top probability at least
`handoff.min_confidence`), the out-of-scope detector (if any) keeps it in scope, and the intent has an answer.
Every other text is searched in the FAQ (when one is configured) and answered from it when its nearest question is
similar enough; otherwise it is handed over.

>>> router = load_router(load_route_config("route.yaml"))  # doctest: +SKIP
>>> router.route(["I lost my card"])[0].action  # doctest: +SKIP
'answer'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from adaptext.apps.router.config import HandoffRule, RouteConfig
from adaptext.apps.router.faq import FaqIndex
from adaptext.core.errors import AdaptextError, DataError
from adaptext.data.io import read_table, require_columns, text_values
from adaptext.inference.predictor import Predictor

logger = logging.getLogger(__name__)

Action = Literal["answer", "faq", "handoff"]
# Why a text got its action: the model was confident; it was not; the detector flagged it; its intent has no answer.
Reason = Literal["confident", "low_confidence", "out_of_scope", "no_answer"]


@dataclass
class Routed:
    """One text's route.

    `intent`: the model's top intent (kept for a person who takes over); `confidence`: its calibrated probability;
    `action`: answer | faq | handoff; `answer`: the intent's answer, the FAQ's answer or the handoff message;
    `score`: what the action rests on (the confidence, or the FAQ similarity); `faq_question`: the matched
    question; `ood_score`: the detector's score when the model has one.
    """

    intent: str
    confidence: float
    action: Action
    answer: str
    score: float
    reason: Reason
    faq_question: str | None = None
    ood_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Signals:
    """What routing decides from, per text: top intent index, its confidence, the detector's verdict and score."""

    intent: np.ndarray  # (n,) int
    confidence: np.ndarray  # (n,) float
    out_of_scope: np.ndarray  # (n,) bool; all False without a detector (or with use_detector off)
    ood_share: np.ndarray | None  # (n,) float, the detector's share score; None without a detector


class Router:
    """A classifier, the answer of each intent, the handoff rule and an optional FAQ."""

    def __init__(
        self, predictor: Predictor, answers: dict[str, str], rule: HandoffRule, faq: FaqIndex | None = None
    ) -> None:
        unknown = sorted(set(answers) - set(predictor.labels))
        if unknown:
            raise AdaptextError(f"answers for intents the model does not know: {', '.join(unknown[:5])}")
        if predictor.multi_label:
            raise AdaptextError("the router needs a single-label intent model, not a multi-label one")
        self.predictor = predictor
        self.answers = answers
        self.rule = rule
        self.faq = faq
        self.has_answer = np.array([label in answers for label in predictor.labels])

    @property
    def detector_used(self) -> bool:
        return self.rule.use_detector and self.predictor.detector is not None

    def signals(self, probs: np.ndarray, ood_raw: np.ndarray | None = None) -> Signals:
        """Signals from calibrated probabilities (n, num_labels) and the detector's raw scores (n,), if any."""
        intent = probs.argmax(axis=1)
        confidence = probs[np.arange(len(probs)), intent]
        detector = self.predictor.detector
        if detector is None or ood_raw is None:
            return Signals(intent, confidence, np.zeros(len(probs), dtype=bool), None)
        out = detector.out_of_scope(ood_raw) if self.rule.use_detector else np.zeros(len(probs), dtype=bool)
        return Signals(intent, confidence, out, detector.share_below(ood_raw))

    def signals_for(self, texts: Sequence[str], *, progress: bool = False) -> Signals:
        """Run the model on `texts` and return their signals."""
        if self.predictor.detector is None:
            return self.signals(self.predictor.predict_proba(texts, progress=progress))
        probs, raw = self.predictor.ood_scores(texts, progress=progress)
        return self.signals(probs, raw)

    def answered(self, signals: Signals, min_confidence: float | None = None) -> np.ndarray:
        """(n,) bool: the texts answered with their intent's answer under `min_confidence` (default: the rule's)."""
        threshold = self.rule.min_confidence if min_confidence is None else min_confidence
        return ~signals.out_of_scope & (signals.confidence >= threshold) & self.has_answer[signals.intent]

    def decide(self, texts: Sequence[str], signals: Signals, *, progress: bool = False) -> list[Routed]:
        """Route `texts` by their `signals`; the FAQ is searched for the texts not answered."""
        answered = self.answered(signals)
        fallen = np.flatnonzero(~answered)
        faq_index = np.full(len(texts), -1)
        faq_similarity = np.full(len(texts), -np.inf, dtype=np.float32)
        if self.faq is not None and len(fallen):
            match = self.faq.search([texts[int(i)] for i in fallen], progress=progress)
            faq_index[fallen], faq_similarity[fallen] = match.index, match.similarity
        routes = []
        for i in range(len(texts)):
            intent = self.predictor.labels[int(signals.intent[i])]
            confidence = float(signals.confidence[i])
            route = Routed(
                intent=intent,
                confidence=confidence,
                action="handoff",
                answer=self.rule.message,
                score=confidence,
                reason="confident",
                ood_score=None if signals.ood_share is None else float(signals.ood_share[i]),
            )
            if answered[i]:
                route.action, route.answer = "answer", self.answers[intent]
            else:
                route.reason = (
                    "out_of_scope"
                    if signals.out_of_scope[i]
                    else "low_confidence"
                    if confidence < self.rule.min_confidence
                    else "no_answer"
                )
                if self.faq is not None and faq_similarity[i] >= self.faq.min_similarity:
                    j = int(faq_index[i])
                    route.action, route.answer = "faq", self.faq.answers[j]
                    route.score, route.faq_question = float(faq_similarity[i]), self.faq.questions[j]
            routes.append(route)
        return routes

    def route(self, texts: Sequence[str], *, progress: bool = False) -> list[Routed]:
        """Route each text (see the module's docstring)."""
        return self.decide(texts, self.signals_for(texts, progress=progress), progress=progress)


def read_answers(config: RouteConfig, labels: Sequence[str]) -> dict[str, str]:
    """The answers file as {intent: answer}; every intent must be one of the model's `labels`, once."""
    path = config.answers
    frame = read_table(path)
    require_columns(path, frame, [config.intent_column, config.answer_column])
    intents = text_values(path, frame, config.intent_column)
    texts = text_values(path, frame, config.answer_column)
    known = set(labels)
    answers: dict[str, str] = {}
    for row, (intent, answer) in enumerate(zip(intents, texts, strict=True), start=1):
        intent = intent.strip()
        if intent not in known:
            shown = ", ".join(sorted(known)[:8]) + (" ..." if len(known) > 8 else "")
            raise DataError(
                f"{path}: row {row}: column {config.intent_column!r}: {intent!r} is not one of the model's "
                f"intents ({shown})"
            )
        if intent in answers and answers[intent] != answer:
            raise DataError(f"{path}: row {row}: intent {intent!r} has a second, different answer; keep one")
        answers[intent] = answer
    missing = [label for label in labels if label not in answers]
    if missing:
        logger.warning(
            "%s: %d of %d intents have no answer and are handed over: %s",
            path,
            len(missing),
            len(labels),
            ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    return answers


def load_router(
    config: RouteConfig, *, predictor: Predictor | None = None, batch_size: int = 64, device: str | None = None
) -> Router:
    """The router `config` describes (with `predictor` already loaded from `config.model`, if given)."""
    if predictor is None:
        predictor = Predictor.from_dir(config.model, device=device, batch_size=batch_size)
    answers = read_answers(config, predictor.labels)
    faq = None
    if config.faq is not None:
        faq = FaqIndex.load(config.faq, device=device)
    return Router(predictor, answers, config.handoff, faq)
