"""A static-embedding classifier: a token-embedding table, pooled over the text's tokens, read by a small head.

It answers like a transformers sequence classifier (`model(**inputs).logits`, `config.id2label`,
`config.problem_type`), so `Predictor`, `evaluate`, `predict` and `serve` use it unchanged; `adaptext distill`
makes one from a trained classifier.

The folder layout is model2vec's: `model.safetensors` holds the table under `embeddings` (plus the head's weights
under `head.*`), `config.json` has `model_type: model2vec` and `hidden_dim`, and `tokenizer.json` is the tokenizer.
So `model2vec.StaticModel.from_pretrained(folder)` reads the same folder as a plain static embedding model (the
learnt table, without the head).

>>> model = StaticClassifier(StaticConfig(vocab_size=100, dim=8, id2label={0: "neg", 1: "pos"}))
>>> model(input_ids=torch.tensor([[1, 5, 2]]), attention_mask=torch.ones(1, 3)).logits.shape
torch.Size([1, 2])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import special
from torch import nn
from torch.nn import functional as F  # noqa: N812  (torch's own spelling)
from torch.nn.modules import module as module_hooks
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "model2vec"  # what model2vec's loader expects in config.json
EMBEDDINGS = "embeddings"  # the table's name in model.safetensors, model2vec's
POOLINGS = ("mean", "mean+max")
CONTEXT = "context"  # the context table's name in model.safetensors (model2vec does not read it)
SQRT_HALF = np.float32(np.sqrt(0.5))
# The most texts `bag_logits` computes in numpy for a plain bag (any number with the context table or the maximum).
# Texts/s by batch size, numpy against torch, medians of alternated passes (bench/predict_paths.py), plain bags:
# BANKING77's student 1.55x for 1 text, 1.13x for 2, 1.25x for 4, 1.06x for 8, 0.80x for 64 (a scratch run before
# it: 1.58x, 1.24x, 1.08x, 0.82x, 0.74x); SST-2's 1.52x, 1.22x, 1.45x, 1.39x, 1.10x.
NUMPY_MAX_TEXTS = 4


@dataclass
class StaticConfig:
    """The shape and label names of a `StaticClassifier`, saved as `config.json`.

    Attributes:
        vocab_size: Rows of the embedding table: the tokenizer's vocabulary size.
        dim: Width of each token embedding.
        id2label: Label name per output index.
        hidden: Width of the head's hidden layer; 0 for a linear head on the averaged embedding.
        problem_type: transformers' `problem_type` (`single_label_classification` or `multi_label_classification`).
        dropout: Dropout on the averaged embedding while training.
        context_window: How many preceding tokens change each token's embedding before the mean: a token's vector
            is scaled elementwise by 1 plus the sum of the `context` rows of the tokens before it (so "not" can turn
            the sign of "good"'s directions). 0 is the plain bag of tokens that model2vec reads.
        pooling: `mean` (the tokens' mean vector) or `mean+max` (the mean and the elementwise maximum over the
            tokens, side by side: the head reads twice the width).
    """

    vocab_size: int
    dim: int
    id2label: dict[int, str]
    hidden: int = 0
    problem_type: str = "single_label_classification"
    dropout: float = 0.1
    context_window: int = 0
    pooling: str = "mean"
    extra: dict[str, Any] = field(default_factory=dict)  # written to config.json as they are (teacher, ...)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def to_json(self) -> dict[str, Any]:
        """The keys of `config.json`: model2vec's (`model_type`, `hidden_dim`, `normalize`) and the classifier's."""
        fields = asdict(self)
        extra = fields.pop("extra")
        return (
            extra
            | {
                "model_type": MODEL_TYPE,
                "architectures": ["StaticClassifier"],
                "hidden_dim": self.dim,
                "normalize": False,  # the head reads the plain mean; model2vec would otherwise rescale each vector
                "adaptext_static": True,
                "label2id": self.label2id,
            }
            | fields
            | {"id2label": {str(k): v for k, v in self.id2label.items()}}
        )

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StaticConfig:
        """The config saved as `raw` (the parsed `config.json`); `KeyError` or `ValueError` when it is not one."""
        written = {"model_type", "architectures", "hidden_dim", "normalize", "adaptext_static", "label2id"}
        return cls(
            vocab_size=int(raw["vocab_size"]),
            dim=int(raw["dim"]),
            id2label={int(k): str(v) for k, v in raw["id2label"].items()},
            hidden=int(raw.get("hidden", 0)),
            problem_type=str(raw.get("problem_type") or "single_label_classification"),
            dropout=float(raw.get("dropout", 0.1)),
            context_window=int(raw.get("context_window", 0)),
            pooling=str(raw.get("pooling", "mean")),
            extra={k: v for k, v in raw.items() if k not in written and k not in cls.__dataclass_fields__},
        )


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `folder`, read without its `config.json` (a model2vec config transformers does not
    know, and would warn about)."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder, config=PretrainedConfig())
    return tokenizer


def is_static_folder(folder: Path) -> bool:
    """True when `folder/config.json` is a static classifier's."""
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and raw.get("adaptext_static") is True


# _numpy_weights' cache: the parameters' storage pointers, the table, the context table or None, and per head layer
# its (weight transposed, bias) or None for the GELU
NumpyWeights = tuple[Any, np.ndarray, np.ndarray | None, list[tuple[np.ndarray, np.ndarray] | None]]


class StaticClassifier(nn.Module):
    """Mean of the token embeddings (padding excluded), then a linear or one-hidden-layer head.

    With `config.context_window` w > 0 a second table, `context` (vocab, dim, zeros at first), lets the w tokens
    before each token scale it: vector(t) = embeddings[t] * (1 + sum of context[t - k] for k = 1..w), then the mean
    (and, with `config.pooling` `mean+max`, the elementwise maximum beside it).
    It costs one more row look-up per token, and it is where a bag of tokens learns negation: without it, "not good"
    and "good, not bad" are the same bag.
    """

    def __init__(self, config: StaticConfig) -> None:
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling {config.pooling!r} is not one of {', '.join(POOLINGS)}")
        self.config = config
        # mode="sum" with per-token weights 1/length: the masked mean in one fused kernel.
        self.embeddings = nn.EmbeddingBag(config.vocab_size, config.dim, mode="sum")
        self.context: nn.Embedding | None = None
        if config.context_window > 0:
            self.context = nn.Embedding(config.vocab_size, config.dim)
            nn.init.zeros_(self.context.weight)  # a new student starts as the plain bag of tokens
        self.dropout = nn.Dropout(config.dropout)
        layers: list[nn.Module] = []
        if config.hidden:
            layers += [nn.Linear(self.features, config.hidden), nn.GELU()]
        layers.append(nn.Linear(config.hidden or self.features, config.num_labels))
        self.head = nn.Sequential(*layers)
        # numpy views of the weights for bag_logits, keyed by the parameters' storage (_numpy_weights)
        self._numpy_cache: NumpyWeights | None = None

    @property
    def features(self) -> int:
        """Width of the pooled vector the head reads."""
        return self.config.dim * (2 if self.config.pooling == "mean+max" else 1)

    @property
    def plain_bag(self) -> bool:
        """True when the pooled vector is the plain mean of the table's rows (no context table, no maximum)."""
        return self.context is None and self.config.pooling == "mean"

    @property
    def device(self) -> torch.device:
        return self.embeddings.weight.device

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled embedding of each text: (batch, tokens) -> (batch, features).

        The padded form of `pooled_packed`, for `forward`: the transformers-style call with padded ids and their
        mask, which code written for any classifier makes (the audit reads the head's input through it; `Predictor`
        calls `bag_logits`). A test holds the two equal. `adaptext export` refuses a student, so nothing traces it.
        """
        mask = torch.ones_like(input_ids, dtype=torch.float32) if attention_mask is None else attention_mask.float()
        weights = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        if self.plain_bag:
            return self.embeddings(input_ids, per_sample_weights=weights)
        vectors = F.embedding(input_ids, self.embeddings.weight, sparse=self.embeddings.sparse)
        if self.context is not None:
            # padding (left or right) adds nothing to its neighbours' scale
            rows = self.context(input_ids) * mask[..., None]
            scale = torch.ones_like(vectors)
            for k in range(1, min(self.config.context_window, input_ids.shape[1] - 1) + 1):
                scale[:, k:] += rows[:, :-k]
            vectors = vectors * scale
        mean = torch.einsum("btd,bt->bd", vectors, weights)
        if self.config.pooling == "mean":
            return mean
        # the maximum over a text's tokens; a text without tokens pools to zeros, as its mean does
        highest = vectors.masked_fill(mask[..., None] == 0, float("-inf")).amax(dim=1)
        highest = torch.where(mask.sum(dim=1, keepdim=True) > 0, highest, torch.zeros_like(highest))
        return torch.cat([mean, highest], dim=-1)

    def pooled_packed(self, flat_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The pooled embedding of texts laid end to end: `flat_ids` (tokens,) holds each text's ids after the
        previous text's, `lengths` (batch,) how many belong to each. -> (batch, features).

        Nothing is padded, so a batch costs its tokens whatever their lengths: training draws random batches at the
        cost of batches grouped by length, where a padded batch of phrases and long sentences was mostly padding.
        A text without tokens pools to zeros.
        """
        lengths = lengths.to(device=flat_ids.device, dtype=torch.long)
        starts = torch.cumsum(lengths, dim=0) - lengths
        if self.plain_bag:
            # mode="sum" with per-token weights 1/length: the mean in one fused kernel
            weights = (1.0 / lengths.clamp_min(1)).to(self.embeddings.weight.dtype).repeat_interleave(lengths)
            return self.embeddings(flat_ids, starts, per_sample_weights=weights)
        text = torch.repeat_interleave(torch.arange(len(lengths), device=flat_ids.device), lengths)
        vectors = F.embedding(flat_ids, self.embeddings.weight, sparse=self.embeddings.sparse)
        if self.context is not None:
            rows = self.context(flat_ids)
            position = torch.arange(len(flat_ids), device=flat_ids.device) - starts[text]
            scale = torch.ones_like(vectors)
            for k in range(1, min(self.config.context_window, len(flat_ids) - 1) + 1):
                # the row k tokens back, where that token is in the same text
                scale[k:] += rows[:-k] * (position[k:] >= k).unsqueeze(-1).to(rows.dtype)
            vectors = vectors * scale
        batch = (len(lengths), vectors.shape[1])
        mean = vectors.new_zeros(batch).index_add(0, text, vectors) / lengths.clamp_min(1).unsqueeze(-1)
        if self.config.pooling == "mean":
            return mean
        # the elementwise maximum over each text's tokens, from -inf (a start of 0 would tie with a maximum of 0 and
        # take half its gradient); texts without tokens pool to zeros
        index = text.unsqueeze(-1).expand_as(vectors)
        highest = vectors.new_full(batch, float("-inf")).scatter_reduce(0, index, vectors, "amax")
        highest = torch.where(lengths.unsqueeze(-1) > 0, highest, torch.zeros_like(highest))
        return torch.cat([mean, highest], dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **_: Any,  # token_type_ids and the like: a bag of tokens has no use for them
    ) -> SequenceClassifierOutput:
        # (batch, tokens) -> (batch, dim) -> (batch, num_labels)
        logits = self.head(self.dropout(self.pooled(input_ids, attention_mask)))
        return SequenceClassifierOutput(logits=logits)

    def bag_logits(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits (batch, num_labels) of unpadded token-id lists: `forward`'s on their padded batch (in eval mode),
        without building the padding and its mask (`packed_logits`); what `Predictor` calls.

        A batch of at most `NUMPY_MAX_TEXTS` texts on the CPU, without gradients, hooks or autocast, runs the same
        arithmetic in numpy (`_numpy_logits`): each torch call on a one-text batch costs tens of microseconds of
        dispatch, as long as its arithmetic. Larger batches stay in torch, whose kernels are faster on them.
        """
        # With the context table or the maximum, numpy (one text at a time) was faster than torch at every batch size
        # measured, first against a padded batch (1.62x and 1.28x at 64 texts, 2.31x and 2.25x at 1, SST-2's and
        # BANKING77's students, bench/results/predict_paths-*-context.json), then against the texts laid end to end
        # (`packed_logits`: 1.94x and 1.21x at 64, 2.59x and 2.92x at 1, predict_paths-*-packed.json).
        numpy_share = NUMPY_MAX_TEXTS if self.plain_bag else len(ids)
        if len(ids) <= numpy_share and self._plain_cpu_inference():
            return torch.from_numpy(self._numpy_logits(ids))
        flat = torch.tensor([token for row in ids for token in row], dtype=torch.long, device=self.device)
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long, device=self.device)
        return self.packed_logits(flat, lengths)

    def packed_logits(self, flat_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_labels) of texts laid end to end (`pooled_packed`'s arguments): `forward` without the
        padding, and what the student trains on."""
        return self.head(self.dropout(self.pooled_packed(flat_ids, lengths)))

    def _plain_cpu_inference(self) -> bool:
        # What _numpy_logits reproduces: eval mode (no dropout), float32 on the CPU, no autograd or autocast, and no
        # hook that expects to see a module run (an out-of-scope detector's FeatureTap on the output layer).
        if self.training or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return False
        table = self.embeddings.weight
        if table.device.type != "cpu" or table.dtype != torch.float32:
            return False
        if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
            return False
        modules = (self, self.embeddings, self.dropout, self.head, *self.head)
        if self.context is not None:
            modules += (self.context,)
        if any(m._forward_hooks or m._forward_pre_hooks for m in modules):
            return False
        return all(
            isinstance(layer, nn.Linear) or (isinstance(layer, nn.GELU) and layer.approximate == "none")
            for layer in self.head
        )

    def _numpy_weights(self) -> NumpyWeights:
        """The table, the context table (or None), and per head layer its (weight transposed, bias) or None for the
        GELU: numpy views of the parameters' memory, so they follow in-place changes; made again when a parameter's
        storage is replaced."""
        key = tuple(param.data_ptr() for param in self.parameters())
        if self._numpy_cache is None or self._numpy_cache[0] != key:
            layers: list[tuple[np.ndarray, np.ndarray] | None] = []
            for layer in self.head:
                if isinstance(layer, nn.Linear):
                    # (in, out) for x @ weight; a transposed view multiplies as fast as a contiguous copy
                    layers.append((layer.weight.detach().numpy().T, layer.bias.detach().numpy()))
                else:
                    layers.append(None)
            context = self.context.weight.detach().numpy() if self.context is not None else None
            self._numpy_cache = (key, self.embeddings.weight.detach().numpy(), context, layers)
        return self._numpy_cache

    def _numpy_logits(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """`bag_logits` in numpy: the rows of the table averaged per text, then the head's layers."""
        _, table, context, layers = self._numpy_weights()
        if not self.plain_bag:
            x = np.stack([self._numpy_pooled(row, table, context) for row in ids])
            return self._numpy_head(x, layers)
        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        flat = np.array([token for row in ids for token in row], dtype=np.int64)
        filled = lengths > 0
        starts = np.cumsum(lengths) - lengths
        if filled.all():
            x = np.add.reduceat(table[flat], starts, axis=0) / lengths[:, None].astype(np.float32)
        else:  # a text without tokens pools to zeros, as in torch (reduceat cannot sum an empty range)
            x = np.zeros((len(ids), table.shape[1]), dtype=np.float32)
            if filled.any():
                sums = np.add.reduceat(table[flat], starts[filled], axis=0)
                x[filled] = sums / lengths[filled, None].astype(np.float32)
        return self._numpy_head(x, layers)

    def _numpy_pooled(self, row: Sequence[int], table: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        # `pooled` for one text, with the context table and the maximum; a text without tokens pools to zeros
        if not row:
            return np.zeros(self.features, dtype=np.float32)
        tokens = np.asarray(row, dtype=np.int64)
        vectors = table[tokens]
        if context is not None:
            rows = context[tokens]
            scale = np.ones_like(rows)
            for k in range(1, min(self.config.context_window, len(tokens) - 1) + 1):
                scale[k:] += rows[:-k]
            vectors = vectors * scale
        mean = vectors.sum(axis=0) / np.float32(len(tokens))
        return mean if self.config.pooling == "mean" else np.concatenate([mean, vectors.max(axis=0)])

    @staticmethod
    def _numpy_head(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray] | None]) -> np.ndarray:
        for linear in layers:  # a linear layer's (weight, bias), or None for the exact GELU: x * Phi(x)
            x = x @ linear[0] + linear[1] if linear is not None else 0.5 * x * (1.0 + special.erf(x * SQRT_HALF))
        return np.ascontiguousarray(x, dtype=np.float32)

    def save(self, folder: Path) -> None:
        """Write `config.json` and `model.safetensors` (the table as `embeddings`) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {EMBEDDINGS: self.embeddings.weight.detach().cpu().contiguous()}
        if self.context is not None:
            tensors[CONTEXT] = self.context.weight.detach().cpu().contiguous()
        tensors |= {f"head.{name}": value.detach().cpu().contiguous() for name, value in self.head.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        text = json.dumps(self.config.to_json(), indent=2, ensure_ascii=False) + "\n"
        (folder / CONFIG_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> StaticClassifier:
        """The classifier saved in `folder`; `ValueError` or `OSError` when the files are missing or do not fit."""
        try:
            config = StaticConfig.from_json(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{folder / CONFIG_FILE}: not a static classifier's config ({error!r})") from None
        tensors = load_file(str(folder / WEIGHTS_FILE))
        model = cls(config)
        head = {name.removeprefix("head."): value for name, value in tensors.items() if name.startswith("head.")}
        try:
            model.embeddings.weight.data.copy_(tensors[EMBEDDINGS])
            if model.context is not None:
                model.context.weight.data.copy_(tensors[CONTEXT])
            model.head.load_state_dict(head)
        except (KeyError, RuntimeError) as error:
            raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not fit the config ({error})") from None
        return model
