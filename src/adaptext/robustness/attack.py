"""A word-substitution attack on a bounded budget: how few word swaps change a classifier's correct answer.

Substitutes come from the classifier's own input embeddings: for a word that is a whole entry of the tokenizer's
vocabulary, the nearest whole-word entries by cosine (alphabetic, not stop words, above `min_similarity`).
Input embeddings put related words together, but not only synonyms: an antonym ("good" / "bad") can be a near
neighbour, so a success is an upper bound on the model's real weakness; the report shows the changes to read.

The attack is greedy (as TextFooler): the words are ranked by how much deleting each lowers the model's margin for
the right answer, then each in turn is replaced by the candidate that lowers the margin most, until the prediction
changes, `max_words` words are changed or `max_queries` texts have been sent to the model.

>>> neighbours = WordNeighbours.of_predictor(predictor)  # doctest: +SKIP
>>> attack_text(predictor, neighbours, "a gripping film", gold, AttackSettings()).flipped  # doctest: +SKIP
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from adaptext.core.errors import AdaptextError
from adaptext.core.info import find_model_dir
from adaptext.explain.words import Span, word_spans
from adaptext.inference.predictor import Predictor


@dataclass(frozen=True)
class AttackSettings:
    """The attack's budget and its candidates.

    Attributes:
        max_words: Words that may be changed in one text (0: no attack).
        max_queries: Texts that may be sent to the model for one text, ranking and trying candidates together
            (the prediction on the original text is not counted).
        candidates: Substitutes tried per word, nearest first.
        min_similarity: Cosine similarity of input embeddings a substitute needs to the word it replaces.
        seed: Chooses which words are ranked when a text has more candidate words than half the query budget.
        embeddings: Where the substitutes come from: a pretrained model (`minilm`, a folder) or an adaptext run or
            model folder, whose input embeddings are read; None: the attacked model's own. One source for several
            models makes their success rates comparable, and lets an ONNX export be attacked.
    """

    max_words: int = 3
    max_queries: int = 100
    candidates: int = 8
    min_similarity: float = 0.4
    seed: int = 0
    embeddings: str | None = None


@dataclass
class AttackOutcome:
    """One attacked text: the text it ended as, whether the prediction changed, what was changed and at what cost.

    `probs_before` / `probs_after` are the label probabilities (num_labels,) on the original and the final text.
    """

    original: str
    adversarial: str
    flipped: bool
    words_changed: int
    queries: int
    probs_before: np.ndarray
    probs_after: np.ndarray
    changes: list[tuple[str, str]] = field(default_factory=list)


_PIECE_MARKERS = (("##", False), ("\u0120", True), ("\u2581", True))  # WordPiece, byte-level BPE, SentencePiece


class WordNeighbours:
    """Nearest whole-word vocabulary entries of a word, by cosine of the classifier's input embeddings.

    Args:
        vocab: The tokenizer's vocabulary (token -> id).
        embeddings: The input-embedding matrix (vocab_size, dim).
        special: Tokens that are never words ([CLS], <s>, ...).
        stop_words: Words that are neither attacked nor used as substitutes ("not", "the", ...).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        embeddings: np.ndarray,
        special: Sequence[str] = (),
        stop_words: frozenset[str] = frozenset(ENGLISH_STOP_WORDS),
    ) -> None:
        self.stop_words = stop_words
        # WordPiece marks a word's inner pieces ("##ing"); BPE and SentencePiece mark a word's first piece instead.
        marker, marks_start = next(
            ((m, start) for m, start in _PIECE_MARKERS if sum(t.startswith(m) for t in vocab) > len(vocab) // 20),
            ("", False),
        )
        words: dict[str, int] = {}
        skip = set(special)
        for token, index in sorted(vocab.items(), key=lambda item: item[1]):
            if token in skip or index >= len(embeddings):
                continue
            if marker and token.startswith(marker) != marks_start:
                continue
            word = token[len(marker) :] if marks_start else token
            if len(word) > 1 and word.isalpha() and word.lower() not in stop_words:
                words.setdefault(word, index)
        if not words:
            raise AdaptextError("the tokenizer's vocabulary holds no whole words to substitute")
        self.words = list(words)
        self._row = {word: i for i, word in enumerate(self.words)}
        matrix = np.asarray(embeddings, dtype=np.float32)[list(words.values())]
        self._unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        self._cache: dict[tuple[str, int, float], list[str]] = {}

    @classmethod
    def of_predictor(cls, predictor: Predictor) -> WordNeighbours:
        """The neighbours of a loaded PyTorch classifier's input embeddings. A model without them (an ONNX export,
        an ensemble) raises `AdaptextError`: attack the run folder the export came from instead."""
        get = getattr(predictor.model, "get_input_embeddings", None)
        layer = get() if callable(get) else None
        weight = getattr(layer, "weight", None)
        if weight is None or getattr(weight, "ndim", 0) != 2:
            raise AdaptextError(
                f"the word-substitution attack takes its substitutes from the model's input embeddings, and this "
                f"{type(predictor.model).__name__} has none (an ONNX export or an ensemble): attack the PyTorch run "
                "folder it came from, or turn the attack off with --attack-words 0"
            )
        special = list(predictor.tokenizer.all_special_tokens)
        return cls(predictor.tokenizer.get_vocab(), weight.detach().float().cpu().numpy(), special)

    @classmethod
    def of_model(cls, name: str) -> WordNeighbours:
        """The neighbours of another model's input embeddings: an adaptext run or model folder, or a pretrained
        model (the `minilm` alias, a folder, a hub id already in the local cache). Its vocabulary need not be the
        attacked model's: substitutes are words, which the attacked model tokenizes its own way."""
        from transformers import AutoModel

        from adaptext.modeling.hub import load_tokenizer, resolve_model_name

        folder = Path(name).expanduser()
        if folder.is_dir() and is_saved_classifier(folder):
            return cls.of_predictor(Predictor.from_dir(folder))
        source = resolve_model_name(name)
        try:
            model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise AdaptextError(f"attack embeddings {name!r}: cannot load the model: {error}") from None
        tokenizer = load_tokenizer(source)
        weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
        return cls(tokenizer.get_vocab(), weight, list(tokenizer.all_special_tokens))

    def _lookup(self, word: str) -> str | None:
        for form in (word, word.lower()):
            if form in self._row:
                return form
        return None

    def attackable(self, word: str) -> bool:
        """Whether `word` may be replaced: alphabetic, not a stop word, and a whole entry of the vocabulary."""
        return word.isalpha() and word.lower() not in self.stop_words and self._lookup(word) is not None

    def of(self, word: str, k: int, min_similarity: float) -> list[str]:
        """Up to `k` substitutes for `word`, nearest first, in its letter case ([] for a word not `attackable`)."""
        form = self._lookup(word) if self.attackable(word) else None
        if form is None:
            return []
        key = (form, k, min_similarity)
        if key not in self._cache:
            similarity = self._unit @ self._unit[self._row[form]]  # (words,)
            order = np.argsort(-similarity, kind="stable")
            found: list[str] = []
            seen = {form.lower()}  # a cased vocabulary holds "Great" and "great": one candidate
            for i in order:
                if similarity[i] < min_similarity or len(found) == k:
                    break
                if self.words[i].lower() not in seen:
                    seen.add(self.words[i].lower())
                    found.append(self.words[i])
            self._cache[key] = found
        return [_in_case(candidate, word) for candidate in self._cache[key]]


def is_saved_classifier(folder: Path) -> bool:
    """Whether `folder` is a run, model or adapter folder `Predictor.from_dir` loads (not a bare pretrained model)."""
    try:
        model_dir = find_model_dir(folder)
    except AdaptextError:
        return False
    return (model_dir / "adaptext.json").is_file()


def _in_case(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower() if like.islower() else word


def margin(predictor: Predictor, probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """How far each row of `probs` (n, num_labels) is from giving a wrong answer for the gold labels `gold`
    (num_labels,) booleans: below 0 it is wrong. Single-label: the gold label's probability less the best other
    one. Multi-label: the smallest distance to the threshold on the right side of it, over all labels."""
    if predictor.multi_label:
        signed = np.where(gold, probs - predictor.threshold, predictor.threshold - probs)
        return np.asarray(signed.min(axis=1))
    others = np.where(gold, -np.inf, probs).max(axis=1)
    return np.asarray(probs[:, gold].max(axis=1) - others)


def _compose(text: str, spans: Sequence[Span], replaced: dict[int, str]) -> str:
    parts, position = [], 0
    for index in sorted(replaced):
        start, end = spans[index]
        parts += [text[position:start], replaced[index]]
        position = end
    return "".join(parts) + text[position:]


def attack_text(
    predictor: Predictor,
    neighbours: WordNeighbours,
    text: str,
    gold: np.ndarray,
    settings: AttackSettings,
    *,
    pair: str | None = None,
    probs: np.ndarray | None = None,
) -> AttackOutcome:
    """Attack one text the model answers correctly; `gold` are its labels as booleans (num_labels,), `probs` the
    model's probabilities on it if already known. Changes at most `settings.max_words` words with at most
    `settings.max_queries` texts sent to the model."""
    queries = 0

    def predict(texts: list[str]) -> np.ndarray:
        nonlocal queries
        queries += len(texts)
        return predictor.predict_proba(texts, None if pair is None else [pair] * len(texts))

    before = probs if probs is not None else predictor.predict_proba([text], None if pair is None else [pair])[0]
    spans = word_spans(text)
    options = {
        i: found
        for i, (s, e) in enumerate(spans)
        if (found := neighbours.of(text[s:e], settings.candidates, settings.min_similarity))
    }
    eligible = list(options)
    rank_budget = settings.max_queries // 2
    if len(eligible) > rank_budget:  # rank a seeded sample: the rest of the budget is for trying substitutes
        eligible = sorted(random.Random(f"{settings.seed}\0{text}").sample(eligible, rank_budget))
    current_margin = float(margin(predictor, before[None], gold)[0])
    if eligible and settings.max_words > 0:
        deleted = predict([text[: spans[i][0]] + text[spans[i][1] :] for i in eligible])
        drop = current_margin - margin(predictor, deleted, gold)
        eligible = [eligible[j] for j in np.argsort(-drop, kind="stable")]
    replaced: dict[int, str] = {}
    after = before
    for index in eligible:
        left = settings.max_queries - queries
        if len(replaced) == settings.max_words or left <= 0:
            break
        tried = options[index][:left]
        probs_tried = predict([_compose(text, spans, {**replaced, index: word}) for word in tried])
        margins = margin(predictor, probs_tried, gold)
        best = int(np.argmin(margins))
        if margins[best] < current_margin:
            replaced[index], current_margin, after = tried[best], float(margins[best]), probs_tried[best]
            if _wrong(predictor, after, gold):
                break
    return AttackOutcome(
        original=text,
        adversarial=_compose(text, spans, replaced),
        flipped=_wrong(predictor, after, gold),
        words_changed=len(replaced),
        queries=queries,
        probs_before=before,
        probs_after=after,
        changes=[(text[spans[i][0] : spans[i][1]], word) for i, word in sorted(replaced.items())],
    )


def _wrong(predictor: Predictor, probs: np.ndarray, gold: np.ndarray) -> bool:
    return bool((predictor.task.decide(probs[None], predictor.threshold)[0] != gold).any())
