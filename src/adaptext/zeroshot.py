"""Zero-shot classification: no training, labels scored by what they mean.

Two scorers, both saved as a model folder that `Predictor` (hence `predict`, `evaluate` and `serve`) loads:

- **similarity** (default): each label's description (or name) is put into a template ("This example is about
  {label}.") and embedded with the sentence encoder; a text's label scores are its cosine similarities to those
  embeddings divided by a temperature. The temperature only sets how confident the probabilities are; it is fitted
  on labelled data when there is some. The scorer is a plain `transformers` sequence-classification model (the
  mean-pooling layer of `model.add_mean_pooling`, and the label embeddings as its head), so `pipeline` and
  `adaptext export` take it too.
- **NLI**: with `zeroshot.nli_model`, an entailment model reads (text, template) for every label and the label's
  score is its entailment logit, as in `transformers`' zero-shot pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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

from adaptext import fewshot
from adaptext.batching import SpecialTokens
from adaptext.config import AdaptextError, Config
from adaptext.data import DataError, Splits, TextData, canonical_label, check_known_labels, load_examples, read_table
from adaptext.model import add_mean_pooling, build_model, load_tokenizer, mean_pooling_supported, resolve_model_name
from adaptext.predict import METADATA_FILE, Predictor, default_device
from adaptext.run import replace_dir, write_json

if TYPE_CHECKING:
    from adaptext.train import TrainResult

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.05
CALIBRATION_EXAMPLES = 2000


def label_config(base: PretrainedConfig, labels: list[str]) -> PretrainedConfig:
    """`base` with `labels` as its label names (single-label)."""
    config = base.__class__.from_dict(base.to_dict())
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    config.problem_type = "single_label_classification"
    return config


def similarity_model(config: Config, labels: list[str], sentences: list[str]) -> PreTrainedModel:
    """A sequence-classification model whose logits are the cosine similarities between a text's mean-pooled
    embedding and each label sentence's, at temperature 1 (`set_temperature` changes it).

    The mean pooling is the layer `model.add_mean_pooling` appends; every embedding it gives has the same norm
    (sqrt(hidden) * HEAD_SCALE), so a dot product with unit label vectors divided by that norm is the cosine, and
    the head stays one linear layer of a plain `transformers` model.
    """
    model = build_model(config.model.name, labels, multi_label=False)
    if not mean_pooling_supported(model):
        raise AdaptextError(
            f"{config.model.name}: zero-shot similarity needs a BERT-style encoder (BERT, MiniLM, RoBERTa, XLM-R); "
            "give zeroshot.nli_model for NLI scoring instead"
        )
    add_mean_pooling(model, head_scale=fewshot.HEAD_SCALE, freeze_head_dense=True)
    model.to(default_device(None))  # type: ignore[arg-type]
    model.eval()
    tokenizer = load_tokenizer(config.model.name)
    encoded = fewshot.encode_texts(tokenizer, TextData(texts=sentences, source="labels"), config.data.max_length)
    embeddings = fewshot.embed(model, encoded, pad_token_id=tokenizer.pad_token_id or 0)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    head = fewshot.final_linear(model)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(embeddings / norms / float(np.median(norms)), dtype=head.weight.dtype))
        head.bias.zero_()
    return model


def set_temperature(model: PreTrainedModel, temperature: float) -> None:
    """Divide the similarity head's logits by `temperature` (from temperature 1)."""
    head = fewshot.final_linear(model)
    with torch.no_grad():
        head.weight.div_(temperature)


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


def label_texts(config: Config, labels: list[str], descriptions: dict[str, str]) -> list[str]:
    """One sentence per label: the template filled with the label's description, or its name made readable."""
    return [config.zeroshot.template.format(label=descriptions.get(name) or name.replace("_", " ")) for name in labels]


def fit_temperature(logits_at_one: np.ndarray, targets: np.ndarray, low: float = 1e-3, high: float = 1.0) -> float:
    """The temperature in [low, high] minimising the negative log-likelihood of `targets` under softmax(logits / T)
    (a grid of 60 points per decade)."""
    grid = np.exp(np.linspace(math.log(low), math.log(high), round(60 * math.log10(high / low)) + 1))
    best, best_nll = DEFAULT_TEMPERATURE, math.inf
    for temperature in grid:
        z = logits_at_one / temperature
        z = z - z.max(axis=1, keepdims=True)
        nll = -(z[np.arange(len(z)), targets] - np.log(np.exp(z).sum(axis=1))).mean()
        if nll < best_nll:
            best, best_nll = float(temperature), float(nll)
    return best


