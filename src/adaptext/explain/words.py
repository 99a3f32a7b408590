"""Words of a text, and which word each sub-word token belongs to.

A word is a run of letters, digits and combining marks (an apostrophe or hyphen between two such characters
stays inside it: "don't", "e-mail", as does a point or comma between digits: "4.5"), one punctuation mark or
symbol (a run of the same mark is one word: "!!!"), or one CJK character (Chinese and Japanese have no spaces;
BERT-style tokenizers read them a character at a time). Joining the words gives the text back without its
whitespace, so `" ".join(words)` is the text up to whitespace.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

Span = tuple[int, int]

_JOINERS = frozenset("'’-")
_NUMBER_JOINERS = frozenset(".,:")


def is_cjk(char: str) -> bool:
    """True for a CJK ideograph or a Japanese kana (the characters that stand alone as words)."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2FA1F
        or 0xF900 <= code <= 0xFAFF
        or 0x3040 <= code <= 0x30FF
    )


def _kind(char: str) -> str:
    if char.isspace():
        return "space"
    if is_cjk(char):
        return "cjk"
    category = unicodedata.category(char)
    if category[0] in "PSC" and char != "_":
        return "mark"
    return "word"  # letters, digits, combining marks, the underscore


def _joins(before: str, joiner: str, after: str) -> bool:
    # "don't", "e-mail", and numbers such as "4.5" or "1,000" stay one word.
    return joiner in _JOINERS or (joiner in _NUMBER_JOINERS and before.isdigit() and after.isdigit())


_CLITICS = ("s", "re", "ve", "ll", "d", "m", "t")


def _clitic_end(text: str, start: int) -> int | None:
    # An apostrophe that starts an English clitic ("'s", "'re", "'ll") begins a word, when a space precedes it.
    if text[start] not in "'’" or (start > 0 and not text[start - 1].isspace()):
        return None
    for clitic in _CLITICS:
        end = start + 1 + len(clitic)
        if text[start + 1 : end].lower() == clitic and (end == len(text) or _kind(text[end]) != "word"):
            return end
    return None


def word_spans(text: str) -> list[Span]:
    """The (start, end) character span of every word of `text`, in order."""
    spans: list[Span] = []
    i, n = 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        start = i
        i += 1
        if kind == "word":
            while i < n:
                if _kind(text[i]) == "word":
                    i += 1
                elif i + 1 < n and _kind(text[i + 1]) == "word" and _joins(text[i - 1], text[i], text[i + 1]):
                    i += 2
                else:
                    break
        elif kind == "mark":
            clitic = _clitic_end(text, start)  # "'s" in "it 's" (text split before a clitic, as SST-2 is)
            if clitic is not None:
                i = clitic
            while clitic is None and i < n and text[i] == text[start]:
                i += 1
        spans.append((start, i))
    return spans


def words_of(text: str, spans: Sequence[Span] | None = None) -> list[str]:
    """The words of `text` (from `spans` when given)."""
    return [text[s:e] for s, e in (spans if spans is not None else word_spans(text))]


def token_words(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[Span],
    text_length: int,
    sequence_ids: Sequence[int | None] | None = None,
) -> list[int]:
    """For each token, the index of the word it belongs to, or -1 (special tokens, padding, the second text of a
    pair). `offsets` are the tokenizer's character offsets into the text; a token belongs to the word holding its
    first character that is not whitespace."""
    owner = [-1] * text_length
    for index, (start, end) in enumerate(spans):
        owner[start:end] = [index] * (end - start)
    result = []
    for position, (start, end) in enumerate(offsets):
        in_text = sequence_ids is None or sequence_ids[position] == 0
        word = -1
        if in_text and end > start:
            for char in range(start, min(end, text_length)):
                if owner[char] >= 0:
                    word = owner[char]
                    break
        result.append(word)
    return result


def without_words(text: str, spans: Sequence[Span], drop: set[int]) -> str:
    """`text` with the words whose indices are in `drop` removed. Between two kept words goes one space if the
    text between them held whitespace or a removed word parted two non-CJK words, else nothing, so Chinese stays
    unspaced. (Words hold no whitespace, so the whitespace between two kept words is never a removed word's.)"""
    parts: list[str] = []
    previous_end: int | None = None
    removed_between = False
    for index, (start, end) in enumerate(spans):
        if index in drop:
            removed_between = previous_end is not None
            continue
        if previous_end is not None:
            spaced = any(c.isspace() for c in text[previous_end:start])
            # "good,bad" less "," is "good bad", not a new word "goodbad"; Chinese stays unspaced.
            glued = removed_between and not is_cjk(text[previous_end - 1]) and not is_cjk(text[start])
            if spaced or glued:
                parts.append(" ")
        parts.append(text[start:end])
        previous_end = end
        removed_between = False
    return "".join(parts)


def words_within(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> int:
    """How many of the words (`spans`) start before the end of the last token (`offsets` of the tokens kept after
    truncation): the words the model reads."""
    end = max((e for _, e in offsets), default=0)
    return sum(1 for start, _ in spans if start < end)
