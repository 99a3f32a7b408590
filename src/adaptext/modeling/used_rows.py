"""Fine-tuning only the rows of the word-embedding matrix that the training data uses.

A token that never appears in a training batch gets no gradient, so AdamW never moves its row (its two moments stay
zero); weight decay alone would shrink it. Yet a dense gradient and the two moments are full matrices: for MiniLM's
30,522 x 384 word embeddings, about 140 MB of training memory and a third of the optimizer's work. `UsedRowsEmbedding`
trains a compact copy of the used rows instead, and its state dict is the plain layer's (`weight`, with the trained
rows written in), so checkpoints, saved folders and plain `transformers` never see the difference. The training is
the dense one's to floating-point rounding; rows of tokens the training data never uses stay exactly as pretrained
(`train.embedding_rows`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

ROWS = "used_rows"  # the name of the trained rows' parameter


class UsedRowsEmbedding(nn.Embedding):
    """An input-embedding layer whose `used` rows (sorted token ids) are trained as their own parameter.

    The full matrix `weight` is frozen. The padding row is one of the trained rows, with no gradient as in the plain
    layer (weight decay still shrinks it, as there). A token id outside `used` in a batch that trains is an error,
    since the dense layer would have trained its row; evaluation reads every row.
    """

    used: torch.Tensor  # (rows,) token ids
    slot: torch.Tensor  # (vocab,) the row of each id in `used_rows`, or -1
    used_rows: nn.Parameter  # (rows, dim), named by ROWS

    def __init__(self, layer: nn.Embedding, used: torch.Tensor) -> None:
        super().__init__(
            layer.num_embeddings,
            layer.embedding_dim,
            padding_idx=layer.padding_idx,
            _weight=layer.weight.detach(),
            _freeze=True,
        )
        if layer.padding_idx is not None:
            used = torch.unique(torch.cat([used, torch.tensor([layer.padding_idx], device=used.device)]))
        slot = torch.full((layer.num_embeddings,), -1, dtype=torch.long, device=used.device)
        slot[used] = torch.arange(len(used), device=used.device)
        self.register_buffer("used", used, persistent=False)
        self.register_buffer("slot", slot, persistent=False)
        self.used_rows = nn.Parameter(self.weight[used].clone())
        self.pad_slot = None if layer.padding_idx is None else int(slot[layer.padding_idx])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (batch, seq_len) -> (batch, seq_len, dim)
        slots = self.slot[ids]
        if torch.is_grad_enabled() and self.training:
            # Checked where it costs no wait for a device; elsewhere the -1 index fails the lookup itself.
            if slots.device.type == "cpu" and bool((slots < 0).any()):
                missing = sorted(set(ids[slots < 0].tolist()))
                raise RuntimeError(
                    f"a training batch has {int((slots < 0).sum())} token(s) outside the {len(self.used)} trained "
                    f"embedding rows (ids {missing[:5]}{'...' if len(missing) > 5 else ''}): "
                    "train.embedding_rows=all trains every row"
                )
            return functional.embedding(slots, self.used_rows, self.pad_slot)
        found = slots >= 0
        trained = functional.embedding(slots.clamp(min=0), self.used_rows, self.pad_slot)
        if bool(found.all()):
            return trained
        return torch.where(found.unsqueeze(-1), trained, functional.embedding(ids, self.weight, self.padding_idx))

    @torch.no_grad()
    def write_rows(self) -> None:
        """Copy the trained rows into the full matrix."""
        self.weight.index_copy_(0, self.used, self.used_rows.detach().to(self.weight.dtype))

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        self.write_rows()
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        value = state_dict[key]
        if value.shape != self.weight.shape:
            error_msgs.append(f"size mismatch for {key}: {tuple(value.shape)} against {tuple(self.weight.shape)}")
            return
        with torch.no_grad():
            self.weight.copy_(value)
            self.used_rows.copy_(self.weight[self.used])
        if strict:
            unexpected_keys += [
                k for k in state_dict if k.startswith(prefix) and k != key and "." not in k[len(prefix) :]
            ]


def train_used_rows(model: nn.Module, token_ids: torch.Tensor) -> bool:
    """Make `model`'s word embeddings train only the rows of `token_ids` (every id its training batches hold).

    Returns False, changing nothing, where the layer is not a plain `nn.Embedding` or the matrix is tied to an
    output layer (a language-model head would train every row), or the model is an encoder-decoder."""
    if not isinstance(model, PreTrainedModel):
        return False
    layer = model.get_input_embeddings()
    if type(layer) is not nn.Embedding or layer.max_norm is not None or layer.sparse or layer.scale_grad_by_freq:
        return False
    if not layer.weight.requires_grad or model.get_output_embeddings() is not None:
        return False
    if getattr(model.config, "is_encoder_decoder", False):  # its decoder reads ids the texts do not hold
        return False
    used = torch.unique(token_ids.to(device=layer.weight.device, dtype=torch.long))
    compact = UsedRowsEmbedding(layer, used)
    compact.train(layer.training)
    model.set_input_embeddings(compact)
    logger.info(
        "word embeddings: the %d rows of the training data's tokens are trained, the other %d stay as pretrained",
        len(compact.used),
        layer.num_embeddings - len(compact.used),
    )
    return True


def used_rows_layer(model: nn.Module) -> UsedRowsEmbedding | None:
    """`model`'s word-embedding layer when it trains only its used rows, else None."""
    layer = model.get_input_embeddings() if isinstance(model, PreTrainedModel) else None
    return layer if isinstance(layer, UsedRowsEmbedding) else None


def compact_moments(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Cut optimizer moments of the whole word-embedding matrix, as a checkpoint of a run that trained every row
    holds, to the rows `model` trains. Exact: a row no batch used had no gradient, so its moments were zero.
    Returns whether there was anything to cut."""
    layer = used_rows_layer(model)
    if layer is None or layer.used_rows not in optimizer.state:
        return False
    state = optimizer.state[layer.used_rows]
    dense = [k for k, v in state.items() if torch.is_tensor(v) and v.dim() == 2 and v.shape[0] == layer.num_embeddings]
    for key in dense:
        state[key] = state[key][layer.used].clone()
    return bool(dense)


def restore_embedding(model: nn.Module) -> None:
    """Put a plain `nn.Embedding` with the trained rows written in back in place of a `UsedRowsEmbedding`."""
    layer = used_rows_layer(model)
    if layer is None:
        return
    assert isinstance(model, PreTrainedModel)  # where `used_rows_layer` finds the layer
    layer.write_rows()
    plain = nn.Embedding(
        layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx, _weight=layer.weight.detach()
    )
    plain.train(layer.training)
    model.set_input_embeddings(plain)
