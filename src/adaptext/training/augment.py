"""Training-data augmentation on the fly, seeded and exact on resume (`robust.augment`).

Every time the engine draws a training example, it is replaced by an augmented version with probability
`robust.augment.probability`. Whether, and how, depends only on (seed, epoch, example): the batches carry the epoch
in their indices (`EpochBatches`), and `AugmentedExamples` draws from a generator seeded with all three, so an
interrupted run resumed from its checkpoint sees the same augmented examples as an uninterrupted one. The run
length in steps and the batch order are those of the plain run; only the examples' contents change.

Augmenters:
- a text perturbation of `adaptext.data.perturb` (`char_noise`, `word_swap`, `word_delete`, or any other registered
  there, such as `typos`): the example's text (and pair) is perturbed and tokenised again; `robust.augment.strength`
  is the perturbation's `rate` (the share of characters or words it changes) when it takes one;
- `neighbours`: a share `robust.augment.strength` of the example's word tokens is replaced, each by one of its
  `NEIGHBOURS` nearest tokens (cosine) in the model's own input-embedding matrix, among tokens of the same kind
  (word start or continuation, letters only). It needs no word list and no download, and speaks the model's
  vocabulary in any language.

>>> dataset, batches = augmented(encoded, batches, augmenter, probability=0.5, seed=42)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from adaptext.core.config import AugmentSection
from adaptext.core.errors import ConfigError
from adaptext.data.batching import Encoded, tokenize
from adaptext.data.examples import TextData
from adaptext.data.perturb import PERTURBATIONS

logger = logging.getLogger(__name__)

# Nearest neighbours each token may be replaced by (`neighbours`).
NEIGHBOURS = 8

# Examples' replacement vocabulary is computed in chunks of this many tokens (a (chunk, vocab) matrix at a time).
SIMILARITY_CHUNK = 1024

# What an augmenter does to one example: (its encoded item, its position, a seeded generator) -> the new item.
Augmenter = Callable[[dict[str, Any], int, random.Random], dict[str, Any]]


class EpochBatches(Sampler[list[int]]):
    """The batches of `batches` with each index shifted by `epoch * size`, so the dataset knows the epoch."""

    def __init__(self, batches: Any, size: int) -> None:
        self.batches, self.size, self.epoch = batches, size, 0
        self.epochs_per_pass = getattr(batches, "epochs_per_pass", 1.0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        offset = self.epoch * self.size
        for batch in self.batches:
            yield [offset + index for index in batch]

    def __len__(self) -> int:
        return len(self.batches)


class AugmentedExamples(Dataset[dict[str, Any]]):
    """`encoded`'s examples, each replaced by `augment`'s version of it with probability `probability`; keys are
    `epoch * len(encoded) + position` (from `EpochBatches`), and the item's `index` stays the position."""

    def __init__(self, encoded: Encoded, augment: Augmenter, probability: float, seed: int) -> None:
        self.encoded, self.augment, self.probability, self.seed = encoded, augment, probability, seed

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(key, len(self.encoded))
        item = self.encoded[index]
        rng = random.Random(f"{self.seed}:{epoch}:{index}")  # a string seed is hashed the same in every process
        if rng.random() < self.probability:
            item = self.augment(item, index, rng)
        return item


def augmented(
    encoded: Encoded, batches: Any, augment: Augmenter, probability: float, seed: int
) -> tuple[AugmentedExamples, EpochBatches]:
    """The training dataset and batches of a run that augments `encoded` on the fly."""
    return AugmentedExamples(encoded, augment, probability, seed), EpochBatches(batches, len(encoded))