def build_zeroshot(config: Config, *, overwrite: bool) -> TrainResult:
    """Run `strategy: zeroshot`: build the scorer, calibrate it where labelled data allows, save, evaluate, report."""
    from adaptext.fewshot import label_descriptions
    from adaptext.run import environment_record, prepare_run_dir
    from adaptext.train import TrainingState, finish, save_model

    started = time.perf_counter()
    splits, calibration = _zeroshot_data(config)
    labels = splits.labels
    descriptions = label_descriptions(config.data.label_descriptions, labels) if config.data.label_descriptions else {}
    hypotheses = label_texts(config, labels, descriptions)
    nli_name = config.zeroshot.nli_model
    tokenizer = load_tokenizer(nli_name or config.model.name)
    model: Any
    if nli_name:
        try:
            nli = AutoModelForSequenceClassification.from_pretrained(resolve_model_name(nli_name))
        except OSError as error:
            raise AdaptextError(f"cannot load the NLI model {nli_name!r}: {error}") from None
        model = NliClassifier(nli, tokenizer, hypotheses, labels, max_length=config.data.max_length)
        model.to(default_device(None))
        model.eval()
    else:
        model = similarity_model(config, labels, hypotheses)
    paths = prepare_run_dir(config, resume=False, overwrite=overwrite)
    write_json(paths.labels, labels)
    write_json(paths.env, environment_record(str(default_device(None)), "fp32"))
    temperature = DEFAULT_TEMPERATURE if not nli_name else 1.0
    if isinstance(config.zeroshot.temperature, float):
        temperature = config.zeroshot.temperature
    elif calibration is not None:
        predictor = Predictor(model, tokenizer, max_length=config.data.max_length)
        raw = predictor.predict_logits(calibration.texts, calibration.pairs)  # at temperature 1
        index = {name: i for i, name in enumerate(labels)}
        temperature = fit_temperature(raw, np.asarray([index[str(v)] for v in calibration.labels or []]))
        logger.info("zero-shot: temperature %.4g fitted on %d labelled examples", temperature, len(calibration))
    extra = {
        "scorer": "nli" if nli_name else "similarity",
        "template": config.zeroshot.template,
        "hypotheses": hypotheses,
        "descriptions": descriptions,
        "temperature": temperature,
    }
    if nli_name:
        model.temperature = temperature
        save_nli_model(model, tokenizer, config, paths.model, extra | {"base_model": nli_name})
    else:
        set_temperature(model, temperature)
        save_model(model, tokenizer, config, paths.model, extra)
    total = sum(p.numel() for p in model.parameters())
    state = TrainingState(done=True, total_parameters=total, train_seconds=time.perf_counter() - started)
    del model
    return finish(config, paths, splits, state)


def _zeroshot_data(config: Config) -> tuple[Splits, TextData | None]:
    """The label set, the evaluation split(s), and labelled examples to fit the temperature on (if any).

    With a training file nothing is trained on it: up to 2,000 of its examples calibrate the temperature, and the
    validation/test files (or splits carved from it) are evaluated as in any run.
    """
    from adaptext.data import load_splits

    cfg = config.data
    if config.data.multi_label:
        raise AdaptextError("strategy zeroshot scores single-label tasks; set data.multi_label=false")
    if cfg.train is not None:
        splits = load_splits(config)
        rng = np.random.default_rng(config.seed)
        pick = sorted(rng.permutation(len(splits.train))[:CALIBRATION_EXAMPLES].tolist())
        return splits, splits.train.subset(pick)
    labels = config.zeroshot.labels
    if labels is None and cfg.label_descriptions is not None:
        frame = read_table(cfg.label_descriptions)
        if "label" not in frame.columns:
            raise DataError(
                f"{cfg.label_descriptions}: no 'label' column; a label-description file has columns label,description"
            )
        labels = [canonical_label(v) for v in frame["label"]]
    if not labels or len(set(labels)) < 2:
        raise AdaptextError(
            "strategy zeroshot needs the label names: give data.train, data.label_descriptions or zeroshot.labels "
            "(at least two)"
        )
    validation = load_examples(cfg.validation, cfg) if cfg.validation is not None else None
    test = load_examples(cfg.test, cfg) if cfg.test is not None else None
    if validation is None and test is None:
        raise AdaptextError(
            "strategy zeroshot without data.train needs data.validation or data.test to evaluate the labels on"
        )
    for split in (validation, test):
        if split is not None:
            check_known_labels(split, sorted(labels))
    evaluated = test if test is not None else validation
    assert evaluated is not None
    calibration = validation if test is not None else None
    return Splits(train=evaluated.subset([]), validation=evaluated, test=test, labels=sorted(labels)), calibration


def save_nli_model(
    model: NliClassifier, tokenizer: PreTrainedTokenizerBase, config: Config, target: Path, extra: dict[str, Any]
) -> None:
    """Write the NLI scorer's folder: the NLI model as it was (a plain `transformers` folder), the tokenizer, and
    `adaptext.json` with the labels, hypotheses and temperature."""

    def write(folder: Path) -> None:
        model.nli.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json(
            folder / METADATA_FILE,
            {
                "format_version": 1,
                "strategy": "zeroshot",
                "labels": model.labels,
                "problem_type": "single_label_classification",
                "max_length": config.data.max_length,
                "text_column": config.data.text_column,
                "label_column": config.data.label_column,
            }
            | extra,
        )

    replace_dir(target, write)


def load_nli_model(model_dir: Path, metadata: dict[str, Any]) -> NliClassifier:
    """Rebuild the NLI scorer saved by `save_nli_model`."""
    nli = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = [str(v) for v in metadata["labels"]]
    hypotheses = [str(h) for h in metadata["hypotheses"]]
    max_length = int(metadata.get("max_length", 512))
    return NliClassifier(nli, tokenizer, hypotheses, labels, float(metadata["temperature"]), max_length)
