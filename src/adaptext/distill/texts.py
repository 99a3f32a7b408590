"""The texts a student learns from: the teacher's training texts, copies of them changed a little, unlabelled text."""

from __future__ import annotations

import random
from collections.abc import Iterable


def augment(texts: Iterable[str], copies: int, seed: int, p_drop: float = 0.1, p_swap: float = 0.1) -> list[str]:
    """`copies` changed copies of each text (Tang et al., 2019): each word dropped with probability `p_drop`, each
    pair of neighbours swapped with probability `p_swap`, and now and then only a random stretch of the words kept.

    The teacher labels every copy, so the student sees how the teacher's confidence moves as words come and go,
    which the original texts alone do not show a bag of words.
    """
    rng = random.Random(seed)
    made: list[str] = []
    for text in texts:
        words = text.split()
        if len(words) < 2:
            continue
        for _ in range(copies):
            kept = [w for w in words if rng.random() >= p_drop] or [rng.choice(words)]
            for i in range(len(kept) - 1):
                if rng.random() < p_swap:
                    kept[i], kept[i + 1] = kept[i + 1], kept[i]
            if len(kept) > 3 and rng.random() < 0.25:
                # a stretch of 1 to 5 words: how the teacher reads a phrase out of its sentence
                length = rng.randint(1, min(5, len(kept) - 1))
                start = rng.randrange(len(kept) - length + 1)
                kept = kept[start : start + length]
            made.append(" ".join(kept))
    return made


def unique(texts: Iterable[str]) -> list[str]:
    """`texts` without repeats, in first-seen order: a repeated text would only weigh more in the loss."""
    return list(dict.fromkeys(texts))
