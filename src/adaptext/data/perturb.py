"""Small, seeded changes to a text: CheckList-style perturbations that keep its label, and augmentation primitives.

A perturbation is a function `(text, rng) -> str`: given the same text and a `random.Random` in the same state it
returns the same result, offline. One that does not apply to a text (no number in it, a Chinese text for English
contractions, no name from the built-in lists) returns the text unchanged, so a caller can tell which texts it
changed by comparing strings. The built-ins are registered by name in `PERTURBATIONS`; a new one is a function
decorated with `register_perturbation`.

`perturb_texts` seeds one generator per text from the seed, the perturbation's name and the text itself, so a text
is changed the same way whatever else is in the list.

>>> import random
>>> contractions("it is not what I expected", random.Random(0))
"it's not what I expected"
>>> perturb_texts(["I'll pay 20 dollars"], "numbers", seed=0)
["I'll pay 24 dollars"]
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from adaptext.core.registry import Registry


class PerturbFunction(Protocol):
    def __call__(self, text: str, rng: random.Random, /) -> str: ...


@dataclass(frozen=True)
class Perturbation:
    """A named perturbation: `apply(text, rng)`, whether it keeps the label, and one line saying what it does."""

    name: str
    apply: PerturbFunction
    label_preserving: bool
    description: str

    def __call__(self, text: str, rng: random.Random) -> str:
        return self.apply(text, rng)


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")

# The CheckList-style set a robustness report applies by default: each should leave the label as it was.
DEFAULT_PERTURBATIONS = ("typos", "case", "punctuation", "whitespace", "contractions", "names", "numbers")

F = Callable[[str, random.Random], str]


def register_perturbation(
    name: str, *, label_preserving: bool = True, description: str | None = None
) -> Callable[[F], F]:
    """Decorator: register a `(text, rng) -> str` function in `PERTURBATIONS` as `name`.

    `description` defaults to the first paragraph of the function's docstring. The function is returned unchanged.
    """

    def add(function: F) -> F:
        doc = " ".join((function.__doc__ or name).strip().split("\n\n")[0].split())
        PERTURBATIONS.add(name, Perturbation(name, function, label_preserving, description or doc))
        return function

    return add


def perturb_texts(texts: Iterable[str], perturbation: str | Perturbation, seed: int = 0) -> list[str]:
    """Every text of `texts` through one perturbation (a registered name or a `Perturbation`), each with a generator
    seeded by `seed`, the perturbation's name and the text, so the result of a text does not depend on the others."""
    chosen = PERTURBATIONS.get(perturbation) if isinstance(perturbation, str) else perturbation
    return [chosen(text, random.Random(f"{seed}\0{chosen.name}\0{text}")) for text in texts]


# --- helpers ----------------------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_APOSTROPHES = "'\u2019"


def _has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def _match_case(word: str, like: str) -> str:
    """`word` in the letter case of `like`: all upper, capitalised, or as given (lower)."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _units(text: str) -> list[tuple[int, int]]:
    """Spans of the words of `text` for word-level primitives: whitespace-separated tokens, or the characters of a
    text without spaces that holds CJK (Chinese and Japanese are written without spaces)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if len(spans) == 1 and _has_cjk(text):
        return [(i, i + 1) for i, char in enumerate(text) if not char.isspace()]
    return spans


def _without(text: str, spans: list[tuple[int, int]], drop: set[int]) -> str:
    """`text` without the spans at `drop`, each with the whitespace after it (before it, for the last word)."""
    parts, position = [], 0
    for index, (start, end) in enumerate(spans):
        if index not in drop:
            continue
        if end < len(text) and text[end].isspace():
            while end < len(text) and text[end].isspace():
                end += 1
        else:
            while start > position and text[start - 1].isspace():
                start -= 1
        parts.append(text[position:start])
        position = end
    parts.append(text[position:])
    return "".join(parts)


# --- label-preserving perturbations -----------------------------------------------------------------------------

