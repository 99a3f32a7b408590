"""Few-shot learning in the SetFit manner: contrastive fine-tuning of the encoder on pairs of the few labelled
examples, then a logistic-regression head fitted on the embeddings.

The embedding is the mean of the token states, as the sentence encoders SetFit starts from are trained to use
(on MiniLM it gives 68-70% on SST-2 with 16 examples per class where the pooled [CLS] gives 58-63%). A
sequence-classification model reads the [CLS] state only, so `model.add_mean_pooling` appends one encoder layer that
computes the mean into that position (uniform attention, identity values, no feed-forward) and makes the layer
before the head nearly the identity. The result is still an ordinary `transformers` model: the fitted head is
written into its final layer, and `pipeline`, `adaptext predict`, `export` and `serve` use it unchanged, with the
head's probabilities.

Pairs are not sampled one by one as in SetFit: each step encodes a batch of examples drawn a few per class and
trains on every pair inside it, so a step of 32 encodings yields 496 labelled pairs instead of 16.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptext.core.config import ROBUST_KEYS, Config
from adaptext.core.device import autocast_dtype, resolve_precision
from adaptext.core.errors import ConfigError
from adaptext.core.task import SINGLE_LABEL, Task, task_of
from adaptext.data.batching import Collator, Encoded, LengthGroupedBatches, tokenize
from adaptext.data.examples import Splits, TextData
from adaptext.data.io import label_descriptions
from adaptext.data.labels import label_targets
from adaptext.data.splits import load_splits
from adaptext.evaluation.calibration import fit_temperature
from adaptext.evaluation.metrics import EvalReport, check_metric_name, evaluate_data, is_improvement
from adaptext.inference.predictor import Predictor
from adaptext.modeling.build import build_model
from adaptext.modeling.embedding import embed, final_linear, prepare_encoder
from adaptext.modeling.hub import load_tokenizer
from adaptext.training.engine import BatchSampler, TrainingJob, in_memory_predictor, run_training
from adaptext.training.lifecycle import save_model
from adaptext.training.objectives import OBJECTIVES
from adaptext.training.state import TrainingState
from adaptext.training.strategy import STRATEGIES, Prepared, Run, Strategy

logger = logging.getLogger(__name__)


def group_keys(targets: np.ndarray) -> list[int]:
    """One sampling group per example: its class id, or for multi-hot rows the id of its label combination."""
    if targets.ndim == 1:
        return [int(t) for t in targets]
    combos: dict[bytes, int] = {}
    return [combos.setdefault(row.astype(bool).tobytes(), len(combos)) for row in targets]


def contrastive_batches(groups: list[int], batch_size: int, steps: int, per_class: int, seed: int) -> list[list[int]]:
    """`steps` batches of example indices, each made of up to `per_class` examples from each of several groups.

    Groups are visited in a shuffled cycle and each group's examples in a shuffled cycle, so every example and
    every group is seen about equally often, and a batch holds positive pairs (same group) and negative pairs
    (different groups) whenever the data has them. Deterministic in `seed`.
    """
    if batch_size < 2:
        raise ValueError("a contrastive batch needs at least 2 examples")
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    queues: dict[int, list[int]] = {g: [] for g in members}
    group_queue: list[int] = []

    def next_member(group: int) -> int:
        if not queues[group]:
            queues[group] = list(rng.permutation(members[group]))
        return int(queues[group].pop())

    batches = []
    for _ in range(steps):
        batch: list[int] = []
        seen: set[int] = set()
        while len(batch) < min(batch_size, len(groups)):
            if not group_queue:
                group_queue = list(rng.permutation(sorted(members)))
            group = int(group_queue.pop())
            for _ in range(min(per_class, len(members[group]), batch_size - len(batch))):
                index = next_member(group)
                if index not in seen:
                    seen.add(index)
                    batch.append(index)
        batches.append(batch)
    return batches


class ContrastiveBatches(Sampler[list[int]]):
    """The few-shot run's batches (`contrastive_batches`) as a batch sampler: one pass holds all of them, and the
    order is a pure function of (seed, epoch), so a resumed run draws the same batches."""

    def __init__(self, groups: list[int], batch_size: int, batches: int, per_class: int, seed: int) -> None:
        self.groups, self.batch_size, self.batches, self.per_class = groups, batch_size, batches, per_class
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        seed = self.seed + 1_000_003 * self.epoch
        return iter(contrastive_batches(self.groups, self.batch_size, self.batches, self.per_class, seed))

    def __len__(self) -> int:
        return self.batches


def fit_head(model: PreTrainedModel, embeddings: np.ndarray, targets: np.ndarray, c: float, seed: int) -> None:
    """Fit logistic regression on `embeddings` and write it into the model's final layer, so that the model's
    softmax (or, multi-label, per-label sigmoid) equals the regression's `predict_proba` exactly."""
    from sklearn.linear_model import LogisticRegression

    num_labels = len(model.config.id2label or {})
    # Fit on embeddings of about unit norm, as SetFit does (its embeddings are normalised), so `c` means the same
    # whatever the embedding's scale; the weights are scaled back to act on the raw embedding.
    scale = float(np.median(np.linalg.norm(embeddings, axis=1))) or 1.0
    embeddings = embeddings / scale
    weight = np.zeros((num_labels, embeddings.shape[1]), dtype=np.float64)
    bias = np.zeros(num_labels, dtype=np.float64)
    if targets.ndim == 1:
        present = np.unique(targets)
        if len(present) < 2:
            raise ValueError("few-shot training needs examples of at least two labels")
        clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(embeddings, targets)
        if len(present) == 2 and num_labels == 2:
            # Binary regression has one score z = w.x + b with p(class 1) = sigmoid(z); two logits -z/2 and z/2
            # give the same softmax.
            weight[0], weight[1] = -clf.coef_[0] / 2, clf.coef_[0] / 2
            bias[0], bias[1] = -clf.intercept_[0] / 2, clf.intercept_[0] / 2
        else:
            # Multinomial regression: one row per class present; an absent class gets a score it never wins.
            bias[:] = -1e4
            if len(clf.classes_) == 2:  # sklearn keeps one score for two classes: -z/2 and z/2 as above
                rows = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
                intercepts = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
            else:
                rows, intercepts = clf.coef_, clf.intercept_
            for row, cls in enumerate(clf.classes_):
                weight[cls], bias[cls] = rows[row], intercepts[row]
    else:
        for label in range(num_labels):
            column = targets[:, label]
            if column.min() == column.max():  # every example has (or lacks) this label: a constant score
                bias[label] = 1e4 if column[0] else -1e4
                continue
            clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(embeddings, column)
            weight[label], bias[label] = clf.coef_[0], clf.intercept_[0]
    weight /= scale
    layer = final_linear(model)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))


