"""What an explanation is: one text's word attributions, and the results of explaining many texts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Explanation:
    """The attributions of one text's words towards one label, by one method."""

    text: str
    label: str  # the explained label
    score: float  # its probability
    method: str
    tokens: list[str]  # the text's words; " ".join(tokens) is the text up to whitespace
    attributions: list[float]  # one per word; positive pushes towards `label`
    predicted: str = ""  # the model's label for the text
    true_label: str | None = None
    pair: str | None = None
    words_seen: int | None = None  # set when the text is longer than the model reads: words after these are unseen

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (None left out), as `explanations.jsonl` and `/explain` write them."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ExplainResult:
    """What `explain_texts` computed: explanations by method, their timing and what the report needs."""

    explanations: dict[str, list[Explanation]]
    seconds_per_text: dict[str, float]
    targets: list[int]
    spans: list[list[tuple[int, int]]]
    seen: list[int]  # per text, how many of its first words fit in the model's max_length (the rest are never read)
