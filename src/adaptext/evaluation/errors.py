"""The misclassified examples a report shows, each with the words that made the model decide."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from adaptext.core.errors import AdaptextError
from adaptext.data.examples import TextData
from adaptext.explain.explainer import default_method, explain_texts
from adaptext.inference.predictor import Predictor

logger = logging.getLogger(__name__)


def explained_errors(predictor: Predictor, data: TextData, probs: np.ndarray, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` misclassified examples of `data`, the most confident mistakes first, each with the
    attributions of its words towards the predicted label (the default method). Single-label data only;
    `probs` are the predictor's probabilities for `data`."""
    if limit <= 0 or predictor.multi_label or predictor.task.regression or data.labels is None or not len(data):
        return []
    predicted = probs.argmax(axis=1)
    index = {name: i for i, name in enumerate(predictor.labels)}
    wrong = [i for i, label in enumerate(data.labels) if index.get(str(label), -1) != predicted[i]]
    wrong.sort(key=lambda i: -float(probs[i, predicted[i]]))
    chosen = wrong[:limit]
    if not chosen:
        return []
    try:
        method = default_method(predictor)
        result = explain_texts(
            predictor,
            [data.texts[i] for i in chosen],
            pairs=None if data.pairs is None else [data.pairs[i] for i in chosen],
            methods=[method],
        )
    except (AdaptextError, torch.OutOfMemoryError) as error:  # the report is still written, without highlights
        logger.warning("report: misclassified examples not explained: %s", error)
        return []
    return [
        {
            "row": data.rows[i] if data.rows else i + 1,
            "true label": str(data.labels[i]),
            "predicted": explanation.label,
            "score": explanation.score,
            "method": method,
            "tokens": explanation.tokens,
            "attributions": explanation.attributions,
            "pair": explanation.pair,
        }
        for i, explanation in zip(chosen, result.explanations[method], strict=True)
    ]