def default_steps(num_examples: int, batch_size: int) -> int:
    """Contrastive steps when `fewshot.steps` is auto: about 40 encodings per example (half of SetFit's 80 at its
    paper setting), between 40 and 500 steps. Measured on SST-2 with 32 examples per class (seeds 0 and 1): 20
    encodings per example gave 74.8 / 74.2% against SetFit's 77.0 / 76.0%, 40 gave 77.1 / 76.0%."""
    per_step = min(batch_size, num_examples)
    return int(min(500, max(40, math.ceil(40 * num_examples / per_step))))


# The encoder's training takes its length, batch size and learning rate from `fewshot.*`, and warms up over WARMUP
# of its steps (SetFit's ratio); it has no validation of its own (see `_job`). These `train.*` keys would change
# nothing, so setting one is refused.
IGNORED_TRAIN_KEYS = (
    "train.epochs",
    "train.max_steps",
    "train.learning_rate",
    "train.warmup_ratio",
    "train.class_weights",
    "train.eval_steps",
    "train.early_stopping_patience",
    "train.freeze_embeddings",
    "train.attention_dropout",
)
WARMUP = 0.1
CONTRASTIVE_LEARNING_RATE = 2e-5
FINETUNE_LEARNING_RATE = 1e-4
FINETUNE_EPOCHS = 5
# `fewshot.encoder: auto` fine-tunes from this many labels up (docs/fewshot.md has the measurements).
FINETUNE_FROM_LABELS = 10


