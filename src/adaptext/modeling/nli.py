"""Zero-shot classification by natural-language inference: entailment of one hypothesis per label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from adaptext.core.config import Config
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo
from adaptext.core.run import replace_dir
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.batching import SpecialTokens
from adaptext.modeling.build import label_config

if TYPE_CHECKING:
    pass


class NliClassifier(nn.Module):
    """An entailment model asked, for every label, whether the text entails the label's hypothesis."""

    def __init__(
        self,
        nli: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        hypotheses: list[str],
        labels: list[str],
        temperature: float = 1.0,
        max_length: int = 512,
    ) -> None:
        super().__init__()
        self.nli = nli
        self.temperature = float(temperature)
        self.hypotheses = hypotheses
        self.hypothesis_ids = [tokenizer(h, add_special_tokens=False)["input_ids"] for h in hypotheses]
        self.special = SpecialTokens.of(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id or 0
        self.entailment = entailment_index(nli.config)
        self.labels = labels
        self.config = label_config(nli.config, labels)
        positions = int(getattr(nli.config, "max_position_embeddings", 512))
        if "roberta" in str(nli.config.model_type) or "camembert" in str(nli.config.model_type):
            positions -= int(getattr(nli.config, "pad_token_id", 1)) + 1  # RoBERTa positions start after padding
        # Tokens per (text, hypothesis) pair; the text is cut to fit each hypothesis, as truncation="only_first".
        self.limit = min(max_length, positions)
        longest = max(len(ids) for ids in self.hypothesis_ids)
        if self.limit - longest - self.special.pair_overhead < 1:
            raise AdaptextError(f"the hypotheses are too long for max_length={max_length}; shorten the template")

    @property
    def device(self) -> torch.device:
        return next(self.nli.parameters()).device

    def encode_texts(
        self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        """The texts' token ids without special tokens, cut to the longest any hypothesis leaves room for."""
        if pairs is not None:
            raise AdaptextError("NLI zero-shot scores single texts; the hypothesis is the second text")
        shortest = min(len(ids) for ids in self.hypothesis_ids)
        budget = self.limit - shortest - self.special.pair_overhead
        ids = [row[:budget] for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor
    ) -> SequenceClassifierOutput:
        rows: list[list[int]] = []
        types: list[list[int]] = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            premise = [t for t, m in zip(ids, mask, strict=True) if m]
            for hypothesis in self.hypothesis_ids:
                room = self.limit - len(hypothesis) - self.special.pair_overhead
                row, row_types = self.special.pair(premise[:room], hypothesis)
                rows.append(row)
                types.append(row_types)
        width = max(len(r) for r in rows)
        inputs = {
            "input_ids": torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows], device=self.device),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device),
        }
        if getattr(self.nli.config, "type_vocab_size", 0) > 1:
            inputs["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in types], device=self.device)
        logits = self.nli(**inputs).logits
        entail = logits.float()[:, self.entailment].view(input_ids.shape[0], len(self.hypotheses))
        return SequenceClassifierOutput(logits=entail / self.temperature)


def entailment_index(config: PretrainedConfig) -> int:
    """The output index of the `entailment` class in an NLI model's config."""
    for index, name in (config.id2label or {}).items():
        if str(name).lower().startswith("entail"):
            return int(index)
    raise AdaptextError(
        f"the NLI model's labels {list((config.id2label or {}).values())} have no 'entailment'; "
        "give an NLI (MNLI/XNLI) model as zeroshot.nli_model"
    )


def save_nli_model(
    model: NliClassifier, tokenizer: PreTrainedTokenizerBase, config: Config, target: Path, extra: dict[str, Any]
) -> None:
    """Write the NLI scorer's folder: the NLI model as it was (a plain `transformers` folder), the tokenizer, and
    `adaptext.json` with the labels, hypotheses and temperature."""

    def write(folder: Path) -> None:
        model.nli.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ModelInfo(
            strategy="zeroshot",
            labels=model.labels,
            problem_type=SINGLE_LABEL.problem_type,
            max_length=config.data.max_length,
            text_column=config.data.text_column,
            label_column=config.data.label_column,
        ).updated(**extra).write(folder)

    replace_dir(target, write)


def load_nli_model(model_dir: Path, info: ModelInfo) -> NliClassifier:
    """Rebuild the NLI scorer saved by `save_nli_model`."""
    if info.labels is None:
        raise info.missing("labels")
    if info.hypotheses is None:
        raise info.missing("hypotheses")
    if info.temperature is None:
        raise info.missing("temperature")
    nli = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_length = info.max_length or 512
    return NliClassifier(nli, tokenizer, list(info.hypotheses), list(info.labels), info.temperature, max_length)
