"""The run configuration: one typed, validated tree loaded from YAML plus `key.path=value` overrides.

This module imports neither torch nor transformers, so `adaptext --help` and config validation stay instant.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from adaptext.core.errors import ConfigError
from adaptext.core.registry import STRATEGIES

logger = logging.getLogger(__name__)


CONFIG_FORMAT_VERSION = 1

ModelT = TypeVar("ModelT", bound=BaseModel)


_FLOAT_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce_float(value: Any) -> Any:
    # PyYAML reads `1e-3` (no dot) as a string; accept it as the float the user meant.
    if isinstance(value, str) and _FLOAT_STRING.match(value.strip()):
        return float(value)
    return value


def expand_user(path: Path) -> Path:
    """`path` with a leading `~` or `~user` expanded as a shell would; a `ValueError` names an unknown user."""
    if not str(path).startswith("~"):
        return path
    try:
        return path.expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {str(path)!r}: no such user's home folder") from None


def _expand_name(value: str) -> str:
    # A model name starting with `~` can only be a local folder: Hugging Face ids never start with one.
    return str(expand_user(Path(value))) if value.startswith("~") else value


Float = Annotated[float, BeforeValidator(_coerce_float)]
DEFAULT_VALIDATION_FRACTION = 0.1  # `data.validation_fraction: auto` for the strategies that hold validation out


# A path field: `~` is expanded, so `output_dir: ~/runs/a` means the home folder, as in a shell.
UserPath = Annotated[Path, AfterValidator(expand_user)]


# A model id or a local folder; a folder given with `~` is expanded.
ModelName = Annotated[str, AfterValidator(_expand_name)]


# Strict, so that `true` or `2.5` is not silently taken as 1 or 2.
Int = Annotated[int, Strict()]


AUTO_TARGET_STEPS = 1500


AUTO_MIN_EPOCHS = 2


AUTO_MAX_EPOCHS = 10


# The strategies adaptext ships (`adaptext.strategies`); others are known once registered.
BUILTIN_STRATEGIES = ("finetune", "fewshot", "zeroshot", "prompt")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: ModelName = Field(
        "minilm",
        description="A Hugging Face model id, a local model folder, or `minilm` for the bundled offline model.",
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="What the classification head reads: `cls` the [CLS] token's state (BERT's recipe), `mean` "
        "the mean of the token states (one appended layer computes it, so the saved model stays a plain "
        "`transformers` model). `auto`: `mean` for sentence-transformers models trained with mean pooling "
        "(such as `minilm`) when fine-tuning without peft, `cls` otherwise.",
    )


class DataConfig(_Section):
    train: UserPath | None = Field(None, description="Training file (CSV, TSV, JSONL or Parquet).")
    validation: UserPath | None = Field(
        None, description="Validation file; when absent a stratified split of `train` is used."
    )
    test: UserPath | None = Field(
        None, description="Test file, evaluated once after training into the run folder's report."
    )
    validation_fraction: Annotated[float, Field(gt=0.0, lt=0.5), BeforeValidator(_coerce_float)] | Literal["auto"] = (
        Field(
            "auto",
            description="Share of `train` held out for validation when no file is given. `auto`: "
            f"{DEFAULT_VALIDATION_FRACTION}, except for few-shot runs, which hold out nothing (every example trains).",
        )
    )
    test_fraction: Float | None = Field(
        None,
        gt=0.0,
        lt=0.5,
        description="Share of `train` held out as a test split when no test file is given (stratified).",
    )
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(None, description="Optional second text column for sentence-pair tasks.")
    label_column: str = Field("label", description="Column holding the label (or labels).")
    multi_label: bool = Field(
        False,
        description="Each row has any number of labels: a JSON list (JSONL/Parquet) or a delimited string.",
    )
    label_delimiter: str = Field("|", min_length=1, description="Separator of labels in a multi-label CSV/TSV cell.")
    problem: Literal["classification", "regression"] = Field(
        "classification",
        description="`classification`: the label column holds label names. `regression`: it holds a number per row "
        "(a graded relevance, a rating); the model has one output trained with mean squared error, and is "
        "evaluated by MSE, Pearson and Spearman correlation (`train.metric_for_best` defaults to `mse`).",
    )
    max_length: Int = Field(128, ge=8, le=8192, description="Tokens per example; longer texts are truncated.")
    label_descriptions: UserPath | None = Field(
        None,
        description="CSV/TSV/JSONL file with columns `label,description`: what each label means, in words. "
        "Zero-shot scores texts against the descriptions; few-shot adds each as one more training example.",
    )
    unlabelled: UserPath | None = Field(
        None,
        description="Unlabelled texts for self-training (`self_training.rounds`): a CSV/TSV/JSONL/Parquet file "
        "with the `text_column`, or a `.txt` file with one text a line. Texts that equal a training, validation or "
        "test text are dropped.",
    )


class TrainConfig(_Section):
    epochs: Annotated[float, Field(gt=0), BeforeValidator(_coerce_float)] | Literal["auto"] = Field(
        "auto",
        description="Passes over the training data (fractions allowed). `auto`: enough passes for about "
        f"{AUTO_TARGET_STEPS} optimizer steps, at least {AUTO_MIN_EPOCHS} and at most {AUTO_MAX_EPOCHS}.",
    )
    max_steps: Int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides `epochs` when set)."
    )
    batch_size: Int = Field(32, ge=1, description="Examples per forward pass.")
    eval_batch_size: Int | None = Field(None, ge=1, description="Examples per batch when evaluating.")
    learning_rate: Annotated[float, Field(gt=0), BeforeValidator(_coerce_float)] | Literal["auto"] = Field(
        "auto",
        description="Peak learning rate for AdamW. `auto`: by model width (hidden size <= 512: 2e-4, "
        "<= 768: 5e-5, larger: 2e-5); see docs/benchmarks.md for how these were chosen.",
    )
    weight_decay: Float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases/norms).")
    warmup_ratio: Float = Field(0.06, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    grad_accum_steps: Int = Field(1, ge=1, description="Forward passes per optimizer step.")
    max_grad_norm: Float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables it.")
    freeze_embeddings: bool = Field(
        False,
        description="Full fine-tuning (strategy finetune, peft.method none) keeps the word-embedding matrix as "
        "pretrained: no gradients or optimizer moments for it, so less memory and time per step. See "
        "docs/benchmarks.md for its accuracy across data sets.",
    )
    embedding_rows: Literal["used", "all"] = Field(
        "used",
        description="Which rows of the word-embedding matrix full fine-tuning and few-shot train. `used`: those of "
        "the tokens in the training data, the only rows that get a gradient, so the model is the same; the rest "
        "keep no gradient or optimizer moments (for MiniLM up to about 120 MB less memory and faster steps) and stay "
        "as pretrained, where `all` would shrink them by weight decay alone. `all`: the whole matrix. On-the-fly "
        "augmentation (robust.augment) can bring any token, so it trains all rows.",
    )
    attention_dropout: Float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Dropout on the attention probabilities while fine-tuning; null keeps the model's own (MiniLM "
        "and BERT: 0.1). At 0, PyTorch's fused attention keeps no attention matrix for the backward pass: less "
        'memory and faster steps on long texts, none on short ones (docs/benchmarks.md, "Training memory").',
    )
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "auto",
        description="Mixed precision: `auto` picks bf16 (fp16 on GPUs without bf16) on a GPU, bf16 on a CPU with "
        "native bf16 instructions (AVX-512 BF16 / AMX), fp32 otherwise; evaluation always runs in fp32.",
    )
    class_weights: Literal["none", "auto"] | dict[str, Float] = Field(
        "none",
        description="Loss weights per class: `auto` (inverse frequency) or a `{label: weight}` mapping.",
    )
    eval_steps: Int | None = Field(
        None, ge=1, description="Also evaluate every N optimizer steps (always at each epoch end)."
    )
    checkpoint_steps: Int = Field(
        200, ge=1, description="Save a resumable checkpoint every N optimizer steps (and at each evaluation)."
    )
    early_stopping_patience: Int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    metric_for_best: str = Field(
        "macro_f1", description="Validation metric that picks the best checkpoint (higher is better, except `loss`)."
    )
    threshold: Float = Field(0.5, gt=0, lt=1, description="Multi-label decision threshold on each label's probability.")
    num_workers: Int = Field(0, ge=0, description="DataLoader worker processes.")
    report_errors: Int = Field(
        20,
        ge=0,
        description="Misclassified validation examples the run's report shows, most confident first, with the "
        "words that made the model decide (0: none).",
    )
    swa_start: Float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Stochastic weight averaging: from this share of the optimizer steps on, the trainable weights "
        "are averaged every `swa_every` steps, and the average is the model evaluated and saved (not the best "
        "checkpoint). null: off. See docs/ensemble.md.",
    )
    swa_every: Int = Field(1, ge=1, description="Optimizer steps between two weight snapshots averaged by SWA.")


class PeftSection(_Section):
    method: str = Field(
        "none",
        description="`none` (full fine-tuning), `lora`, `adalora`, `ia3`, `prefix_tuning`, `prompt_tuning`, "
        "`p_tuning`, or any other peft method name for sequence classification (e.g. `loha`, `lokr`, `vera`).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options passed to the peft method's config (e.g. LoRA `r`, `lora_alpha`, `lora_dropout`, "
        "`target_modules`, `use_rslora`, `use_dora`); peft validates them. Unset options get adaptext's defaults.",
    )

    @field_validator("method")
    @classmethod
    def _normalise_method(cls, value: str) -> str:
        return value.strip().lower().replace("-", "_")


class FewshotSection(_Section):
    encoder: Literal["auto", "contrastive", "finetune", "frozen"] = Field(
        "auto",
        description="How the encoder learns from the few examples. `contrastive`: SetFit's pairs, then the head fitted "
        "on the trained encoder. `finetune`: the head fitted on the untouched encoder, then encoder and head trained "
        "end to end with cross-entropy (LP-FT). `frozen`: the head on the untouched encoder only. `auto`: `finetune` "
        "from 10 labels up, else `contrastive` (bench/fewshot.py, docs/fewshot.md).",
    )
    steps: Int | Literal["auto"] = Field(
        "auto",
        description="Training steps of the encoder. `auto`: contrastive, about 40 encodings per training example, 40 "
        "to 500 steps; finetune, 5 epochs.",
    )
    batch_size: Int = Field(32, ge=2, description="Examples per training step (contrastive: every pair among them).")
    per_class: Int = Field(4, ge=1, description="Examples drawn from each class into a contrastive batch.")
    learning_rate: Annotated[float, Field(gt=0), BeforeValidator(_coerce_float)] | Literal["auto"] = Field(
        "auto", description="Peak AdamW learning rate. `auto`: 2e-5 contrastive, 1e-4 finetune."
    )
    head_c: Float = Field(
        10.0,
        gt=0,
        description="Inverse L2 strength of the logistic-regression head (on embeddings of unit median norm). 10, "
        "not SetFit's 1: with many classes 1 is too strong (8-shot BANKING77, bench/fewshot_floor.py: 77.9% against "
        "79.0% on the trained encoder, 78.0 against 81.7 on the frozen one), and on two classes it changes little.",
    )
    calibrate: bool = Field(
        True,
        description="Fit a softmax temperature on the validation split (single-label): the regression's "
        "probabilities are far too flat for many classes; the temperature changes confidence, never the label.",
    )


class ZeroshotSection(_Section):
    template: str = Field(
        "This example is about {label}.",
        description="How a label (its description, or its name) becomes a sentence; must contain `{label}`. "
        "Write it in the language of the texts.",
    )
    labels: list[str] | None = Field(
        None, description="The label names, when no training file or label-description file gives them."
    )
    temperature: Annotated[float, Field(gt=0), BeforeValidator(_coerce_float)] | Literal["auto"] = Field(
        "auto",
        description="Softmax temperature on cosine similarities. `auto`: fitted on labelled validation data "
        "when there is any (it changes confidence, never the label), else 0.05.",
    )
    nli_model: ModelName | None = Field(
        None,
        description="An NLI (entailment) model id or folder: labels are then scored by entailment of the template "
        "as hypothesis, instead of by embedding similarity.",
    )


class PromptSection(_Section):
    template: str = Field(
        "{text} It was {mask}.",
        description="Pattern turning a text into a cloze question for a masked-LM model: `{text}` and `{mask}` "
        "(and `{pair}` for text pairs).",
    )
    verbalizer: dict[str, str] = Field(
        default_factory=dict,
        description="Label -> word the model should fill in at `{mask}` (one token each). "
        "Empty: each label's own name.",
    )


class TrackingSection(_Section):
    backend: Literal["tensorboard", "mlflow", "none"] = Field(
        "tensorboard",
        description="Where the run's metrics go besides train_log.jsonl: `tensorboard` (event files in the run "
        "folder's `tensorboard/`), `mlflow` (params, metrics, report and model in an MLflow run; "
        "`MLFLOW_TRACKING_URI` or a local `./mlruns` store), or `none`.",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment name (default: `adaptext`, or `MLFLOW_EXPERIMENT_NAME`)."
    )
    run_name: str | None = Field(None, description="MLflow run name (default: the run folder's name).")
    log_model: bool = Field(
        True,
        description="Log the model folder to MLflow as a pyfunc model (`mlflow.pyfunc.load_model` predicts labels).",
    )


class TuneSection(_Section):
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Search space for `adaptext tune`: `{dotted.key: {type: float|int|categorical, low, high, "
        "log, choices}}`; keys given here replace the default space's, `{dotted.key: null}`-like entries "
        "with `type: fixed` and `value` pin a key.",
    )
    metric: str | None = Field(None, description="Validation metric to maximise (default: train.metric_for_best).")
    pruner: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = Field(
        "median",
        description="Stop unpromising trials at their rungs (1/9, 1/3 of training): optuna's median, percentile, "
        "successive halving or Hyperband pruner.",
    )
    percentile: Float = Field(
        75.0,
        gt=0,
        le=100,
        description="`pruner: percentile`: the share of trials, in percent, that go on at each rung (75: a trial in "
        "the bottom quarter of the complete trials' scores there stops).",
    )
    sampler: Literal["tpe", "random"] = Field("tpe", description="optuna sampler: TPE (default) or random.")


CONTINUAL_METHODS = ("auto", "naive", "joint", "replay", "ewc", "lwf", "slda", "adapters")


Shrinkage = Annotated[float, Field(ge=0, le=1), BeforeValidator(_coerce_float)] | Literal["auto"]


class ContinualSection(_Section):
    method: str = Field(
        "auto",
        description="How `adaptext extend` and `adaptext continual` keep what the model knew: `auto` (`slda` for "
        "single-label data, `replay` for multi-label: the best measured, docs/benchmarks.md), `naive` (train on the "
        "new data alone, the lower bound), `joint` (retrain from `model.name`'s base on all data so far, the upper "
        "bound), `replay` (a memory of `memory_per_class` examples per class trained on with the new data), `ewc` "
        "(a Fisher-weighted penalty on moving the weights that mattered), `lwf` (distillation from the previous "
        "model's scores on the new texts), `slda` (no training: the encoder stays as it is and the head is linear "
        "discriminant analysis on running class statistics, exact over all data seen), `adapters` (one LoRA adapter "
        "and head per task on the frozen base model, earlier adapters unchanged; a router, LDA on the base model's "
        "embedding, weighs the `adapter_top_k` most probable tasks' adapters), or a combination of replay, ewc and "
        "lwf joined by `+` (`replay+lwf`).",
    )
    memory_per_class: Int = Field(
        2, ge=0, description="Examples of each class kept in the replay memory (and used for EWC's Fisher)."
    )
    memory_selection: Literal["herding", "random"] = Field(
        "herding",
        description="How the memory is chosen: `herding` (examples whose mean embedding best matches the class's, "
        "iCaRL) or `random`.",
    )
    ewc_lambda: Float = Field(1000.0, gt=0, description="Strength of EWC's penalty.")
    lwf_weight: Float = Field(1.0, gt=0, description="Weight of LwF's distillation term against cross-entropy.")
    lwf_temperature: Float = Field(2.0, gt=0, description="Softmax temperature of LwF's distillation.")
    slda_shrinkage: Shrinkage = Field(
        0.1,
        description="slda: share of the covariance replaced by a scaled identity (shrinkage), or `auto`: at each "
        "task, the one among 1e-4, 1e-3, 0.01, 0.1 and 0.3 whose head gets the most held-out training examples right "
        "(5 folds of each task's texts, counts summed over every task so far).",
    )
    adapter_top_k: Int = Field(
        2,
        ge=0,
        description="adapters: the adapters that score each text, those of the router's most probable tasks (0: "
        "every adapter; each one more costs one more pass of the encoder).",
    )
    router_shrinkage: Shrinkage = Field(
        "auto",
        description="adapters: share of the router's covariance replaced by a scaled identity (shrinkage), or `auto`: "
        "as for `slda_shrinkage` (the value taken is in the model's `adaptext.json`).",
    )
    rebalance: bool = Field(
        True,
        description="After a task that added labels, scale the new labels' head rows to the old ones' mean norm "
        "(weight aligning), so few remembered examples do not leave the head biased towards the new labels.",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        parts = [part.strip().lower() for part in value.split("+")]
        unknown = [part for part in parts if part not in CONTINUAL_METHODS]
        if unknown or len(set(parts)) != len(parts):
            raise ValueError(
                f"unknown continual method {value!r}; use one of {', '.join(CONTINUAL_METHODS)}, or several of "
                "replay, ewc and lwf joined by +"
            )
        if len(parts) > 1 and {"auto", "naive", "joint", "slda", "adapters"} & set(parts):
            raise ValueError(f"continual.method {value!r}: only replay, ewc and lwf combine with each other")
        return "+".join(parts)

    def resolved(self, multi_label: bool) -> str:
        """The method a run uses: `auto` resolved for single- or multi-label data, any other as given."""
        if self.method != "auto":
            return self.method
        return "replay" if multi_label else "slda"

    def parts(self, multi_label: bool) -> frozenset[str]:
        """The methods combined in the resolved method."""
        return frozenset(self.resolved(multi_label).split("+"))


OOD_METHODS = ("none", "msp", "energy", "mahalanobis", "knn", "auto")


class OodSection(_Section):
    method: Literal["none", "msp", "energy", "mahalanobis", "knn", "auto"] = Field(
        "none",
        description="Out-of-scope detector saved with the model. `msp`: low top probability; `energy`: low "
        "log-sum-exp of the logits; `mahalanobis`: far from every class mean of the training features (shared "
        "covariance); `knn`: far from the k-th nearest training feature (cosine); `auto`: the method measured best "
        "in bench/robustness.py (mahalanobis where the model's features can be read, else energy); `none`: none.",
    )
    in_scope_recall: Float = Field(
        0.95,
        gt=0,
        lt=1,
        description="The threshold is set on in-scope validation texts so that this share of them stays in scope "
        "(no out-of-scope examples are needed).",
    )
    label: str = Field("unknown", min_length=1, description="What prediction returns for an out-of-scope text.")
    knn_k: Int = Field(10, ge=1, description="`knn`: the neighbour whose distance is the score.")


PRETRAIN_METHODS = ("auto", "mlm", "simcse", "tsdae")


class PretrainSection(_Section):
    method: Literal["auto", "mlm", "simcse", "tsdae"] = Field(
        "auto",
        description="`adaptext pretrain`: how the model continues pre-training on unlabelled text. `mlm`: masked-"
        "language modelling (a new MLM head is added and trained when the model has none); `simcse`: unsupervised "
        "contrastive learning, two dropout views of each text pulled together (Gao et al., 2021); `tsdae`: a "
        "decoder tied to the encoder rebuilds each text from the embedding of a copy with tokens deleted (Wang et "
        "al., 2021); `auto`: `mlm` for a model saved with an MLM head, else the method measured best for "
        "sentence encoders in bench/label_efficiency.py.",
    )
    mask_probability: Float = Field(0.15, gt=0, lt=1, description="`mlm`: share of tokens masked for prediction.")
    temperature: Float = Field(0.05, gt=0, description="`simcse`: softmax temperature on cosine similarities.")
    deletion: Float = Field(0.6, gt=0, lt=1, description="`tsdae`: share of tokens deleted from the encoder's input.")
    held_out: Float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Share of the texts held out (at most 1,000) to measure the loss on unseen text, when "
        "`data.validation` gives no file of its own.",
    )


class SelfTrainingSection(_Section):
    rounds: Int = Field(
        0,
        ge=0,
        le=20,
        description="Self-training rounds (0: off). Each round the model trained so far labels the unlabelled pool "
        "(`data.unlabelled`), the confident, class-balanced pseudo-labels join the training data, and the model "
        "is trained again from `model.name` on all of it. Works with strategy finetune and fewshot, single-label.",
    )
    threshold: Float = Field(
        0.9,
        ge=0,
        lt=1,
        description="Least probability of a pseudo-label: the model's top (validation-calibrated) probability of "
        "a pool text must reach it for the text to be a candidate.",
    )
    per_class: Int | Literal["auto"] = Field(
        "auto",
        description="Class balance: at most this many pseudo-labels per class each round, the most probable "
        "first. `auto`: as many as the labelled training data has examples of its largest class.",
    )
    max_per_round: Int | None = Field(
        None,
        ge=1,
        description="At most this many pseudo-labels in a round (null: no limit besides `per_class`); taken in "
        "turns over the classes (each class's most probable first), so the cut keeps the classes balanced.",
    )
    keep_round_models: bool = Field(
        False,
        description="Keep the model folder of every round before the last in `self_training/round_<k>/model` "
        "(round 0 is the model trained on the labelled data alone); by default only their train logs are kept.",
    )

    @field_validator("per_class")
    @classmethod
    def _positive_cap(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or `auto`")
        return value


# The switches of `robust`: a strategy that cannot honour robust training lists these in its `ignores`.
ROBUST_KEYS = ("robust.adversarial", "robust.rdrop", "robust.label_smoothing", "robust.augment.method")


class AugmentSection(_Section):
    method: str = Field(
        "none",
        description="Training-text augmentation, applied on the fly to the training split only: `char_noise`, "
        "`word_swap`, `word_delete` or any other text perturbation of `adaptext.data.perturb` (`typos`, ...), "
        "`neighbours` (word tokens replaced by one of their nearest neighbours in the model's own input-embedding "
        "matrix), or `none`.",
    )
    probability: Float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of training examples replaced by an augmented version each time they are drawn "
        "(seeded by `seed`, the epoch and the example: a resumed run draws the same ones).",
    )
    strength: Float = Field(
        0.1,
        gt=0,
        le=1,
        description="The share of an example changed: of its letters and digits (`char_noise`, `typos`), its words "
        "(`word_swap`, `word_delete`) or its word tokens (`neighbours`, each replaced by one of its 8 nearest "
        "neighbours). Perturbations without a rate (`case`, `punctuation`, ...) refuse another value.",
    )

    @model_validator(mode="after")
    def _only_when_on(self) -> AugmentSection:
        if self.method == "none":
            changed = [k for k in ("probability", "strength") if getattr(self, k) != type(self).model_fields[k].default]
            if changed:
                raise ValueError(f"robust.augment.{changed[0]} applies only with a robust.augment.method")
        return self


class RobustSection(_Section):
    adversarial: Literal["none", "fgm", "pgd"] = Field(
        "none",
        description="Adversarial training on the input embeddings: `fgm` (one step of norm `epsilon` along the "
        "loss gradient, Miyato et al.), `pgd` (`pgd_steps` projected steps inside the `epsilon` ball, Madry et "
        "al.); the loss is the clean loss plus `adversarial_weight` times the loss at the perturbed embeddings.",
    )
    epsilon: Float = Field(
        1.0,
        gt=0,
        description="L2 norm of each example's perturbation over all its (non-padding) token embeddings "
        "(`fgm`: exactly this norm; `pgd`: at most).",
    )
    pgd_steps: Int = Field(3, ge=1, description="`pgd`: gradient steps that find the perturbation.")
    pgd_alpha: Float | None = Field(
        None,
        gt=0,
        description="`pgd`: L2 norm of each step (each example's gradient normalised); null: "
        "2.5 * epsilon / pgd_steps (Madry et al.).",
    )
    adversarial_weight: Float = Field(1.0, gt=0, description="Weight of the adversarial loss added to the clean loss.")
    rdrop: Float = Field(
        0.0,
        ge=0,
        description="R-Drop's alpha (0: off): each batch runs twice with different dropout, the loss is the mean "
        "cross-entropy of both plus alpha times the mean of KL(P1||P2) and KL(P2||P1) (per label, Bernoulli, for "
        "multi-label data).",
    )
    label_smoothing: Float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the cross-entropy (0: off): the target puts 1 - s on the label and spreads "
        "s over all classes; for multi-label data each label's 0/1 target becomes s/2 / 1 - s/2.",
    )
    augment: AugmentSection = Field(default_factory=AugmentSection)

    @model_validator(mode="after")
    def _only_when_on(self) -> RobustSection:
        defaults = type(self).model_fields
        needs = {"epsilon": "fgm or pgd", "adversarial_weight": "fgm or pgd", "pgd_steps": "pgd", "pgd_alpha": "pgd"}
        for key, methods in needs.items():
            if getattr(self, key) != defaults[key].default and self.adversarial not in methods.split(" or "):
                raise ValueError(f"robust.{key} applies only with robust.adversarial={methods.replace(' or ', '|')}")
        return self


class Config(_Section):
    format_version: Int = Field(CONFIG_FORMAT_VERSION, description="Config format version.")
    output_dir: UserPath = Field(Path("runs/latest"), description="Run folder for checkpoints, model and report.")
    seed: Int = Field(42, description="Seed for data splits, initialisation, shuffling and dropout.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    peft: PeftSection = Field(default_factory=PeftSection)
    strategy: str = Field(
        "finetune",
        description="`finetune`: train the model with a classification head. `fewshot`: contrastive training "
        "on pairs of the few examples, then a logistic-regression head (SetFit). `zeroshot`: no training, labels "
        "scored by similarity to their descriptions (or by an NLI model). `prompt`: cloze-style fine-tuning of a "
        "masked-LM model with a template and verbalizer (PET). A strategy registered in "
        "`adaptext.training.strategy.STRATEGIES` is taken by its name.",
    )
    fewshot: FewshotSection = Field(default_factory=FewshotSection)
    zeroshot: ZeroshotSection = Field(default_factory=ZeroshotSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    tune: TuneSection = Field(default_factory=TuneSection)
    continual: ContinualSection = Field(default_factory=ContinualSection)
    ood: OodSection = Field(default_factory=OodSection)
    robust: RobustSection = Field(default_factory=RobustSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    self_training: SelfTrainingSection = Field(default_factory=SelfTrainingSection)
    calibrate: bool = Field(
        True,
        description="Fit a softmax temperature on the validation split after training (single-label) and fold it "
        "into the output layer: it changes confidence, never the label; ECE before and after is in the report. "
        "Few-shot and zero-shot runs keep the temperature they fit themselves.",
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        known = [*BUILTIN_STRATEGIES, *(n for n in STRATEGIES.names() if n not in BUILTIN_STRATEGIES)]
        if value not in known:
            raise ValueError(f"unknown strategy {value!r}; the strategies are: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (expected {CONFIG_FORMAT_VERSION})"
            )
        if self.data.test is not None and self.data.test_fraction is not None:
            raise ValueError("data.test and data.test_fraction are exclusive: give a test file or a fraction")
        if "{label}" not in self.zeroshot.template:
            raise ValueError(f"zeroshot.template must contain {{label}}, got {self.zeroshot.template!r}")
        for key in ("{text}", "{mask}"):
            if self.prompt.template.count(key) != 1:
                raise ValueError(f"prompt.template must contain {key} once, got {self.prompt.template!r}")
        if self.strategy != "finetune" and self.peft.method != "none":
            raise ValueError(f"strategy {self.strategy} trains without peft; set peft.method=none")
        if self.data.problem == "regression":
            self._check_regression()
        if self.self_training.rounds:
            self._check_self_training()
        if self.ood.method != "none" and self.data.multi_label:
            raise ValueError(
                "ood.method is for single-label models; a multi-label model already answers no label when none "
                "reaches train.threshold"
            )
        if self.model.pooling == "mean" and (self.peft.method != "none" or self.strategy != "finetune"):
            raise ValueError(
                "model.pooling=mean is for full fine-tuning (strategy finetune, peft.method none); "
                "few-shot and zero-shot always pool the mean, peft methods read [CLS]"
            )
        return self

    def _check_self_training(self) -> None:
        # A pseudo-label is one class whose probability clears the threshold: there is no such single choice for a
        # value (regression) or a set of labels (multi-label), and the pool holds single texts, not pairs.
        if self.data.unlabelled is None:
            raise ValueError("self_training.rounds needs data.unlabelled: the file of unlabelled texts to pseudo-label")
        if self.data.problem == "regression":
            raise ValueError("self_training pseudo-labels classes; data.problem=regression predicts a value")
        if self.data.multi_label:
            raise ValueError("self_training pseudo-labels one class per text; set data.multi_label=false")
        if self.data.text_pair_column is not None:
            raise ValueError("self_training reads single texts from data.unlabelled; text-pair tasks are not supported")

    def _check_regression(self) -> None:
        if self.data.multi_label:
            raise ValueError("data.problem=regression predicts one number per row; set data.multi_label=false")
        if self.ood.method != "none":
            raise ValueError("ood.method scores out-of-scope texts of a classifier; a regression model has none")
        if "metric_for_best" not in self.train.model_fields_set:
            self.train.metric_for_best = "mse"  # the regression loss on validation, lower is better


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn `key.path=value` strings into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        _set_dotted(tree, key.strip(), _parse_value(item, raw))
    return tree


def _parse_value(item: str, raw: str) -> Any:
    if not raw.strip():
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it") from None
    # YAML reads `|`, `>`, `&a` or `#x` as syntax, not text; a user typing them means the text.
    if value in (None, "") and raw.strip() not in ("null", "Null", "NULL", "~", "''", '""'):
        return raw
    return value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_valid_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _section_model(loc: tuple[int | str, ...], root: type[BaseModel]) -> type[BaseModel]:
    model: type[BaseModel] = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return model


def _field_path(loc: tuple[int | str, ...], root: type[BaseModel]) -> tuple[str, ...]:
    # pydantic appends union-member tags ("literal[...]", "dict[...]") to a location; keep only field names.
    path: list[str] = []
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            break
        path.append(str(part))
        field = model.model_fields.get(str(part))
        if field is None:  # an unknown key
            break
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return tuple(path)


def _format_error(error: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    root = root or Config
    problems = []
    for item in error.errors():
        loc = _field_path(item["loc"], root)
        dotted = ".".join(loc) or "(root)"
        if item["type"] == "extra_forbidden":
            section = _section_model(loc, root)
            prefix = ".".join(loc[:-1])
            valid = ", ".join(_valid_keys(section, f"{prefix}." if prefix else ""))
            problems.append(f"{dotted}: unknown key; valid keys here: {valid}")
        else:
            problem = f"{dotted}: {item['msg']} (got {item.get('input')!r})"
            if problem not in problems:
                problems.append(problem)
    return f"invalid configuration ({source}): " + "; ".join(problems)


def build_config(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config tree as a whole, raising `ConfigError` that names each bad dotted key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None


def load_yaml_model(path: str | Path, model: type[ModelT], *, what: str = "configuration") -> ModelT:
    """Read the YAML mapping at `path` and validate it as `model`; a `ConfigError` names the file and each bad key
    (with the valid keys for an unknown one). Used by the applications' own config files (router, monitor)."""
    path = expand_user(Path(path))
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the {what}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(tree).__name__}")
    try:
        return model.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_error(error, str(path), model)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply `key.path=value` overrides and validate the result.

    >>> cfg = load_config(None, ["data.train=train.csv", "train.learning_rate=5e-5"])
    >>> cfg.train.learning_rate
    5e-05
    """
    tree: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path).expanduser()
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded
    extra = parse_overrides(overrides) if overrides else {}
    if overrides:
        tree = _merge(tree, extra)
        source = f"{source} + overrides" if path is not None else source
    config = build_config(tree, source)
    if path is not None and "output_dir" not in extra:
        config = _follow_moved_run(config, path)
    return config


def _is_run_folder(folder: Path) -> bool:
    # What a training run leaves (see adaptext.run): its label names, and a checkpoint or a saved model.
    return (folder / "labels.json").is_file() and any(
        (folder / name).is_dir() for name in ("checkpoint", "checkpoint.old", "model", "model.old")
    )


def _follow_moved_run(config: Config, path: Path) -> Config:
    """A run folder's own `config.yaml` names the folder the run was made in; after `mv runs/a runs/b`, loading
    `runs/b/config.yaml` must mean the run in `runs/b` (to resume it, say), not a new run in the old place."""
    if path.name != "config.yaml" or not _is_run_folder(path.parent):
        return config
    folder = path.parent
    if config.output_dir.resolve() == folder.resolve():
        return config
    logger.info(
        "%s: the run was made in %s and now lies in %s; output_dir is %s", path, config.output_dir, folder, folder
    )
    return config.model_copy(update={"output_dir": folder})


def config_to_yaml(config: Config) -> str:
    """Serialise a resolved config (paths as strings) for the run folder."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def dotted_value(tree: dict[str, Any], dotted: str) -> Any:
    """The value of the dotted key `dotted` (`train.eval_steps`) in the nested `tree` (a dumped config or YAML);
    `KeyError` when a part is missing or its parent is not a section."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def default_value(dotted: str) -> Any:
    """The default of the config key `dotted` (as it appears in a dumped config), e.g. `train.eval_steps`."""
    return dotted_value(Config().model_dump(mode="json"), dotted)


def config_changes(saved: Config, given: Config, allowed: frozenset[str] = frozenset()) -> list[str]:
    """`key: old -> new` for every dotted key whose value differs between two configs, except the `allowed` keys;
    sorted by key. Sections are compared key by key, so `train.class_weights.neg` names the one weight that moved."""
    old, new = _flat_values(saved.model_dump(mode="json")), _flat_values(given.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in allowed)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


def _flat_values(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
