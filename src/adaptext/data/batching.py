"""Tokenising once, grouping examples of similar length, and padding each batch only as far as it needs."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from adaptext.core.task import SINGLE_LABEL, Task
from adaptext.data.examples import TextData
from adaptext.data.labels import label_targets

TOKENIZE_CHUNK = 2048


@dataclass
class Encoded(Dataset[dict[str, Any]]):
    """Token ids per example (unpadded) and, when labelled, a label target per example.

    `targets` holds a class index per example, a multi-hot list for multi-label data, or a value for regression.
    """

    features: dict[str, list[list[int]]]
    targets: list[int] | list[list[float]] | list[float] | None = None

    def __len__(self) -> int:
        return len(self.features["input_ids"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {name: values[index] for name, values in self.features.items()}
        item["index"] = index
        if self.targets is not None:
            item["labels"] = self.targets[index]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.features["input_ids"]]

    def token_ids(self, pad_token_id: int) -> torch.Tensor:
        """(distinct ids,) every token id a padded batch of these examples can hold, sorted."""
        ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in self.features["input_ids"]] + [[pad_token_id]])
        return torch.from_numpy(np.unique(ids))


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
) -> dict[str, list[list[int]]]:
    """Tokenise in large chunks (the fast tokenizer parallelises inside a call), truncating, without padding."""
    features: dict[str, list[list[int]]] = {}
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        stop = start + TOKENIZE_CHUNK
        chunk = tokenizer(
            list(texts[start:stop]),
            list(pairs[start:stop]) if pairs is not None else None,
            truncation="longest_first" if pairs is not None else True,
            max_length=max_length,
        )
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            if name in chunk:
                features.setdefault(name, []).extend(chunk[name])
    return features


# Texts a direct encoder must tokenize exactly as the tokenizer's own call does before it is used: empty, spaces,
# accents and other scripts, a special token's spelling, emoji, control characters and a text past any max_length.
PARITY_PROBES = (
    "",
    " ",
    "I lost my card!",
    "  Leading and trailing spaces  ",
    "Déjà vu, naïve café: ÀÉÎÕÜ",
    "[CLS] <s> </s> [SEP] [MASK] <mask> <pad> [UNK]",
    "数据 中文 テスト 한국어 Ελληνικά русский עברית العربية",
    "emoji 🙂👍🏽 and tab\tnew\nline\x00 end",
    "don't won't it's O'Neil's 3.14 1,000,000 e-mail@example.com https://example.com/a?b=c",
    " ".join(["long"] * 700),
)


class DirectEncoder:
    """Tokenises like `tokenize`, calling the fast tokenizer's Rust encoder directly.

    The tokenizer's own call spends as long in Python (argument checks, truncation settings, `BatchEncoding`) as in
    the encoder, which is most of a one-text prediction with a fast model. This reads the same encoder, copied with
    its truncation set once, and is only used after giving the same ids as the tokenizer's call on
    `PARITY_PROBES` (`for_tokenizer` returns None otherwise, and for tokenizers without a Rust encoder).
    """

    def __init__(self, backend: Any, names: tuple[str, ...]) -> None:
        self.backend = backend
        self.names = names  # the keys the tokenizer's call returns, in its order

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DirectEncoder | None:
        """A direct encoder giving `tokenize(tokenizer, ..., max_length)`'s output, or None when none does."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch"):
            return None
        backend = copy.deepcopy(backend)  # the tokenizer's call resets truncation on its own encoder
        backend.no_padding()
        backend.enable_truncation(
            max_length, stride=0, strategy="longest_first", direction=getattr(tokenizer, "truncation_side", "right")
        )
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        expected = tokenize(tokenizer, PARITY_PROBES, None, max_length)
        encoder = cls(backend, tuple(expected))
        pairs = PARITY_PROBES[1:] + PARITY_PROBES[:1]
        if encoder(PARITY_PROBES, None) != expected:
            return None
        if encoder(PARITY_PROBES, pairs) != tokenize(tokenizer, PARITY_PROBES, pairs, max_length):
            return None
        return encoder

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None) -> dict[str, list[list[int]]]:
        """Token ids (and attention masks, token types where the tokenizer gives them) per text, unpadded."""
        inputs: Sequence[Any] = texts if pairs is None else list(zip(texts, pairs, strict=True))
        encodings = self.backend.encode_batch(inputs, add_special_tokens=True, is_pretokenized=False)
        features: dict[str, list[list[int]]] = {}
        for name in self.names:
            if name == "input_ids":
                features[name] = [e.ids for e in encodings]
            elif name == "attention_mask":
                features[name] = [e.attention_mask for e in encodings]
            elif name == "token_type_ids":
                features[name] = [e.type_ids for e in encodings]
        return features


