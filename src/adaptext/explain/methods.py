"""Attribution methods: how much each word of a text pushes the model towards one label.

Every method explains the same quantity, the log-odds of the explained label: `log(p / (1 - p))`, which is the
logit difference for a two-label model, the label's own logit for a multi-label (sigmoid) model, and for many
labels the label's logit against the log-sum-exp of the others. A positive attribution pushes towards the label.

- `ig`: integrated gradients (captum) on the input word embeddings, from a baseline where every token of the text
  is [PAD] (special tokens and the second text of a pair kept); attributions of a word's sub-words are summed,
  and all of them add up to the log-odds at the text minus at the baseline (completeness). Needs gradients and the
  text's own tokens: a transformers or adapter model, not an ONNX export and not a prompt or NLI model (their input
  is built around the text).
- `occlusion`: each word's attribution is the log-odds with the text minus the log-odds with that word removed
  (leave-one-out). Works with any model folder `Predictor` loads.
- `shap`: SHAP values from shap's partition explainer over the words (a word is masked by removing it); any model.

A new method is a subclass of `AttributionMethod` added to `EXPLAINERS`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from adaptext.core.errors import require_extra
from adaptext.core.registry import Registry
from adaptext.explain.words import Span, token_words, without_words, word_spans
from adaptext.inference.predictor import Predictor


def log_odds(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """The log-odds of every label (n, num_labels) from logits (n, num_labels)."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return logits
    num = logits.shape[-1]
    expanded = np.repeat(logits[:, None, :], num, axis=1)
    expanded[:, np.arange(num), np.arange(num)] = -np.inf
    peak = expanded.max(axis=-1, keepdims=True)
    others = peak[..., 0] + np.log(np.exp(expanded - peak).sum(axis=-1))
    return logits - others


