"""Continued pre-training methods on unlabelled text: each builds the module it trains, turns encoded texts into
batches, scores a batch, and saves the encoder as a model folder that every strategy takes as `model.name`.

- `mlm`: masked-language modelling (BERT's 80/10/10 masking); a model saved without an MLM head gets a new one.
- `simcse`: unsupervised SimCSE (Gao et al., 2021): each text is encoded twice with different dropout, and each
  embedding must pick its own twin among the batch's (InfoNCE on cosine similarities / temperature).
- `tsdae`: TSDAE (Wang et al., 2021): a decoder initialised from the encoder's weights, reading only the pooled
  embedding through cross-attention, rebuilds each text from the embedding of a copy with tokens deleted.

The embedding of `simcse` and `tsdae` is the model's own pooling (the mean of the token states for
sentence-transformers encoders trained so, else [CLS]), the same one the strategies later read.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from adaptext.core.errors import AdaptextError
from adaptext.core.registry import Registry
from adaptext.core.task import SINGLE_LABEL
from adaptext.modeling.hub import resolve_model_name
from adaptext.modeling.pooling import sentence_pooling
from adaptext.training.objectives import Objective

# What a sentence-transformers folder holds besides the transformer: copied into the saved model folder, so that
# the pooling it was trained with (and `sentence_pooling`) is preserved.
SENTENCE_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence embeddings (batch, hidden) of token states (batch, tokens, hidden): their masked mean, or [CLS]."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-padded (len(rows), longest) tensor of token-id rows."""
    longest = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (longest - len(row)) for row in rows], dtype=torch.long)


class PretrainMethod(ABC):
    """One way of continuing pre-training. Register subclasses in `PRETRAIN_METHODS`."""

    name: ClassVar[str] = ""
    # The loss compares examples within a batch: a batch split across processes would change it.
    example_wise: ClassVar[bool] = True
    # The noise is dropout's alone (SimCSE): the held-out loss is then measured with dropout on, as it trains.
    dropout_noise: ClassVar[bool] = False

    def __init__(self, model_name: str, tokenizer: PreTrainedTokenizerBase, options: Any) -> None:
        self.model_name, self.tokenizer, self.options = model_name, tokenizer, options
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.pooling = "mean" if sentence_pooling(model_name) == "mean" else "cls"

    @abstractmethod
    def build(self) -> nn.Module:
        """The module to train, from `model_name`'s weights."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """A padded batch of encoded texts: `input_ids`, `attention_mask`, the same ids as `labels` (the engine
        hands them to the loss apart), and `index`. Nothing random here: the loader fetches a batch ahead of the
        step, so noise drawn here would not follow a checkpoint's random state; `loss` draws it."""
        ids = pad([item["input_ids"] for item in items], self.pad_id)
        attention = pad([[1] * len(item["input_ids"]) for item in items], 0)
        return {"input_ids": ids, "attention_mask": attention, "labels": ids.clone(), "index": index_of(items)}

    @abstractmethod
    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The mean loss of a `collate`d batch (`input_ids`, `attention_mask`); its noise is drawn from
        `generator`, else from torch's global generator, which checkpoints save and restore."""

    @abstractmethod
    def encoder(self, model: nn.Module) -> PreTrainedModel:
        """The part of the trained module that is saved."""

    def save(self, model: nn.Module, folder: Path) -> None:
        """Write the encoder and tokenizer into `folder`, with the base model's sentence-transformers files."""
        self.encoder(model).save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        copy_sentence_files(Path(resolve_model_name(self.model_name)), folder)


PRETRAIN_METHODS: Registry[type[PretrainMethod]] = Registry("pretraining method")


def copy_sentence_files(source: Path, target: Path) -> None:
    """Copy a sentence-transformers folder's module list and pooling settings (`1_Pooling/`, ...) from `source`."""
    if not source.is_dir():
        return
    for name in SENTENCE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    for module in source.glob("[0-9]_*"):
        if module.is_dir() and not any(module.glob("*.safetensors")) and not any(module.glob("*.bin")):
            shutil.copytree(module, target / module.name, dirs_exist_ok=True)


