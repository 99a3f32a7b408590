"""Making a static-embedding student: its first embedding table from the teacher, then training on soft labels.

The table starts from the teacher's input word embeddings reduced by PCA to the student's width, or (`init:
teacher`) as model2vec makes one (`model2vec.distill.distill_from_model`): every token of the teacher's vocabulary
run alone through the teacher's encoder, the outputs reduced by PCA. A teacher model2vec cannot read (an adapter, a
prompt model) falls back to its input word embeddings; one with neither (an ONNX export) starts from random vectors.
Training then fits table and head to the teacher's probabilities at a temperature (Hinton et al., 2015)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812  (torch's own spelling)
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptext.core.console import progress_bar
from adaptext.modeling.static import StaticClassifier, StaticConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentSettings:
    """How the student is made.

    Attributes:
        dim: Width of each token embedding (at most the teacher's width when the table starts from the teacher).
        hidden: Width of the head's hidden layer; 0 for a linear head.
        context: How many preceding tokens scale each token's embedding (`StaticConfig.context_window`); 0 for the
            plain bag of tokens. 3 by default: on SST-2 dev it scored 0.8177, 0.8188 and 0.8188 (seeds 0-2) against
            0.8028, 0.7856 and 0.7936 without, and on BANKING77's held-out 20% 0.9189 and 0.9229 (seeds 0-1) against
            0.9149 and 0.9164 (docs/distill.md).
        pooling: `mean+max` (the tokens' mean and elementwise maximum) or `mean`. With the context table, on
            SST-2 dev `mean+max` scored 0.8291 and 0.8234 (seeds 0-1) against `mean`'s 0.8177 and 0.8188, on
            BANKING77 0.9229 against 0.9189 (seed 0); without the context table, 0.8050 against 0.8028 on SST-2.
        epochs: Passes over the distillation texts.
        batch_size: Texts per optimizer step.
        learning_rate: AdamW's learning rate for the table and the head.
        loss: `kl`, the KL divergence between the teacher's and the student's probabilities at `temperature`
            (Hinton et al., 2015), or `mse`, the squared difference of their logits (Tang et al., 2019), centred on
            each text's mean logit for single-label data, where a common shift changes no probability.
        temperature: Softmax temperature of both teacher and student in the `kl` loss. 1 by default: on SST-2 dev
            it scored 0.8358 over seeds 0-4 against 0.8282 at 2 (higher in four seeds, equal in one), on BANKING77
            0.9189 against 0.9182, on CLINC150 0.9423 against 0.9402 and on Financial PhraseBank 0.8027 against
            0.8045 (seeds 0-2; docs/benchmarks.md, "The distillation temperature").
        label_weight: Weight of the training labels' own loss (`label_loss`), added to the distillation loss on the
            texts whose label is known (the run's training texts); 0 learns from the teacher alone.
        augment: Changed copies of each training text added to the distillation texts.
        init: `embeddings` (the teacher's input word embeddings, PCA'd), `teacher` (model2vec's table from the
            teacher's encoder where it can read it, else as `embeddings`) or `random`. `embeddings` is the default:
            it scored as `teacher` did (BANKING77 0.9144 against 0.9129, SST-2 0.7959 against 0.7982) and costs
            a second where model2vec's pass over a 30k vocabulary costs a minute or two on 2 cores.
        seed: Seed of the augmentation, the initial head and the batch order.
    """

    dim: int = 256
    hidden: int = 512
    context: int = 3
    pooling: str = "mean+max"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 5e-3
    loss: str = "kl"
    temperature: float = 1.0
    label_weight: float = 0.0
    augment: int = 2
    init: str = "embeddings"
    seed: int = 0


INITS = ("teacher", "embeddings", "random")
LOSSES = ("kl", "mse")


def initial_table(model: Any, tokenizer: PreTrainedTokenizerBase, settings: StudentSettings) -> tuple[np.ndarray, str]:
    """The student's first embedding table (vocab, width) and how it was made (`model2vec`, `embeddings`, `random`).

    The width is `settings.dim`, or the teacher's own width when that is smaller.
    """
    vocab_size = len(tokenizer)
    if settings.init == "teacher" and _encoder_of(model) is not None:
        return _model2vec_table(_encoder_of(model), tokenizer, settings.dim), "model2vec"  # type: ignore[arg-type]
    embeddings = _input_embeddings(model)
    if settings.init in ("teacher", "embeddings") and embeddings is not None:
        return _pca(embeddings[:vocab_size], settings.dim), "embeddings"
    if settings.init != "random":
        logger.warning("the teacher (%s) has no word embeddings to start from: the table starts random", type(model))
    rng = np.random.default_rng(settings.seed)
    return rng.normal(0.0, 0.1, size=(vocab_size, settings.dim)).astype(np.float32), "random"


def _encoder_of(model: Any) -> PreTrainedModel | None:
    # A transformers sequence classifier's encoder (BertModel, ...): model2vec runs it on one token at a time.
    # Wrapped models (peft, prompt, NLI scorers) are left to their input embeddings.
    if not isinstance(model, PreTrainedModel) or model.base_model is model:
        return None
    base = model.base_model
    return base if isinstance(base, PreTrainedModel) else None


def _input_embeddings(model: Any) -> np.ndarray | None:
    get = getattr(model, "get_input_embeddings", None)
    if get is None:
        inner = getattr(model, "model", None)  # prompt and NLI wrappers hold the transformers model here
        get = getattr(inner, "get_input_embeddings", None)
    layer = get() if callable(get) else None
    weight = getattr(layer, "weight", None)
    return weight.detach().float().cpu().numpy() if isinstance(weight, torch.Tensor) else None


def _model2vec_table(encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dim: int) -> np.ndarray:
    from model2vec.distill import distill_from_model

    # float32 and no SIF weighting: the table is trained further, and SIF's weights assume a vocabulary ordered by
    # frequency, which a WordPiece vocabulary is not.
    fast = cast(Any, tokenizer)  # a fast tokenizer; model2vec's annotation names transformers' backend class
    static = distill_from_model(
        encoder, fast, pca_dims=dim, sif_coefficient=None, quantize_to="float32", device=str(encoder.device)
    )
    vectors = np.asarray(static.embedding, dtype=np.float32)
    table = np.zeros((len(tokenizer), vectors.shape[1]), dtype=np.float32)
    # model2vec drops some tokens ([unusedN]) and renumbers the rest: map its rows back to the teacher's ids.
    teacher_ids = tokenizer.get_vocab()
    for token, row in static.tokenizer.get_vocab().items():
        index = teacher_ids.get(token)
        if index is not None and index < len(table):
            table[index] = vectors[row]
    return table


def _pca(vectors: np.ndarray, dim: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    width = min(dim, vectors.shape[1])
    return PCA(n_components=width, random_state=0).fit_transform(vectors).astype(np.float32)


def build_student(
    table: np.ndarray, labels: list[str], problem_type: str, settings: StudentSettings, extra: dict[str, Any]
) -> StaticClassifier:
    """A student whose embedding table is `table` (vocab, width) and whose head is new."""
    torch.manual_seed(settings.seed)
    config = StaticConfig(
        vocab_size=table.shape[0],
        dim=table.shape[1],
        id2label=dict(enumerate(labels)),
        hidden=settings.hidden,
        problem_type=problem_type,
        context_window=settings.context,
        pooling=settings.pooling,
        extra=extra,
    )
    student = StaticClassifier(config)
    with torch.no_grad():
        # Scaled to unit mean norm: PCA outputs of different teachers differ in scale by orders of magnitude, and
        # one learning rate should suit them all.
        weights = torch.from_numpy(table)
        norm = weights.norm(dim=1).mean().clamp_min(1e-6)
        student.embeddings.weight.copy_(weights / norm)
    return student


def soft_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, multi_label: bool
) -> torch.Tensor:
    """The distillation loss of a batch: KL divergence from the teacher's probabilities at `temperature` to the
    student's (softmax over labels, or each label's sigmoid for multi-label), times temperature² so its gradients
    keep their size (Hinton et al., 2015). It is 0 when the student matches the teacher.
    """
    t = temperature
    if multi_label:
        # (batch, labels): both outcomes of each label, as a 2-way distribution
        student_log = torch.stack([F.logsigmoid(student_logits / t), F.logsigmoid(-student_logits / t)], dim=-1)
        teacher_log = torch.stack([F.logsigmoid(teacher_logits / t), F.logsigmoid(-teacher_logits / t)], dim=-1)
        loss = F.kl_div(student_log, teacher_log, log_target=True, reduction="sum") / student_logits.shape[0]
    else:
        student_log = F.log_softmax(student_logits / t, dim=-1)
        teacher_log = F.log_softmax(teacher_logits / t, dim=-1)
        loss = F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")
    return loss * t * t


def logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """The `mse` distillation loss of a batch: the squared difference of the logits, summed over labels and averaged
    over texts. Single-label logits are centred on each text's mean first (softmax ignores a common shift);
    multi-label logits are each label's own sigmoid input and stay as they are."""
    if not multi_label:
        student_logits = student_logits - student_logits.mean(dim=-1, keepdim=True)
        teacher_logits = teacher_logits - teacher_logits.mean(dim=-1, keepdim=True)
    return ((student_logits - teacher_logits) ** 2).sum(dim=-1).mean()


def label_loss(student_logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """The training labels' loss of a batch: `labels` (texts, labels) holds each text's one-hot (single-label) or
    multi-hot label, or NaN for a text without one. Cross-entropy, or each label's binary cross-entropy summed over
    labels, averaged over the texts with a label; 0 when none has one."""
    known = ~labels.isnan().any(dim=-1)
    if not bool(known.any()):
        return student_logits.new_zeros(())
    logits, targets = student_logits[known], labels[known]
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=-1).mean()
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def train_student(
    student: StaticClassifier,
    ids: list[list[int]],
    teacher_logits: np.ndarray,
    settings: StudentSettings,
    *,
    multi_label: bool,
    labels: np.ndarray | None = None,
) -> list[float]:
    """Fit `student` to `teacher_logits` (texts, labels) on the token ids of the texts; return each epoch's mean
    loss. With `settings.label_weight` > 0, `labels` (texts, labels: one- or multi-hot, NaN rows for texts without a
    label) adds `label_loss`. A progress bar counts the steps."""
    if settings.label_weight > 0 and labels is None:
        raise ValueError("label_weight > 0 needs the texts' labels")
    # Sparse gradients for the table: a batch touches a few thousand of its rows, and a dense update of all of
    # them (30k x 256 for a BERT vocabulary) costs 7x the step (bench: 420 against 60 ms per step on 2 cores).
    tables = [student.embeddings.weight] + ([student.context.weight] if student.context is not None else [])
    head = [p for p in student.parameters() if all(p is not table for table in tables)]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SparseAdam(tables, lr=settings.learning_rate),
        torch.optim.AdamW(head, lr=settings.learning_rate, weight_decay=0.0),
    ]
    # Random batches, laid end to end without padding (`pooled_packed`), so a step costs its tokens. Batches of
    # texts of similar length, the padded form's way to that cost, scored lower on SST-2 dev: 0.8222, 0.8257, 0.8234
    # (seeds 0-2) against 0.8222, 0.8360, 0.8303 (BANKING77 0.9204, 0.9179, 0.9214 against 0.9204, 0.9159, 0.9184),
    # in less time (docs/benchmarks.md, "Random batches without padding").
    steps_per_epoch = math.ceil(len(ids) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
    flat = torch.tensor([token for row in ids for token in row], dtype=torch.long)
    starts = torch.cumsum(lengths, dim=0) - lengths
    order = torch.Generator().manual_seed(settings.seed)
    schedules = [
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(total, 1)))
        for optimizer in optimizers
    ]
    targets = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    known = torch.from_numpy(np.asarray(labels, dtype=np.float32)) if settings.label_weight > 0 else None
    losses: list[float] = []
    student.train()
    student.embeddings.sparse = True
    if student.context is not None:
        student.context.sparse = True
    # One thread: the steps are too small to gain from more, and threads that share busy cores thrash (an epoch of
    # 38k SST-2 texts took 80 s at 2 threads and 4 s at 1 on 2 shared cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bar = progress_bar(total=total, desc="distill", unit="step")
    try:
        for _ in range(settings.epochs):
            running, done = 0.0, 0
            for batch in torch.randperm(len(ids), generator=order).split(settings.batch_size):
                tokens = flat[_token_positions(starts[batch], lengths[batch])]
                logits = student.packed_logits(tokens, lengths[batch])
                if settings.loss == "mse":
                    loss = logit_loss(logits, targets[batch], multi_label)
                else:
                    loss = soft_loss(logits, targets[batch], settings.temperature, multi_label)
                if known is not None:
                    loss = loss + settings.label_weight * label_loss(logits, known[batch], multi_label)
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer, schedule in zip(optimizers, schedules, strict=True):
                    optimizer.step()
                    schedule.step()
                running += loss.item() * len(batch)
                done += len(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{running / done:.4f}")
            losses.append(running / max(len(ids), 1))
            logger.info("distill: epoch %d of %d, loss %.4f", len(losses), settings.epochs, losses[-1])
    finally:
        bar.close()
        torch.set_num_threads(threads)
        student.embeddings.sparse = False
        if student.context is not None:
            student.context.sparse = False
    student.eval()
    return losses


def _token_positions(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Positions in the flat token list of the texts starting at `starts` with `lengths`, one text after another."""
    text_start = torch.cumsum(lengths, dim=0) - lengths
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(text_start, lengths)
    return torch.repeat_interleave(starts, lengths) + offsets