def log_odds_torch(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """`log_odds` on a tensor, differentiable."""
    logits = logits.float()
    if multi_label:
        return logits
    num = logits.shape[-1]
    eye = torch.eye(num, dtype=torch.bool, device=logits.device)
    others = logits.unsqueeze(1).expand(-1, num, -1).masked_fill(eye, float("-inf")).logsumexp(-1)
    return logits - others


class AttributionMethod(ABC):
    """One way of scoring the words of texts."""

    def unsupported(self, predictor: Predictor) -> str | None:
        """Why this method cannot explain `predictor`'s model, or None when it can."""
        return None

    @abstractmethod
    def attribute(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        targets: Sequence[int],
        pairs: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        """For each text, one attribution per word of `spans[i]` towards label index `targets[i]`."""


def label_log_odds(predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None) -> np.ndarray:
    """The log-odds of every label for each text (n, num_labels), through the predictor (any model kind)."""
    logits = predictor.predict_logits(list(texts), list(pairs) if pairs is not None else None)
    return log_odds(logits, predictor.multi_label)


def text_log_odds(
    predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None, targets: Sequence[int]
) -> np.ndarray:
    """The log-odds of label `targets[i]` for each text (n,), through the predictor (any model kind)."""
    values = label_log_odds(predictor, texts, pairs)
    return values[np.arange(len(texts)), np.asarray(targets, dtype=int)]


def encode_with_offsets(predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None, **options: Any) -> Any:
    """The texts (and pairs) tokenized as the predictor reads them (truncated to its `max_length`), with each
    token's character offsets; `options` go to the tokenizer (padding, tensors)."""
    return predictor.tokenizer(
        list(texts),
        list(pairs) if pairs is not None else None,
        truncation="longest_first" if pairs is not None else True,
        max_length=predictor.max_length,
        return_offsets_mapping=True,
        **options,
    )


class Occlusion(AttributionMethod):
    def attribute(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        targets: Sequence[int],
        pairs: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        variants: list[str] = []
        variant_pairs: list[str] = []
        variant_targets: list[int] = []
        for i, (text, words) in enumerate(zip(texts, spans, strict=True)):
            variants += [text] + [without_words(text, words, {w}) for w in range(len(words))]
            variant_targets += [targets[i]] * (len(words) + 1)
            if pairs is not None:
                variant_pairs += [pairs[i]] * (len(words) + 1)
        values = text_log_odds(predictor, variants, variant_pairs if pairs is not None else None, variant_targets)
        out, cursor = [], 0
        for words in spans:
            full, dropped = values[cursor], values[cursor + 1 : cursor + 1 + len(words)]
            out.append((full - dropped).astype(np.float32))
            cursor += len(words) + 1
        return out


# Tokens per forward and backward pass of integrated gradients on a CPU. Every pass keeps its activations for the
# backward pass (about 0.1 MB a token for MiniLM in fp32): 64 sequences of 60 tokens raised a training run's peak
# memory by 300 MB after training, above training's own peak. 1,024 tokens raise it by about 160 MB, half what
# 2,048 do, in the same time (docs/benchmarks.md, "Training memory").
CPU_TOKENS_PER_PASS = 1024


class IntegratedGradients(AttributionMethod):
    def __init__(self, steps: int = 32, texts_per_batch: int = 8) -> None:
        self.steps = steps
        self.texts_per_batch = texts_per_batch

    def unsupported(self, predictor: Predictor) -> str | None:
        model = predictor.model
        if not isinstance(model, torch.nn.Module):
            return "the model is not a torch module (an ONNX export has no gradients); use occlusion or shap"
        if hasattr(model, "encode_texts"):
            return "a prompt or NLI model builds its input around the text; use occlusion or shap"
        get_embeddings = getattr(model, "get_input_embeddings", None)
        if get_embeddings is None or not isinstance(get_embeddings(), torch.nn.Embedding):
            return "the model has no input word-embedding layer to integrate over; use occlusion or shap"
        if not predictor.tokenizer.is_fast:
            return "the tokenizer has no character offsets (not a fast tokenizer); use occlusion or shap"
        return None

    def attribute(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        targets: Sequence[int],
        pairs: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.texts_per_batch):
            stop = start + self.texts_per_batch
            attributions, _ = self.attribute_tokens(
                predictor,
                texts[start:stop],
                targets[start:stop],
                pairs[start:stop] if pairs is not None else None,
                spans=spans[start:stop],
            )
            for i, (tokens, owners) in enumerate(attributions):
                words = spans[start + i]
                per_word = np.zeros(len(words), dtype=np.float32)
                np.add.at(per_word, owners[owners >= 0], tokens[owners >= 0])
                out.append(per_word)
        return out

    def attribute_tokens(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        targets: Sequence[int],
        pairs: Sequence[str] | None = None,
        spans: Sequence[Sequence[Span]] | None = None,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Per text: (attribution of each token, word index of each token or -1); and the convergence deltas
        (sum of attributions minus the log-odds difference between text and baseline), one per text. `spans` are
        the texts' words (cut here when not given)."""
        from captum.attr import LayerIntegratedGradients

        if spans is None:
            spans = [word_spans(text) for text in texts]
        model, tokenizer = predictor.model, predictor.tokenizer
        device = torch.device(model.device)
        encoded = encode_with_offsets(predictor, texts, pairs, padding=True, return_tensors="pt")
        ids = encoded["input_ids"].to(device)
        mask = encoded["attention_mask"].to(device)
        owners = []
        for i, text in enumerate(texts):
            sequence_ids = encoded.sequence_ids(i)
            owners.append(
                np.asarray(token_words(encoded["offset_mapping"][i].tolist(), spans[i], len(text), sequence_ids))
            )
        in_text = torch.as_tensor(np.stack(owners) >= 0, device=device)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        baseline = ids.masked_fill(in_text, pad_id)
        names = ["attention_mask"] + (["token_type_ids"] if "token_type_ids" in encoded else [])
        extra = tuple(encoded[name].to(device) for name in names)
        multi = predictor.multi_label

        def forward(input_ids: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=input_ids, **dict(zip(names, args, strict=True))).logits
            return log_odds_torch(logits, multi)

        model.eval()
        ig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        with torch.enable_grad():
            attributions, delta = ig.attribute(
                ids,
                baselines=baseline,
                additional_forward_args=extra,
                target=torch.as_tensor(list(targets), device=device),
                n_steps=self.steps,
                internal_batch_size=self.sequences_per_pass(predictor, len(texts), ids.shape[1], device),
                return_convergence_delta=True,
            )
        per_token = (attributions.sum(-1) * mask).detach().float().cpu().numpy()
        result = [(per_token[i], owners[i]) for i in range(len(texts))]
        return result, delta.detach().float().cpu().numpy()

    def sequences_per_pass(self, predictor: Predictor, texts: int, length: int, device: torch.device) -> int:
        """Interpolated sequences per forward and backward pass: as many as the predictor batches, and on a CPU at
        most `CPU_TOKENS_PER_PASS` tokens; captum takes at least one step of every text per pass."""
        sequences = max(self.steps, predictor.batch_size)
        if device.type == "cpu":
            sequences = min(sequences, CPU_TOKENS_PER_PASS // max(length, 1))
        return max(sequences, texts)


class Shap(AttributionMethod):
    def __init__(self, max_evals: int = 128, batch_size: int = 64) -> None:
        self.max_evals = max_evals
        self.batch_size = batch_size

    def attribute(
        self,
        predictor: Predictor,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        targets: Sequence[int],
        pairs: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        require_extra("shap", "the shap attribution method", "explain")
        with warnings.catch_warnings():  # shap's colour maps use matplotlib calls it deprecates, at import
            warnings.simplefilter("ignore")
            import shap

        out = []
        for i, text in enumerate(texts):
            words = spans[i]
            pair = pairs[i] if pairs is not None else None
            if len(words) <= 1:  # one player: its Shapley value is the whole difference (shap cannot split one)
                both = text_log_odds(predictor, [text, ""], None if pair is None else [pair, pair], [targets[i]] * 2)
                out.append(np.asarray([both[0] - both[1]] if words else [], dtype=np.float32))
                continue

            def model_fn(strings: Any, pair: str | None = pair) -> np.ndarray:
                batch = [str(s) for s in strings]
                return label_log_odds(predictor, batch, [pair] * len(batch) if pair is not None else None)

            masker = shap.maskers.Text(_WordTokenizer(), collapse_mask_token=True)
            explainer = shap.explainers.Partition(model_fn, masker, output_names=predictor.labels)
            evals = max(self.max_evals, 2 * len(words) + 1)
            result = explainer([text], max_evals=evals, batch_size=self.batch_size, silent=True)
            values = np.asarray(result.values[0])[:, targets[i]]
            if len(values) != len(words):
                raise RuntimeError(f"shap returned {len(values)} values for {len(words)} words of text {i}")
            out.append(values.astype(np.float32))
        return out


class _WordTokenizer:
    """The minimal tokenizer shap's text masker needs, cutting a text into adaptext's words."""

    mask_token = ""
    mask_token_id = -1

    def __call__(self, text: str, return_offsets_mapping: bool = False) -> dict[str, list[Any]]:
        spans = word_spans(text)
        return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


EXPLAINERS: Registry[AttributionMethod] = Registry("attribution method")
EXPLAINERS.add("ig", IntegratedGradients())
EXPLAINERS.add("occlusion", Occlusion())
EXPLAINERS.add("shap", Shap())