def has_mlm_head(model_name: str) -> bool:
    """Whether `model_name`'s saved weights include a masked-LM head (loading it as one adds no new weights)."""
    path = resolve_model_name(model_name)
    try:
        _, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise AdaptextError(f"model {model_name!r} cannot be loaded as a masked language model: {error}") from None
    return not info["missing_keys"]


@PRETRAIN_METHODS.register("mlm")
class MaskedLM(PretrainMethod):
    """Masked-language modelling: `mask_probability` of the tokens chosen; 80% become [MASK], 10% a random token,
    10% stay; the loss is the cross-entropy of the original tokens at the chosen places."""

    name = "mlm"

    def build(self) -> nn.Module:
        if self.tokenizer.mask_token_id is None:
            raise AdaptextError(f"model {self.model_name!r}: its tokenizer has no mask token, so mlm cannot train it")
        self.pooler = base_pooler(self.model_name)  # read once; every save of the model adds it
        return AutoModelForMaskedLM.from_pretrained(resolve_model_name(self.model_name))

    def mask(self, ids: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, targets): BERT's 80/10/10 rule at the chosen places (never a special token), and the
        original id at each chosen place, -100 elsewhere."""
        ids = ids.cpu()
        special = torch.isin(ids, torch.tensor(sorted(set(self.tokenizer.all_special_ids))))
        chosen = (torch.rand(ids.shape, generator=generator) < self.options.mask_probability) & ~special
        targets = torch.where(chosen, ids, torch.full_like(ids, -100))
        draw = torch.rand(ids.shape, generator=generator)
        masked = ids.clone()
        masked[chosen & (draw < 0.8)] = int(self.tokenizer.mask_token_id)
        swap = chosen & (draw >= 0.8) & (draw < 0.9)
        masked[swap] = torch.randint(len(self.tokenizer), (int(swap.sum()),), generator=generator)
        return masked, targets

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        device = batch["input_ids"].device
        masked, targets = self.mask(batch["input_ids"], generator)
        logits = model(input_ids=masked.to(device), attention_mask=batch["attention_mask"]).logits.float()
        if not bool((targets != -100).any()):  # no token chosen in a batch of very short texts
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1))

    def encoder(self, model: nn.Module) -> PreTrainedModel:
        return model  # type: ignore[return-value]  # saved with its MLM head, which `prompt` runs read

    def save(self, model: nn.Module, folder: Path) -> None:
        """The MLM model and, beside it, the base model's pooler: a masked-LM class has none, but a classifier
        reading [CLS] starts from it (MLM never trains it, so the base's weights are the right ones)."""
        super().save(model, folder)
        add_pooler(self.pooler, getattr(model, "base_model_prefix", "bert"), folder)


def base_pooler(model_name: str) -> dict[str, torch.Tensor]:
    """The pooler tensors stored in `model_name`'s safetensors files, by their name after `pooler.` (none when the
    checkpoint has no pooler: a classifier's would then start random anyway)."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(resolve_model_name(model_name)).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (a safetensors handle is no mapping)
                if "pooler." in key:
                    tensors[key.split("pooler.", 1)[1]] = handle.get_tensor(key)
    return tensors


def add_pooler(tensors: dict[str, torch.Tensor], prefix: str, folder: Path) -> None:
    """Add pooler `tensors` to the model saved in `folder`, under the base-model `prefix` (so `AutoModel` and
    sequence classifiers load them)."""
    from safetensors.torch import load_file, save_file

    target = folder / "model.safetensors"
    if not tensors or not target.is_file():
        return
    saved = load_file(str(target))
    saved.update({f"{prefix}.pooler.{name}": value.contiguous() for name, value in tensors.items()})
    save_file(saved, str(target), metadata={"format": "pt"})


@PRETRAIN_METHODS.register("simcse")
class SimCSE(PretrainMethod):
    """Unsupervised SimCSE: the batch is encoded twice (dropout differs), and the loss is the cross-entropy of
    picking each text's second embedding among all second embeddings, by cosine similarity / `temperature`."""

    name = "simcse"
    example_wise = False
    dropout_noise = True

    def build(self) -> nn.Module:
        return AutoModel.from_pretrained(resolve_model_name(self.model_name))

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        ids, attention = batch["input_ids"], batch["attention_mask"]  # the noise is dropout's
        n = ids.shape[0]
        twice = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([attention, attention]))
        embeddings = pool(twice.last_hidden_state, torch.cat([attention, attention]), self.pooling).float()
        first, second = F.normalize(embeddings[:n], dim=-1), F.normalize(embeddings[n:], dim=-1)
        similarity = first @ second.T / self.options.temperature  # (n, n); the diagonal holds the twins
        return F.cross_entropy(similarity, torch.arange(n, device=similarity.device))

    def encoder(self, model: nn.Module) -> PreTrainedModel:
        return model  # type: ignore[return-value]


