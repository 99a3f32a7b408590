"""The router's config file (`route.yaml`): which model, which answers, when to hand over, where the FAQ is.

Paths in the file are relative to the file's own folder, so a config and its answers travel together.

>>> config = load_route_config("route.yaml")  # doctest: +SKIP
>>> config.handoff.min_confidence  # doctest: +SKIP
0.5
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptext.core.config import expand_user, load_yaml_model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HandoffRule(_Section):
    """When a text is not answered with its intent's answer, but goes to the FAQ or a person."""

    min_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Answer only when the model's calibrated probability of its top intent is at least this; "
        "below it the text goes to the FAQ, else to a person.",
    )
    use_detector: bool = Field(
        True,
        description="When the model has an out-of-scope detector (`ood.method` at training), a text it flags is "
        "never answered with an intent. No effect for a model without one.",
    )
    message: str = Field("", description="The answer text of a handoff row (e.g. 'Connecting you to an agent').")


class FaqSection(_Section):
    """Questions and answers searched by embedding similarity for the texts the model does not answer."""

    file: Path = Field(description="CSV/TSV/JSONL/Parquet file of questions and their answers.")
    question_column: str = Field("question", description="Column of the FAQ's questions.")
    answer_column: str = Field("answer", description="Column of the FAQ's answers.")
    min_similarity: float = Field(
        0.6,
        ge=-1,
        le=1,
        description="Cosine similarity between a text and its nearest FAQ question needed to answer from the FAQ.",
    )
    encoder: str = Field(
        "minilm",
        description="Sentence encoder for the search: a model name or folder, mean-pooled (default: the bundled "
        "all-MiniLM-L6-v2).",
    )
    max_length: int = Field(128, ge=8, description="Tokens per text for the encoder.")


class EvaluateSection(_Section):
    """How `adaptext route --evaluate` reads a labelled file and what it reports."""

    label_column: str = Field("label", description="Column of the true intent.")
    ood_label: str | None = Field(
        None,
        description="The label that marks out-of-scope texts in a labelled file (e.g. `oos`); any other label the "
        "model does not know is an error.",
    )
    max_wrong_rate: float = Field(
        0.02,
        gt=0,
        lt=1,
        description="The largest share of wrong answers acceptable: the report names the lowest min_confidence "
        "that keeps to it.",
    )
    out_of_scope_share: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="The share of out-of-scope texts expected in real traffic. When set, every rate over all texts "
        "(automation, wrong answers, FAQ, handoff, and so the suggested threshold) counts the file's out-of-scope "
        "rows as this share and its in-scope rows as the rest, instead of the file's own mix. A validation file "
        "with few out-of-scope texts otherwise suggests a threshold that answers too many of them. Needs "
        "`ood_label` and both kinds of rows in the file.",
    )

    wrong_rate_confidence: float | None = Field(
        None,
        gt=0.5,
        lt=1,
        description="When set (e.g. 0.95), the suggested threshold is the lowest whose wrong-answer rate stays within "
        "max_wrong_rate with this confidence, not just on this file: a one-sided Clopper-Pearson upper bound for the "
        "in-scope rows and one for the out-of-scope rows (half the risk each), mixed by the out-of-scope share. A "
        "file with few rows, or few out-of-scope rows, then suggests a safer threshold.",
    )

    @model_validator(mode="after")
    def _share_needs_label(self) -> EvaluateSection:
        if self.out_of_scope_share is not None and self.ood_label is None:
            raise ValueError("evaluate.out_of_scope_share needs evaluate.ood_label, the label of out-of-scope rows")
        return self


class RouteConfig(_Section):
    """An intent router: the model run, the answer of each intent, the handoff rule and an optional FAQ."""

    model: Path = Field(description="Run, model or export folder of the intent classifier.")
    answers: Path = Field(description="CSV/TSV/JSONL/Parquet file with an answer for each intent.")
    intent_column: str = Field("intent", description="Column of the answers file naming the intent.")
    answer_column: str = Field("answer", description="Column of the answers file holding the answer text.")
    text_column: str | None = Field(
        None, description="Column of the texts to route (default: the model's saved text column)."
    )
    handoff: HandoffRule = Field(default_factory=HandoffRule)
    faq: FaqSection | None = None
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)


def load_route_config(path: str | Path) -> RouteConfig:
    """Read and validate a router config; its relative paths are resolved against the file's folder."""
    path = expand_user(Path(path))
    config = load_yaml_model(path, RouteConfig, what="router config")
    here = path.parent

    def resolve(value: Path) -> Path:
        value = expand_user(value)
        return value if value.is_absolute() else here / value

    config.model = resolve(config.model)
    config.answers = resolve(config.answers)
    if config.faq is not None:
        config.faq.file = resolve(config.faq.file)
    return config