@dataclass
class FewshotPrepared(Prepared):
    tokenizer: PreTrainedTokenizerBase | None = None
    descriptions: dict[str, str] = field(default_factory=dict)


@STRATEGIES.register("fewshot")
class Fewshot(Strategy):
    """Contrastive training of the encoder on pairs of the few examples, then a logistic-regression head (SetFit)."""

    name = "fewshot"
    resumable = True
    self_trainable = True
    ignores = (*IGNORED_TRAIN_KEYS, *ROBUST_KEYS)  # its contrastive loss has no cross-entropy to make robust

    def check(self, config: Config) -> None:
        super().check(config)
        check_metric_name(config.train.metric_for_best, task_of(config))
        fs = config.fewshot
        if fs.encoder == "frozen":
            for key, value in (("steps", fs.steps), ("learning_rate", fs.learning_rate)):
                if value != "auto":
                    raise ConfigError(f"fewshot.encoder=frozen trains nothing: fewshot.{key}={value} would not apply")
        if config.ood.method != "none" and not self.has_held_out_validation(config):
            raise ConfigError(
                f"ood.method={config.ood.method} sets its threshold on held-out in-scope texts, and a few-shot run "
                "trains on every example: give data.validation=FILE (or data.validation_fraction=0.2 to carve it off "
                "the training file)"
            )

    def holds_out_validation(self, config: Config) -> bool:
        """Only when `data.validation_fraction` is a number. With `auto` a run without a validation file trains on
        all N examples (true few-shot, as SetFit does): an 8-per-class run would otherwise lose one example in
        eight, and score the head on a handful of texts."""
        return config.data.validation_fraction != "auto"

    def prepare(self, config: Config) -> FewshotPrepared:
        precision = resolve_precision(config.train.precision)
        splits = load_splits(config, hold_out=self.holds_out_validation(config))
        path = config.data.label_descriptions
        descriptions = label_descriptions(path, splits.labels) if path else {}
        tokenizer = load_tokenizer(config.model.name)
        return FewshotPrepared(splits=splits, precision=precision, tokenizer=tokenizer, descriptions=descriptions)

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, FewshotPrepared) and prepared.tokenizer is not None
        return run_training(_job(run.config, prepared, prepared.tokenizer), run)


def _training_data(config: Config, splits: Splits, descriptions: dict[str, str]) -> tuple[TextData, np.ndarray]:
    """The examples of the contrastive phase and their targets: the training split, plus one example per label
    description (as an example of its label) when there are descriptions."""
    task = task_of(config)
    data = splits.train
    targets = label_targets(data, splits.labels, task)
    if not descriptions:
        return data, targets
    if data.pairs is not None:
        logger.warning("label descriptions are not used as examples for a text-pair task")
        return data, targets
    extra = TextData(
        texts=list(descriptions.values()),
        source=str(config.data.label_descriptions),
        labels=[[name] for name in descriptions] if task.multi_label else list(descriptions),
    )
    data = TextData(texts=data.texts + extra.texts, source=data.source)
    return data, np.concatenate([targets, label_targets(extra, splits.labels, task)])


def resolve_encoder(config: Config, num_labels: int) -> str:
    """What `fewshot.encoder` means for a run with `num_labels` labels: `auto` fine-tunes from
    FINETUNE_FROM_LABELS labels up and trains on pairs below (the measurements are in docs/fewshot.md)."""
    encoder = config.fewshot.encoder
    if encoder != "auto":
        return encoder
    return "finetune" if num_labels >= FINETUNE_FROM_LABELS else "contrastive"


def resolve_learning_rate(config: Config, encoder: str) -> float:
    rate = config.fewshot.learning_rate
    if rate != "auto":
        return rate
    return CONTRASTIVE_LEARNING_RATE if encoder == "contrastive" else FINETUNE_LEARNING_RATE