_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (rows are staggered: a key touches two keys above and below)."""
    where = {char: (r, c) for r, row in enumerate(_KEYBOARD) for c, char in enumerate(row)}
    near: dict[str, str] = {}
    for char, (r, c) in where.items():
        spots = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
        near[char] = "".join(
            _KEYBOARD[rr][cc] for rr, cc in spots if 0 <= rr < len(_KEYBOARD) and 0 <= cc < len(_KEYBOARD[rr])
        )
    return near


_NEAR_KEYS = _keyboard_neighbours()


@register_perturbation("typos")
def typos(text: str, rng: random.Random, *, rate: float = 0.05) -> str:
    """Typing slips in Latin-letter words of 3+ letters: a neighbouring key, a dropped or a doubled letter.

    About `rate` of the eligible letters are hit, at least one. Texts without such words are returned unchanged.
    """
    eligible = [i for m in re.finditer(r"[A-Za-z]{3,}", text) for i in range(m.start(), m.end())]
    if not eligible:
        return text
    chosen = sorted(rng.sample(eligible, max(1, round(rate * len(eligible)))), reverse=True)
    chars = list(text)
    for i in chosen:  # right to left, so the earlier positions stay where they were
        kind = rng.choice(("key", "drop", "double"))
        if kind == "key":
            chars[i] = _match_case(rng.choice(_NEAR_KEYS[chars[i].lower()]), chars[i])
        elif kind == "drop":
            del chars[i]
        else:
            chars.insert(i, chars[i])
    return "".join(chars)


def _title(text: str) -> str:
    # str.title() would write "Don'T"; only each whitespace-separated word's first letter goes up, and a clitic
    # split off as its own word ("does n't", "it 's") stays as it is.
    def word(m: re.Match[str]) -> str:
        w = m[0].lower()
        return w if _PTB_CLITIC.fullmatch(" " + w) else w[:1].upper() + w[1:]

    return re.sub(r"\S+", word, text)


@register_perturbation("case")
def case(text: str, rng: random.Random) -> str:
    """The whole text in lower case, upper case or title case (one of those that changes it).

    Texts without cased letters (Chinese, digits only) are returned unchanged.
    """
    options = [changed for changed in dict.fromkeys((text.lower(), text.upper(), _title(text))) if changed != text]
    return rng.choice(options) if options else text


_FINAL = ".!?\u2026\u3002\uff01\uff1f"
_TRAILING_PUNCTUATION = re.compile(rf"[\s{re.escape(_FINAL)}]*[{re.escape(_FINAL)}][\s{re.escape(_FINAL)}]*$")


@register_perturbation("punctuation")
def punctuation(text: str, rng: random.Random) -> str:
    """Final punctuation removed when the text has some ("great film !" -> "great film"), else a full stop added
    ("。" after Chinese). Texts that are nothing but punctuation are returned unchanged."""
    del rng  # no choice to make: the change follows from the text
    stripped = _TRAILING_PUNCTUATION.sub("", text)
    if stripped != text:
        return stripped if stripped.strip() else text
    body = text.rstrip()
    if not body:
        return text
    return body + ("\u3002" if _has_cjk(body[-1]) else ".") + text[len(body) :]


@register_perturbation("whitespace")
def whitespace(text: str, rng: random.Random) -> str:
    """Layout only: some gaps between words widened to several spaces, a tab or a line break, and a space added at
    the start or the end. A tokenizer that ignores whitespace sees the same text."""
    if not text.strip():
        return text
    gaps = [m.span() for m in re.finditer(r"(?<=\S)\s+(?=\S)", text)]
    chosen = set(rng.sample(range(len(gaps)), max(1, round(0.2 * len(gaps))))) if gaps else set()
    parts, position = [], 0
    for index, (start, end) in enumerate(gaps):
        if index in chosen:
            parts += [text[position:start], rng.choice(("  ", "   ", "\t", " \n"))]
            position = end
    parts.append(text[position:])
    changed = "".join(parts)
    return " " + changed if rng.random() < 0.5 else changed + " "


# "do not" <-> "don't" and the like. The contracted forms a pronoun takes ("it's", "I'm") are listed with it, so
# that a possessive ("John's") is never read as "John is".
_NOT = "do does did is are was were have has had could would should must need might"  # + n't
_CONTRACTIONS: dict[str, str] = {
    **{f"{verb} not": f"{verb}n't" for verb in _NOT.split()},
    "will not": "won't",
    "cannot": "can't",
    "shall not": "shan't",
    "let us": "let's",
    "i am": "i'm",
    **{f"{p} is": f"{p}'s" for p in ("it", "that", "there", "what", "he", "she", "here", "who", "where", "how")},
    **{f"{p} are": f"{p}'re" for p in ("you", "we", "they")},
    **{f"{p} have": f"{p}'ve" for p in ("i", "you", "we", "they")},
    **{f"{p} will": f"{p}'ll" for p in ("i", "you", "he", "she", "it", "we", "they")},
    **{f"{p} would": f"{p}'d" for p in ("i", "you", "he", "she", "we", "they")},
}
_EXPANSIONS = {short: long for long, short in _CONTRACTIONS.items()}
# Penn Treebank tokenisation (SST-2, much of GLUE) writes "does n't", "ca n't", "it 's": a clitic is its own word.
_PTB_CLITIC = re.compile(r"\s(n't|'s|'re|'ve|'ll|'m|'d)(?=\s|$)", re.IGNORECASE)


def _ptb(short: str) -> str:
    """The Penn Treebank spelling of a contraction: "don't" -> "do n't", "can't" -> "ca n't", "it's" -> "it 's"."""
    cut = short.index("'") - (1 if short.endswith("n't") else 0)
    return short[:cut] + " " + short[cut:]


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    def one(phrase: str) -> str:
        return r"\s+".join(re.escape(word).replace("'", f"[{_APOSTROPHES}]") for word in phrase.split())

    ordered = sorted(phrases, key=len, reverse=True)  # "does not" before "do not" can match inside it
    return re.compile(r"(?<![\w'\u2019])(" + "|".join(one(p) for p in ordered) + r")(?![\w'\u2019])", re.IGNORECASE)


_LONG = _phrase_pattern(_CONTRACTIONS)
_SHORT = _phrase_pattern(_EXPANSIONS)
_SHORT_PTB = _phrase_pattern(_ptb(short) for short in _EXPANSIONS)
_FROM_PTB = {_ptb(short): long for short, long in _EXPANSIONS.items()}


def _like(replacement: str, found: str) -> str:
    """`replacement` in the case of `found`, with its apostrophe (straight or typographic)."""
    if "\u2019" in found:
        replacement = replacement.replace("'", "\u2019")
    if found.isupper() and len(found.replace(" ", "")) > 1:
        return replacement.upper()
    return _match_case(replacement, found)


@register_perturbation("contractions")
def contractions(text: str, rng: random.Random) -> str:
    """English contractions expanded ("don't" -> "do not") or made ("it is" -> "it's"); the direction is chosen at
    random among those the text allows, and every place of it is changed. Penn Treebank spacing ("does n't") is
    kept as the text writes it. Texts with neither are returned unchanged."""
    ptb = _PTB_CLITIC.search(text) is not None
    short_pattern = _SHORT_PTB if ptb else _SHORT

    def contract(m: re.Match[str]) -> str:
        short = _CONTRACTIONS[" ".join(m[0].lower().split())]
        return _like(_ptb(short) if ptb else short, m[0])

    def expand(m: re.Match[str]) -> str:
        found = " ".join(m[0].lower().replace("\u2019", "'").split())
        return _like(_FROM_PTB[found] if ptb else _EXPANSIONS[found], m[0])

    directions = [(pattern, change) for pattern, change in ((_LONG, contract), (short_pattern, expand))]
    directions = [(pattern, change) for pattern, change in directions if pattern.search(text)]
    if not directions:
        return text
    pattern, change = rng.choice(directions)
    return pattern.sub(change, text)


def _spaced(names: str) -> tuple[str, ...]:
    return tuple(names.split())


# Common first names and surnames that are not also everyday words ("Will", "Grace", "Baker" are left out), so a
# lower-cased text's "will" is never taken for a name. Grouped so that a name is swapped for one of the same kind.
_NAMES: dict[str, tuple[str, ...]] = {
    "male": _spaced(
        "James John Robert Michael David Richard Joseph Thomas Charles Daniel Matthew Anthony Steven Paul Andrew "
        "Joshua Kevin Brian George Edward Ronald Timothy Jason Jeffrey Ryan Jacob Nicholas Eric Jonathan Stephen "
        "Larry Justin Brandon Benjamin Samuel Gregory Alexander Patrick Raymond Dennis Tyler Aaron Henry Nathan "
        "Peter Kyle Walter"
    ),
    "female": _spaced(
        "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Betty Margaret Sandra "
        "Ashley Kimberly Emily Donna Michelle Amanda Melissa Deborah Stephanie Rebecca Sharon Laura Cynthia "
        "Kathleen Amy Angela Anna Brenda Pamela Nicole Emma Helen Samantha Katherine Christine Rachel Catherine "
        "Maria Diane Julie Olivia Victoria"
    ),
    "surname": _spaced(
        "Smith Johnson Williams Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
        "Anderson Jackson Thompson Harris Robinson Sanchez Nguyen Adams Nelson Carter Mitchell Perez Roberts "
        "Phillips Campbell Evans Edwards Collins Stewart Morris Murphy Rogers Peterson Richardson Watson Bennett "
        "Hughes Foster Sullivan Russell Ortiz Jenkins Gutierrez Henderson Coleman Simmons Patterson"
    ),
}
_NAME_KIND = {name.lower(): kind for kind, names in _NAMES.items() for name in names}


@register_perturbation("names")
def names(text: str, rng: random.Random) -> str:
    """Person names from built-in lists of common English first names and surnames swapped for other names of the
    same kind (a woman's first name for a woman's first name), the same name the same way throughout the text.

    A name counts when capitalised, or in any case in a text without capital letters (lower-cased corpora such as
    SST-2). Texts without a listed name are returned unchanged.
    """
    lowered = not any(char.isupper() for char in text)
    swaps: dict[str, str] = {}

    def swap(m: re.Match[str]) -> str:
        word = m[0]
        kind = _NAME_KIND.get(word.lower())
        if kind is None or not (lowered or word[0].isupper()):
            return word
        if word.lower() not in swaps:
            swaps[word.lower()] = rng.choice([n for n in _NAMES[kind] if n.lower() != word.lower()])
        new = swaps[word.lower()]
        return new.lower() if lowered else _match_case(new, word)

    return re.sub(r"(?<![^\W\d_])[^\W\d_]+(?![^\W\d_])", swap, text)


_NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")  # "one" is also a pronoun
_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+(?:\.\d+)?(?![\w])")
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)


def _other_number(written: str, rng: random.Random) -> str:
    """Another number written like `written`: within about ±20% (a year moved by up to ten years), the same number
    of decimals, thousands separators and leading zeros."""
    plain = written.replace(",", "")
    decimals = len(plain.partition(".")[2])
    units = round(float(plain) * 10**decimals)  # in steps of the last written digit
    if decimals == 0 and "," not in written and len(plain) == 4 and 1800 <= units <= 2100:
        new = units + rng.choice([d for d in range(-10, 11) if d])
    else:
        low, high = int(units * 0.8), max(int(units * 1.2) + 1, units + 2)
        new = rng.choice([v for v in range(max(0, low), high + 1) if v != units])
    text = f"{new / 10**decimals:,.{decimals}f}" if "," in written else f"{new / 10**decimals:.{decimals}f}"
    return text.zfill(len(written)) if written.startswith("0") and decimals == 0 else text


@register_perturbation("numbers")
def numbers(text: str, rng: random.Random) -> str:
    """Every number changed: digits to a nearby value written the same way ("20" -> "23", "4.5" -> "4.1",
    "1,000" -> "1,130"), and the English number words two to ten one up or down ("three" -> "four"). Texts
    without numbers are returned unchanged."""
    changed = _NUMBER.sub(lambda m: _other_number(m[0], rng), text)
    return _NUMBER_WORD.sub(lambda m: _match_case(_next_number_word(m[0].lower(), rng), m[0]), changed)


def _next_number_word(word: str, rng: random.Random) -> str:
    """One more or one less ("three" -> "two" or "four"): near, as the digits are."""
    i = _NUMBER_WORDS.index(word)
    return _NUMBER_WORDS[rng.choice([j for j in (i - 1, i + 1) if 0 <= j < len(_NUMBER_WORDS)])]


# --- augmentation primitives ------------------------------------------------------------------------------------


@register_perturbation("char_noise")
def char_noise(text: str, rng: random.Random, *, rate: float = 0.05) -> str:
    """Character noise in any script: about `rate` (5%) of the letters and digits deleted, repeated, replaced by another
    character of the same text, or swapped with the next one (at least one). Texts without letters or digits are
    returned unchanged."""
    eligible = [i for i, char in enumerate(text) if char.isalnum()]
    if not eligible:
        return text
    alphabet = sorted({text[i] for i in eligible})
    chars = list(text)
    for i in sorted(rng.sample(eligible, max(1, round(rate * len(eligible)))), reverse=True):
        kind = rng.choice(("delete", "repeat", "replace", "swap"))
        if kind == "delete":
            del chars[i]
        elif kind == "repeat":
            chars.insert(i, chars[i])
        elif kind == "replace" and len(alphabet) > 1:
            chars[i] = rng.choice([c for c in alphabet if c != chars[i]])
        elif i + 1 < len(chars) and chars[i + 1] != chars[i]:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars.insert(i, chars[i])  # nothing to replace or swap with: repeat instead
    return "".join(chars)


@register_perturbation("word_swap", label_preserving=False)
def word_swap(text: str, rng: random.Random, *, rate: float = 0.1) -> str:
    """Neighbouring words swapped: about `rate` (10%) of the words (at least one pair), the whitespace left in place;
    a Chinese or Japanese text without spaces swaps characters. Texts of one word are returned unchanged."""
    spans = _units(text)
    if len(spans) < 2:
        return text
    words = [text[s:e] for s, e in spans]
    for _ in range(max(1, round(rate * len(words)))):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    parts, position = [], 0
    for (start, end), word in zip(spans, words, strict=True):
        parts += [text[position:start], word]
        position = end
    return "".join(parts) + text[position:]


@register_perturbation("word_delete", label_preserving=False)
def word_delete(text: str, rng: random.Random, *, rate: float = 0.1) -> str:
    """Words deleted, each with probability `rate` (10%; at least one, never all); a Chinese or Japanese text without
    spaces loses characters. Texts of one word are returned unchanged."""
    spans = _units(text)
    if len(spans) < 2:
        return text
    drop = {i for i in range(len(spans)) if rng.random() < rate}
    if not drop:
        drop = {rng.randrange(len(spans))}
    if len(drop) == len(spans):
        drop.discard(rng.choice(sorted(drop)))
    return _without(text, spans, drop)
