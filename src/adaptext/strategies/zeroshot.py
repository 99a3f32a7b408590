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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from adaptext.core.config import ROBUST_KEYS, Config
from adaptext.core.device import default_device
from adaptext.core.errors import AdaptextError, DataError
from adaptext.data.examples import Splits, TextData
from adaptext.data.io import label_descriptions, load_examples, read_table
from adaptext.data.labels import canonical_label, check_known_labels
from adaptext.evaluation.calibration import DEFAULT_TEMPERATURE, fit_temperature
from adaptext.inference.predictor import Predictor
from adaptext.modeling.hub import load_tokenizer, resolve_model_name
from adaptext.modeling.nli import NliClassifier, save_nli_model
from adaptext.modeling.similarity import set_temperature, similarity_model
from adaptext.training.lifecycle import save_model
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy

logger = logging.getLogger(__name__)


CALIBRATION_EXAMPLES = 2000


def label_texts(config: Config, labels: list[str], descriptions: dict[str, str]) -> list[str]:
    """One sentence per label: the template filled with the label's description, or its name made readable."""
    return [config.zeroshot.template.format(label=descriptions.get(name) or name.replace("_", " ")) for name in labels]


@dataclass
class ZeroshotPrepared(Prepared):
    calibration: TextData | None = None  # labelled examples to fit the temperature on
    hypotheses: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)
    tokenizer: PreTrainedTokenizerBase | None = None
    model: Any = None


@STRATEGIES.register("zeroshot")
class Zeroshot(Strategy):
    """No training: labels scored by similarity to their descriptions, or by an NLI model."""

    name = "zeroshot"
    # Nothing is trained: every key that only shapes training would change nothing. (`train.batch_size` and
    # `train.eval_batch_size` set the evaluation's batches, `train.threshold` the saved model's.)
    ignores = (
        "train.epochs",
        "train.max_steps",
        "train.learning_rate",
        "train.weight_decay",
        "train.warmup_ratio",
        "train.grad_accum_steps",
        "train.max_grad_norm",
        "train.class_weights",
        "train.eval_steps",
        "train.checkpoint_steps",
        "train.early_stopping_patience",
        "train.num_workers",
        "train.swa_start",
        "train.swa_every",
        "train.freeze_embeddings",
        "train.embedding_rows",
        "train.attention_dropout",
        *ROBUST_KEYS,
    )

    def prepare(self, config: Config) -> ZeroshotPrepared:
        splits, calibration = _zeroshot_data(config)
        labels = splits.labels
        path = config.data.label_descriptions
        descriptions = label_descriptions(path, labels) if path else {}
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
        return ZeroshotPrepared(
            splits=splits,
            precision="no",
            calibration=calibration,
            hypotheses=hypotheses,
            descriptions=descriptions,
            tokenizer=tokenizer,
            model=model,
        )

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, ZeroshotPrepared) and prepared.tokenizer is not None
        config, model, tokenizer = run.config, prepared.model, prepared.tokenizer
        nli_name = config.zeroshot.nli_model
        labels = prepared.splits.labels
        temperature = DEFAULT_TEMPERATURE if not nli_name else 1.0
        if isinstance(config.zeroshot.temperature, float):
            temperature = config.zeroshot.temperature
        elif prepared.calibration is not None:
            calibration = prepared.calibration
            predictor = Predictor(model, tokenizer, max_length=config.data.max_length)
            raw = predictor.predict_logits(calibration.texts, calibration.pairs)  # at temperature 1
            index = {name: i for i, name in enumerate(labels)}
            temperature = fit_temperature(raw, np.asarray([index[str(v)] for v in calibration.labels or []]))
            logger.info("zero-shot: temperature %.4g fitted on %d labelled examples", temperature, len(calibration))
        extra = {
            "scorer": "nli" if nli_name else "similarity",
            "template": config.zeroshot.template,
            "hypotheses": prepared.hypotheses,
            "descriptions": prepared.descriptions,
            "temperature": temperature,
        }
        if nli_name:
            model.temperature = temperature
            save_nli_model(model, tokenizer, config, run.paths.model, extra | {"base_model": nli_name})
        else:
            set_temperature(model, temperature)
            save_model(model, tokenizer, config, run.paths.model, extra)
        for callback in run.callbacks:
            callback.on_save(model, run.paths.model)
        prepared.model = None  # the final evaluation loads the saved folder
        return TrainingState(done=True, total_parameters=sum(p.numel() for p in model.parameters()))


def _zeroshot_data(config: Config) -> tuple[Splits, TextData | None]:
    """The label set, the evaluation split(s), and labelled examples to fit the temperature on (if any).

    With a training file nothing is trained on it: up to 2,000 of its examples calibrate the temperature, and the
    validation/test files (or splits carved from it) are evaluated as in any run.
    """
    from adaptext.data.splits import load_splits

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