def _job(config: Config, prepared: FewshotPrepared, tokenizer: PreTrainedTokenizerBase) -> TrainingJob:
    """The encoder's training as an engine job, with the head and the checks against the untouched encoder as its
    last stage (`HeadStage`).

    Neither phase has per-step validation: a contrastive encoder only classifies once the head is fitted on its
    final embeddings, and a handful of examples cannot choose a step. Validation scores the finished model once.
    """
    splits, fs, task = prepared.splits, config.fewshot, task_of(config)
    model = build_model(config.model.name, splits.labels, task)
    pooled = prepare_encoder(model)
    data, targets = _training_data(config, splits, prepared.descriptions)
    encoder = resolve_encoder(config, len(splits.labels))
    pad_id = tokenizer.pad_token_id or 0
    features = tokenize(tokenizer, data.texts, data.pairs, config.data.max_length)
    encoded = Encoded(features=features, targets=targets.tolist())
    per_step = min(fs.batch_size, len(data))  # a batch cannot hold more examples than there are
    if encoder == "contrastive":
        steps = default_steps(len(data), fs.batch_size) if fs.steps == "auto" else fs.steps
        batches: BatchSampler = ContrastiveBatches(
            group_keys(targets), fs.batch_size, steps * config.train.grad_accum_steps, fs.per_class, config.seed
        )
        objective = OBJECTIVES.get("contrastive")(task)
        epochs_per_pass = len(batches) * per_step / len(data)
    else:
        batches = LengthGroupedBatches(encoded.lengths, fs.batch_size, seed=config.seed)
        passes = math.ceil(len(batches) / config.train.grad_accum_steps)
        steps = (FINETUNE_EPOCHS * passes if fs.steps == "auto" else fs.steps) if encoder == "finetune" else 0
        objective = OBJECTIVES.get("cross_entropy")(task)
        epochs_per_pass = 1.0
    learning_rate = resolve_learning_rate(config, encoder)
    logger.info(
        "few-shot: %d examples, %d labels, encoder %s%s: %d steps of %d examples, learning rate %g, %s embedding, "
        "precision %s",
        len(data),
        len(splits.labels),
        encoder,
        " (auto)" if fs.encoder == "auto" else "",
        steps,
        fs.batch_size,
        learning_rate,
        "mean-pooled" if pooled else "[CLS]",
        prepared.precision,
    )
    head = HeadStage(config, prepared, tokenizer, encoded, targets, encoder)
    head.start(model)
    return TrainingJob(
        model=model,
        dataset=encoded,
        batches=batches,
        collate=Collator(pad_id, task),
        objective=objective,
        steps=steps,
        learning_rate=learning_rate,
        warmup_ratio=WARMUP,
        precision=prepared.precision,
        finish=head.fit,
        save=head.save,
        epochs_per_pass=epochs_per_pass,
        token_ids=encoded.token_ids(pad_id),
    )


