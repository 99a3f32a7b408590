"""Prompt-based fine-tuning (PET): a masked-LM model fills a cloze template, and a verbalizer maps each label to
the word that would stand at the mask ("{text} It was {mask}." with positive -> great, negative -> terrible).

The label scores are the masked-LM logits of the verbalizer words at the mask, so the model starts from what it
learned in pre-training rather than from a random head; training fine-tunes it with cross-entropy over those
scores. The saved folder is a plain `transformers` masked-LM folder (usable with the `fill-mask` pipeline and
`targets=` the verbalizer words) plus `adaptext.json` holding the template and verbalizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from adaptext.core.config import Config
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.info import ModelInfo
from adaptext.core.run import replace_dir
from adaptext.core.task import SINGLE_LABEL
from adaptext.data.batching import SpecialTokens
from adaptext.modeling.build import label_config
from adaptext.modeling.hub import load_tokenizer, resolve_model_name

if TYPE_CHECKING:
    pass


_FIELD = re.compile(r"(\{text\}|\{pair\}|\{mask\})")


def verbalizer_ids(tokenizer: PreTrainedTokenizerBase, verbalizer: dict[str, str], labels: list[str]) -> list[int]:
    """The single vocabulary id of each label's word, in label order; a clear error for a word that is not one
    token (a leading space is tried too, as BPE vocabularies store mid-sentence words with it)."""
    ids = []
    for label in labels:
        word = verbalizer.get(label, label)
        candidates = [tokenizer(form, add_special_tokens=False)["input_ids"] for form in (word, " " + word)]
        single = [c for c in candidates if len(c) == 1 and c[0] != tokenizer.unk_token_id]
        if not single and any(len(c) == 1 for c in candidates):
            raise ConfigError(
                f"prompt.verbalizer: the word {word!r} for label {label!r} is not in this model's vocabulary "
                f"(it reads as {tokenizer.unk_token!r}); choose a word the model knows"
            )
        if not single:
            pieces = tokenizer.convert_ids_to_tokens(candidates[0])
            raise ConfigError(
                f"prompt.verbalizer: the word {word!r} for label {label!r} is {len(candidates[0])} tokens for this "
                f"model ({pieces}); choose a word that is a single token"
            )
        ids.append(int(single[0][0]))
    if len(set(ids)) != len(ids):
        raise ConfigError("prompt.verbalizer: two labels map to the same token; give each label its own word")
    return ids


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
) -> dict[str, list[list[int]]]:
    """Token ids of the filled template for each text: the text (and pair) are truncated, never the template or
    the mask, so every row holds exactly one mask token within `max_length`."""
    if tokenizer.mask_token_id is None:
        raise AdaptextError("strategy prompt needs a tokenizer with a mask token (a masked-LM model)")
    if pairs is None and "{pair}" in template:
        raise AdaptextError("prompt.template uses {pair} but the data has no text pair column")
    parts = [p for p in _FIELD.split(template) if p]
    literal = {p: tokenizer(p, add_special_tokens=False)["input_ids"] for p in parts if not _FIELD.fullmatch(p)}
    special = SpecialTokens.of(tokenizer)
    fixed = sum(len(literal[p]) for p in parts if p in literal) + 1 + len(special.prefix) + len(special.suffix)
    budget = max_length - fixed
    if budget < 2:
        raise AdaptextError(f"prompt.template takes {fixed} of max_length={max_length} tokens; raise data.max_length")
    text_ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    pair_ids = tokenizer(list(pairs), add_special_tokens=False)["input_ids"] if pairs is not None else None
    features: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
    for row, ids in enumerate(text_ids):
        second = pair_ids[row] if pair_ids is not None else []
        # Shorten the longer of text and pair first, as truncation="longest_first" does.
        first = list(ids)
        while len(first) + len(second) > budget:
            if len(first) >= len(second):
                first.pop()
            else:
                second.pop()
        pieces: list[int] = []
        for part in parts:
            if part == "{text}":
                pieces.extend(first)
            elif part == "{pair}":
                pieces.extend(second)
            elif part == "{mask}":
                pieces.append(tokenizer.mask_token_id)
            else:
                pieces.extend(literal[part])
        full = special.single(pieces)
        features["input_ids"].append(full)
        features["attention_mask"].append([1] * len(full))
    return features


class PromptClassifier(nn.Module):
    """A masked LM read at its mask position through the verbalizer: one logit per label."""

    def __init__(
        self, mlm: PreTrainedModel, template: str, word_ids: list[int], labels: list[str], mask_token_id: int
    ) -> None:
        super().__init__()
        self.mlm = mlm
        self.template = template
        self.word_ids = word_ids
        self.mask_token_id = mask_token_id
        self.labels = labels
        self.config = label_config(mlm.config, labels)

    @property
    def device(self) -> torch.device:
        return next(self.mlm.parameters()).device

    def encode_texts(
        self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        return encode_prompts(tokenizer, self.template, texts, pairs, max_length)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor
    ) -> SequenceClassifierOutput:
        # BERT-style token types are all zero for a single filled template.
        inputs.pop("token_type_ids", None)
        logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
        position = (input_ids == self.mask_token_id).int().argmax(dim=1)
        at_mask = logits[torch.arange(len(input_ids), device=logits.device), position]
        return SequenceClassifierOutput(logits=at_mask[:, self.word_ids].float())


def build_prompt_model(config: Config, labels: list[str], tokenizer: PreTrainedTokenizerBase) -> PromptClassifier:
    unknown = sorted(set(config.prompt.verbalizer) - set(labels))
    if unknown:
        raise ConfigError(f"prompt.verbalizer: unknown label(s) {unknown}; the labels are {labels}")
    word_ids = verbalizer_ids(tokenizer, config.prompt.verbalizer, labels)
    try:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            mlm, info = AutoModelForMaskedLM.from_pretrained(
                resolve_model_name(config.model.name), output_loading_info=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as error:
        raise AdaptextError(f"strategy prompt needs a masked-LM model; {config.model.name!r}: {error}") from None
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise AdaptextError(
            f"{config.model.name}: the checkpoint has no trained masked-LM head (missing {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}); strategy prompt reads the words the model predicts at the mask, "
            "so it needs a masked-LM checkpoint (e.g. bert-base-uncased, roberta-base, bert-base-chinese)"
        )
    assert tokenizer.mask_token_id is not None
    return PromptClassifier(mlm, config.prompt.template, word_ids, labels, tokenizer.mask_token_id)


def save_prompt_model(
    model: PromptClassifier, tokenizer: PreTrainedTokenizerBase, config: Config, target: Path
) -> None:
    labels = model.labels
    words = {label: tokenizer.convert_ids_to_tokens(i) for label, i in zip(labels, model.word_ids, strict=True)}

    def write(folder: Path) -> None:
        model.mlm.save_pretrained(folder)
        tokenizer.model_max_length = config.data.max_length
        tokenizer.save_pretrained(folder)
        ModelInfo(
            strategy="prompt",
            base_model=config.model.name,
            labels=labels,
            problem_type=SINGLE_LABEL.problem_type,
            template=model.template,
            verbalizer=words,
            verbalizer_ids=model.word_ids,
            max_length=config.data.max_length,
            text_column=config.data.text_column,
            text_pair_column=config.data.text_pair_column,
            label_column=config.data.label_column,
            label_delimiter=config.data.label_delimiter,
        ).write(folder)

    replace_dir(target, write)


def load_prompt_model(model_dir: Path, info: ModelInfo) -> PromptClassifier:
    """Rebuild the prompt classifier saved by `save_prompt_model`."""
    if info.labels is None:
        raise info.missing("labels")
    if info.template is None:
        raise info.missing("template")
    if info.verbalizer_ids is None:
        raise info.missing("verbalizer_ids")
    mlm = AutoModelForMaskedLM.from_pretrained(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    assert tokenizer.mask_token_id is not None
    return PromptClassifier(mlm, info.template, list(info.verbalizer_ids), list(info.labels), tokenizer.mask_token_id)