class Autoencoder(nn.Module):
    """TSDAE's encoder and its decoder (a causal LM with cross-attention, initialised from the encoder)."""

    def __init__(self, encoder: PreTrainedModel, decoder: PreTrainedModel) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder


@PRETRAIN_METHODS.register("tsdae")
class TSDAE(PretrainMethod):
    """TSDAE: the encoder reads each text with `deletion` of its tokens deleted; a decoder that sees only the pooled
    embedding rebuilds the whole text (cross-entropy of each next token)."""

    name = "tsdae"

    def build(self) -> nn.Module:
        path = resolve_model_name(self.model_name)
        encoder = AutoModel.from_pretrained(path)
        config = AutoConfig.from_pretrained(path, is_decoder=True, add_cross_attention=True)
        try:
            decoder = AutoModelForCausalLM.from_pretrained(path, config=config)
        except ValueError as error:
            raise AdaptextError(
                f"model {self.model_name!r} has no decoder form with cross-attention for tsdae ({error}); "
                "use pretrain.method=simcse or mlm"
            ) from None
        return Autoencoder(encoder, decoder)

    def delete(self, ids: list[int], generator: torch.Generator | None) -> list[int]:
        """The text's tokens with each inner token deleted with probability `deletion` (at least one kept)."""
        first, inner, last = ids[:1], ids[1:-1], ids[-1:]
        if not inner:
            return ids
        keep = (torch.rand(len(inner), generator=generator) >= self.options.deletion).tolist()
        kept = [token for token, k in zip(inner, keep, strict=True) if k]
        if not kept:
            kept = [inner[int(torch.randint(len(inner), (1,), generator=generator))]]
        return first + kept + last

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        assert isinstance(model, Autoencoder)
        original, original_attention = batch["input_ids"], batch["attention_mask"]
        lengths = original_attention.sum(dim=1).tolist()
        noisy = [self.delete(row[: int(n)].tolist(), generator) for row, n in zip(original.cpu(), lengths, strict=True)]
        device = original.device
        ids = pad(noisy, self.pad_id).to(device)
        attention = pad([[1] * len(row) for row in noisy], 0).to(device)
        hidden = model.encoder(input_ids=ids, attention_mask=attention).last_hidden_state
        embedding = pool(hidden, attention, self.pooling).unsqueeze(1)  # (batch, 1, hidden)
        out = model.decoder(
            input_ids=original,
            attention_mask=original_attention,
            encoder_hidden_states=embedding,
            encoder_attention_mask=torch.ones(embedding.shape[:2], dtype=attention.dtype, device=attention.device),
        )
        logits = out.logits[:, :-1].float()  # each position predicts the next token
        targets = original.masked_fill(original_attention == 0, -100)[:, 1:]  # padding is no target
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def encoder(self, model: nn.Module) -> PreTrainedModel:
        assert isinstance(model, Autoencoder)
        return model.encoder


def index_of(items: list[dict[str, Any]]) -> torch.Tensor:
    return torch.tensor([item["index"] for item in items], dtype=torch.long)


class MethodObjective(Objective):
    """A pretraining method as the engine's objective: the loss of a batch and the texts it averages over."""

    def __init__(self, method: PretrainMethod) -> None:
        super().__init__(SINGLE_LABEL)
        self.method = method
        self.example_wise = method.example_wise  # type: ignore[misc]

    def loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        return self.method.loss(model, inputs | {"labels": targets}), int(inputs["input_ids"].shape[0])