class HeadStage:
    """The first and last stages of a few-shot run around the encoder's training.

    Before: the head fitted on the untouched encoder's embeddings (`finetune` starts from it, `frozen` is it), and,
    when validation texts are held out, a copy of that model to fall back to. After: the head refitted on the
    trained encoder (`contrastive`); the untouched encoder's head taken instead when it scores better on held-out
    validation (so the run never ends below that floor); the temperature; the validation score; then the model
    folder saved with the temperature. A resumed run rebuilds the untouched model the same way before the
    checkpoint's weights are loaded, so it makes the same choice.
    """

    def __init__(
        self,
        config: Config,
        prepared: FewshotPrepared,
        tokenizer: PreTrainedTokenizerBase,
        encoded: Encoded,
        targets: np.ndarray,
        encoder: str,
    ) -> None:
        self.config, self.splits, self.precision = config, prepared.splits, prepared.precision
        self.tokenizer, self.encoded, self.targets, self.encoder = tokenizer, encoded, targets, encoder
        self.temperature = 1.0
        self.untouched: dict[str, torch.Tensor] | None = None

    def fit_head_on_encoder(self, model: nn.Module) -> None:
        """The logistic-regression head on the model's present embeddings of the training examples."""
        pad_id = self.tokenizer.pad_token_id or 0
        dtype = autocast_dtype(self.precision)
        embeddings = embed(model, self.encoded, pad_token_id=pad_id, autocast_dtype=dtype)  # type: ignore[arg-type]
        fit_head(model, embeddings, self.targets, self.config.fewshot.head_c, self.config.seed)  # type: ignore[arg-type]

    def start(self, model: nn.Module) -> None:
        compare = self.encoder != "frozen" and self.splits.validation_held_out
        if self.encoder == "contrastive" and not compare:
            return  # its head is fitted after training, and there is nothing to compare with
        self.fit_head_on_encoder(model)
        if compare:
            self.untouched = {name: value.detach().clone() for name, value in model.state_dict().items()}

    def fit(self, model: nn.Module) -> EvalReport:
        config = self.config
        if self.encoder == "contrastive":
            self.fit_head_on_encoder(model)
        predictor = in_memory_predictor(model, self.tokenizer, config)
        validation = self.splits.validation
        # The validation logits of the model as it now is, once computed: each step below reuses them.
        logits = self.keep_the_better(model, predictor) if self.untouched is not None else None
        if config.fewshot.calibrate and self.splits.validation_held_out:
            if logits is None:
                logits = predictor.predict_logits(validation.texts, validation.pairs)
            self.temperature = calibrate_head(model, logits, validation, self.splits.labels, predictor.task)  # type: ignore[arg-type]
            logits = logits / self.temperature  # what the head, divided by it, now gives
        elif config.fewshot.calibrate:
            logger.info("few-shot: no held-out validation texts, so the head keeps its own probabilities")
        probs = None if logits is None else predictor.task.scores(logits)
        return evaluate_data(predictor, validation, probs)

    def keep_the_better(self, model: nn.Module, predictor: Predictor) -> np.ndarray:
        """Keep the trained model, or put the untouched encoder and its head back when they score better on the
        held-out validation texts by `train.metric_for_best`. Returns the kept model's validation logits."""
        assert self.untouched is not None
        metric = self.config.train.metric_for_best
        data = self.splits.validation

        def scored() -> tuple[np.ndarray, float]:
            logits = predictor.predict_logits(data.texts, data.pairs)
            return logits, float(evaluate_data(predictor, data, predictor.task.scores(logits)).metrics[metric])

        trained_logits, trained = scored()
        kept = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.untouched)
        untouched_logits, untouched = scored()
        if is_improvement(metric, untouched, trained):
            logger.warning(
                "few-shot: the head on the untouched encoder scores validation %s=%.4f, the %s-trained model %.4f: "
                "the run keeps the untouched encoder and its head",
                metric,
                untouched,
                self.encoder,
                trained,
            )
            return untouched_logits
        model.load_state_dict(kept)
        logger.info("few-shot: validation %s=%.4f trained, %.4f untouched encoder", metric, trained, untouched)
        return trained_logits

    def save(self, model: nn.Module, target: Path) -> None:
        extra = {"temperature": self.temperature}
        save_model(model, self.tokenizer, self.config, target, extra)  # type: ignore[arg-type]


def calibrate_head(model: PreTrainedModel, logits: np.ndarray, data: TextData, labels: list[str], task: Task) -> float:
    """Temperature-scale the head on labelled `data`, whose logits (n, num_labels) the model gives: divide its
    weights and bias by the temperature that minimises the negative log-likelihood (single-label only). Returns the
    temperature (1.0 when not applicable)."""
    if task.multi_label or data.labels is None or len(data) == 0:
        return 1.0
    temperature = fit_temperature(logits, label_targets(data, labels, SINGLE_LABEL), low=1e-2, high=1e2)
    layer = final_linear(model)
    with torch.no_grad():
        layer.weight.div_(temperature)
        layer.bias.div_(temperature)
    logger.info("few-shot: head temperature %.3g fitted on %d validation examples", temperature, len(data))
    return temperature
