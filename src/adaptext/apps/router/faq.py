"""The FAQ a router falls back on: questions embedded once, searched by cosine similarity."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adaptext.apps.router.config import FaqSection
from adaptext.audit.features import Encoder, embed_data, load_encoder
from adaptext.core.errors import DataError
from adaptext.data.examples import TextData
from adaptext.data.io import read_table, require_columns, text_values

logger = logging.getLogger(__name__)


@dataclass
class FaqMatch:
    """The FAQ entry nearest to each text: its index, question, answer and cosine similarity."""

    index: np.ndarray  # (n,) int
    similarity: np.ndarray  # (n,) float32


class FaqIndex:
    """FAQ questions and answers with the questions' L2-normalised embeddings.

    >>> faq = FaqIndex.load(FaqSection(file="faq.csv"))  # doctest: +SKIP
    >>> match = faq.search(["can I bring my dog?"])  # doctest: +SKIP
    >>> faq.answers[match.index[0]], match.similarity[0]  # doctest: +SKIP
    ('Pets are welcome in every room.', 0.71)
    """

    def __init__(
        self, questions: list[str], answers: list[str], encoder: Encoder, *, source: str, min_similarity: float
    ) -> None:
        self.questions = questions
        self.answers = answers
        self.encoder = encoder
        self.source = source
        self.min_similarity = min_similarity  # a text is answered from the FAQ at this cosine similarity or more
        self.vectors = self.embed(questions, progress=False)  # (n_questions, dim)

    @classmethod
    def load(cls, section: FaqSection, *, device: str | None = None) -> FaqIndex:
        """Read the FAQ file (each question and answer non-empty) and embed its questions with `section.encoder`."""
        frame = read_table(section.file)
        require_columns(section.file, frame, [section.question_column, section.answer_column])
        questions = text_values(section.file, frame, section.question_column)
        answers = text_values(section.file, frame, section.answer_column)
        seen: dict[str, int] = {}
        for row, question in enumerate(questions, start=1):
            key = " ".join(question.lower().split())
            if key in seen and answers[seen[key] - 1] != answers[row - 1]:
                raise DataError(
                    f"{section.file}: row {row}: question {question!r} is also row {seen[key]} with another "
                    "answer; keep one"
                )
            seen.setdefault(key, row)
        encoder = load_encoder(None, section.encoder, max_length=section.max_length, device=device)
        logger.info("FAQ: %d questions from %s, encoder %s", len(questions), section.file, section.encoder)
        return cls(questions, answers, encoder, source=str(section.file), min_similarity=section.min_similarity)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """L2-normalised embeddings (n, dim) of `texts`."""
        return embed_data(self.encoder, TextData(texts=list(texts), source="texts"), progress=progress)

    def search(self, texts: Sequence[str], *, progress: bool = False) -> FaqMatch:
        """The nearest FAQ question of each text and its cosine similarity."""
        if not texts:
            return FaqMatch(index=np.zeros(0, dtype=np.int64), similarity=np.zeros(0, dtype=np.float32))
        similarity = self.embed(texts, progress=progress) @ self.vectors.T  # (n, n_questions)
        best = similarity.argmax(axis=1)
        return FaqMatch(index=best, similarity=similarity[np.arange(len(best)), best])