def text_augmenter(
    perturb: Callable[[str, random.Random], str],
    data: TextData,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> Augmenter:
    """An augmenter that perturbs an example's text (and its pair) and tokenises the result again."""

    def augment(item: dict[str, Any], index: int, rng: random.Random) -> dict[str, Any]:
        text = perturb(data.texts[index], rng)
        pair = [perturb(data.pairs[index], rng)] if data.pairs is not None else None
        features = tokenize(tokenizer, [text], pair, max_length)
        return item | {name: values[0] for name, values in features.items()}

    return augment


def token_kind(token: str) -> tuple[str, str] | None:
    """(the marker of a sub-word piece: `##`, `Ġ`, `▁` or none, the word part) for a token made of letters; None
    for any other token (punctuation, digits, special and unused tokens)."""
    for marker in ("##", "Ġ", "▁"):
        if token.startswith(marker):
            word = token[len(marker) :]
            return (marker, word) if word.isalpha() else None
    return ("", token) if token.isalpha() else None


def embedding_neighbours(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, token_ids: set[int], k: int = NEIGHBOURS
) -> dict[int, list[int]]:
    """For each of `token_ids` that is a word token, its `k` nearest tokens of the same kind by cosine similarity
    of the model's input embeddings (itself excluded)."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if not isinstance(embeddings, nn.Embedding):
        raise ConfigError(
            f"robust.augment.method=neighbours: {type(model).__name__} has no input-embedding matrix to read"
        )
    weight = embeddings.weight.detach().float().cpu()
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), weight.shape[0]))))
    kinds = [None if i in special else token_kind(token) for i, token in enumerate(vocab)]
    neighbours: dict[int, list[int]] = {}
    for marker in sorted({kind[0] for kind in kinds if kind is not None}):
        pool = torch.tensor([i for i, kind in enumerate(kinds) if kind is not None and kind[0] == marker])
        sources = [i for i in sorted(token_ids) if i < len(kinds) and (kinds[i] or ("?",))[0] == marker]
        if len(pool) <= k or not sources:
            continue
        candidates = torch.nn.functional.normalize(weight[pool], dim=-1)
        for start in range(0, len(sources), SIMILARITY_CHUNK):
            chunk = torch.tensor(sources[start : start + SIMILARITY_CHUNK])
            similarity = torch.nn.functional.normalize(weight[chunk], dim=-1) @ candidates.T  # (chunk, pool)
            similarity[pool[None, :] == chunk[:, None]] = -2.0  # never the token itself
            top = pool[similarity.topk(k, dim=-1).indices]  # (chunk, k) token ids
            neighbours.update(zip(chunk.tolist(), top.tolist(), strict=True))
    return neighbours


def neighbour_augmenter(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, encoded: Encoded, strength: float
) -> Augmenter:
    """An augmenter that replaces a share `strength` of an example's word tokens by embedding neighbours."""
    used = {token for ids in encoded.features["input_ids"] for token in ids}
    neighbours = embedding_neighbours(model, tokenizer, used)
    logger.info("augmentation: embedding neighbours of %d of the %d training tokens", len(neighbours), len(used))

    def augment(item: dict[str, Any], index: int, rng: random.Random) -> dict[str, Any]:
        ids = list(item["input_ids"])
        positions = [i for i, token in enumerate(ids) if token in neighbours]
        if not positions:
            return item
        count = max(1, round(strength * len(positions)))
        for position in rng.sample(positions, count):
            ids[position] = rng.choice(neighbours[ids[position]])
        return item | {"input_ids": ids}

    return augment


def augment_methods() -> list[str]:
    """The names `robust.augment.method` takes (besides `none`): the text perturbations, and `neighbours`."""
    return [*PERTURBATIONS.names(), "neighbours"]


def check_augment(settings: AugmentSection) -> None:
    """A `ConfigError` naming `robust.augment.method` when it is not an augmenter, or `robust.augment.strength`
    when it is set for a perturbation that has no rate to set."""
    if settings.method == "none":
        return
    if settings.method not in augment_methods():
        raise ConfigError(
            f"robust.augment.method: unknown augmenter {settings.method!r}; use none, {', '.join(augment_methods())}"
        )
    default = type(settings).model_fields["strength"].default
    if settings.method != "neighbours" and not has_rate(settings.method) and settings.strength != default:
        raise ConfigError(
            f"robust.augment.strength: the {settings.method} perturbation has no strength to set; remove it"
        )


def has_rate(name: str) -> bool:
    """Whether the text perturbation `name` takes a `rate` (the share of characters or words it changes)."""
    return "rate" in inspect.signature(PERTURBATIONS.get(name).apply).parameters


def build_augmenter(
    settings: AugmentSection,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    encoded: Encoded,
    max_length: int,
) -> Augmenter:
    """The augmenter `settings` names, for the training data `data` (encoded as `encoded`)."""
    check_augment(settings)
    if settings.method == "neighbours":
        return neighbour_augmenter(model, tokenizer, encoded, settings.strength)
    perturb: Any = PERTURBATIONS.get(settings.method).apply  # `(text, rng, /)`, with a keyword `rate` or not
    apply = functools.partial(perturb, rate=settings.strength) if has_rate(settings.method) else perturb
    return text_augmenter(apply, data, tokenizer, max_length)