def encode(
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    labels: list[str],
    max_length: int,
    task: Task,
) -> Encoded:
    """Tokenise `data` once and map its label names to training targets."""
    features = tokenize(tokenizer, data.texts, data.pairs, max_length)
    targets = None if data.labels is None else label_targets(data, labels, task).tolist()
    return Encoded(features=features, targets=targets)


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of examples with similar length, so padding stays small.

    Each epoch: shuffle, cut into mega-batches of `batch_size * 50`, sort each by length, cut into batches,
    shuffle the batches. The order is a pure function of (seed, epoch), which makes resuming exact.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        if not self.shuffle:
            order.sort(key=lambda i: self.lengths[i], reverse=True)
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = random.Random(self.seed * 100_003 + self.epoch)
        rng.shuffle(order)
        mega = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class ShardedBatches(Sampler[list[int]]):
    """One process's share of every batch of `batches`, for data-parallel training across `world` processes.

    Each global batch is cut into `world` contiguous slices (sizes differ by at most one) and process `rank` gets
    slice `rank`, so `train.batch_size` stays the global batch whatever the number of processes. A batch smaller
    than `world` (a last batch of one example on two processes) is padded by repeating its own examples, so every
    process takes every step. The order is the wrapped sampler's: a pure function of (seed, epoch).
    """

    def __init__(self, batches: Sampler[list[int]], rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.batches, self.rank, self.world = batches, rank, world
        self.epochs_per_pass = getattr(batches, "epochs_per_pass", 1.0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) < self.world:
                batch = [batch[i % len(batch)] for i in range(self.world)]
            size = len(batch)
            yield batch[self.rank * size // self.world : (self.rank + 1) * size // self.world]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


class Collator:
    """Pads a list of encoded examples to the longest one in the batch."""

    def __init__(self, pad_token_id: int, task: Task = SINGLE_LABEL) -> None:
        self.pad_token_id = pad_token_id
        self.task = task

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for name, pad in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if name in items[0]:
                rows = [item[name] + [pad] * (width - len(item[name])) for item in items]
                batch[name] = torch.tensor(rows, dtype=torch.long)
        batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        if "labels" in items[0]:
            # multi-hot rows or regression values, else class ids
            dtype = torch.float32 if self.task.multi_label or self.task.regression else torch.long
            batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=dtype)
        return batch


def map_batches(
    encoded: Encoded,
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    pad_token_id: int,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """`fn`'s output (batch, width) for every example of `encoded`, in example order, as float32 (examples, width).

    `fn` takes a padded batch of token ids on `device` (no labels). Batches go longest first, so each pads little
    and a memory problem shows up at once."""
    if len(encoded) == 0:
        raise ValueError("no examples to run")
    collate = Collator(pad_token_id)
    lengths = encoded.lengths
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        items = [{k: v[i] for k, v in encoded.features.items()} | {"index": i} for i in idx]
        batch = {k: v.to(device) for k, v in collate(items).items() if k != "index"}
        values = fn(batch).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(order), values.shape[1]), dtype=np.float32)
        out[idx] = values
    assert out is not None
    return out


def _find(sequence: list[int], part: list[int], start: int = 0) -> int:
    for i in range(start, len(sequence) - len(part) + 1):
        if sequence[i : i + len(part)] == part:
            return i
    raise ValueError(f"token ids {part} not found in {sequence}")


@dataclass(frozen=True)
class SpecialTokens:
    """Where a tokenizer puts its special tokens around one text (`prefix a suffix`) and a pair of texts
    (`pair_prefix a middle b pair_suffix`), read off the tokenizer itself so that token ids built piece by piece
    (a prompt template, an NLI hypothesis) get exactly the layout the tokenizer would give."""

    prefix: list[int]
    suffix: list[int]
    pair_prefix: list[int]
    middle: list[int]
    pair_suffix: list[int]
    second_type: int  # token type id of the second text (BERT: 1), or 0 where types are not used

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
        a = tokenizer("a", add_special_tokens=False)["input_ids"]
        b = tokenizer("b", add_special_tokens=False)["input_ids"]
        single = tokenizer("a")["input_ids"]
        i = _find(single, a)
        pair = tokenizer("a", "b")
        ids = pair["input_ids"]
        j = _find(ids, a)
        k = _find(ids, b, j + len(a))
        types = pair.get("token_type_ids")
        return cls(
            prefix=single[:i],
            suffix=single[i + len(a) :],
            pair_prefix=ids[:j],
            middle=ids[j + len(a) : k],
            pair_suffix=ids[k + len(b) :],
            second_type=int(types[k]) if types else 0,
        )

    def single(self, ids: list[int]) -> list[int]:
        return self.prefix + ids + self.suffix

    def pair(self, first: list[int], second: list[int]) -> tuple[list[int], list[int]]:
        """Input ids and token type ids of a text pair."""
        head = self.pair_prefix + first + self.middle
        tail = second + self.pair_suffix
        return head + tail, [0] * len(head) + [self.second_type] * len(tail)

    @property
    def pair_overhead(self) -> int:
        return len(self.pair_prefix) + len(self.middle) + len(self.pair_suffix)
