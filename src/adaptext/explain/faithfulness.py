"""How faithful attributions are to the model: comprehensiveness and sufficiency (DeYoung et al., 2020, ERASER).

For a text x, its explained label y and the top k% of its words by attribution (the rationale r_k):

- comprehensiveness = p(y | x) - p(y | x without r_k): removing the words that matter should lower the
  probability a lot (higher is better);
- sufficiency = p(y | x) - p(y | r_k only): the words that matter alone should keep it (lower is better).

Both are averaged over k in `BINS` (the area over the perturbation curve, as in the paper) and over texts, and
compared with the same numbers for random attributions (the baseline a method must beat). Agreement between two
methods is the mean Spearman correlation of their word attributions, text by text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adaptext.explain.words import Span, without_words
from adaptext.inference.predictor import Predictor

BINS = (0.01, 0.05, 0.1, 0.2, 0.5)


@dataclass
class Faithfulness:
    """Mean comprehensiveness and sufficiency of one set of attributions (over `BINS` and texts)."""

    comprehensiveness: float
    sufficiency: float


def top_words(attributions: np.ndarray, share: float) -> set[int]:
    """The indices of the ceil(share * words) words with the highest attribution (ties by position)."""
    count = max(1, math.ceil(share * len(attributions)))
    order = np.argsort(-np.asarray(attributions, dtype=np.float64), kind="stable")
    return {int(i) for i in order[:count]}


def faithfulness(
    predictor: Predictor,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    targets: Sequence[int],
    attributions: Sequence[np.ndarray],
    pairs: Sequence[str] | None = None,
    bins: Sequence[float] = BINS,
    progress: bool = False,
) -> Faithfulness:
    """Comprehensiveness and sufficiency of `attributions` (one array per text, one value per word)."""
    variants: list[str] = []
    variant_pairs: list[str] = []
    for i, (text, words, values) in enumerate(zip(texts, spans, attributions, strict=True)):
        variants.append(text)
        for share in bins:
            rationale = top_words(values, share) if len(words) else set()
            rest = set(range(len(words))) - rationale
            variants += [without_words(text, words, rationale), without_words(text, words, rest)]
        if pairs is not None:
            variant_pairs += [pairs[i]] * (1 + 2 * len(bins))
    probs = predictor.predict_proba(variants, variant_pairs if pairs is not None else None, progress=progress)
    per_text = 1 + 2 * len(bins)
    comprehensiveness, sufficiency = [], []
    for i, target in enumerate(targets):
        block = probs[i * per_text : (i + 1) * per_text, target]
        full, removed, kept = block[0], block[1::2], block[2::2]
        comprehensiveness.append(float(np.mean(full - removed)))
        sufficiency.append(float(np.mean(full - kept)))
    return Faithfulness(
        comprehensiveness=float(np.mean(comprehensiveness)) if comprehensiveness else float("nan"),
        sufficiency=float(np.mean(sufficiency)) if sufficiency else float("nan"),
    )


def random_attributions(spans: Sequence[Sequence[Span]], seed: int) -> list[np.ndarray]:
    """Attributions drawn at random (the baseline every method is compared with)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(len(words)).astype(np.float32) for words in spans]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman correlation of two attribution vectors; None when either is constant or shorter than 2."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import rankdata

    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def agreement(by_method: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float | None]:
    """Mean Spearman correlation between every two methods' attributions, keyed "a vs b"."""
    names = list(by_method)
    result: dict[str, float | None] = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            values = [rank_correlation(a, b) for a, b in zip(by_method[first], by_method[second], strict=True)]
            kept = [v for v in values if v is not None]
            result[f"{first} vs {second}"] = float(np.mean(kept)) if kept else None
    return result
