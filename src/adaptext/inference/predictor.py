"""Loading a saved classifier and predicting: batched, length-sorted, with optional sliding windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from adaptext.core.console import progress_bar
from adaptext.core.device import default_device
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo, find_model_dir, is_adapter_folder
from adaptext.core.task import task_of_problem_type
from adaptext.data.batching import Collator, DirectEncoder, tokenize
from adaptext.inference.loaders import loader_for
from adaptext.inference.ood import FeatureTap, OodDetector, load_detector, output_layer
from adaptext.modeling.adapters import (
    build_base,
    load_adapter_model,
    new_classifier,
    same_base,
    share_base,
)


@dataclass(slots=True)  # no per-instance dict: a large batch makes one of these per text
class Prediction:
    """One text's prediction.

    `label` / `score`: the most probable label and its probability (a regression model: `score`, the name of its
    one output, and the predicted value; `labels` is empty). `labels`: the predicted label set
    (single-label: `[label]`; multi-label: every label whose probability reaches the threshold, best first,
    possibly empty). `scores`: every label's probability.

    With an out-of-scope detector saved beside the model, `ood_score` is the share of in-scope validation texts
    that looked more in scope than this one (0 to 1); a text beyond the detector's threshold gets the detector's
    label (`ood.label`, e.g. `unknown`) as `label` and `labels`, with `ood_score` as its `score`.
    """

    label: str
    score: float
    labels: list[str]
    scores: dict[str, float]
    ood_score: float | None = None


class Predictor:
    """A classifier ready to predict.

    >>> predictor = Predictor.from_dir("runs/quickstart")  # doctest: +SKIP
    >>> predictor.predict(["I lost my card"])[0].label  # doctest: +SKIP
    'lost_or_stolen_card'
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 128,
        threshold: float = 0.5,
        batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.threshold = threshold
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        # Probabilities are softmax(logits / temperature): the calibration fitted after training (1: none).
        self.temperature = 1.0
        self.detector: OodDetector | None = None  # the out-of-scope detector saved beside the model, if any
        # What adaptext saved beside the model (`adaptext.json`): column names, threshold, max_length.
        self.info = ModelInfo()
        id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.task = task_of_problem_type(model.config.problem_type)
        pad_id = tokenizer.pad_token_id
        self._collate = Collator(pad_token_id=0 if pad_id is None else pad_id)
        # The tokenizer's encoder called directly, with the tokenizer and max_length it was checked for (None: not
        # usable). The tokenizer itself is held, not its id: a replaced tokenizer's id can be reused by a new one.
        self._direct: tuple[PreTrainedTokenizerBase, int, DirectEncoder | None] | None = None

    @property
    def multi_label(self) -> bool:
        """True when each text gets any number of labels (a sigmoid per label), False for one label per text."""
        return self.task.multi_label

    def require_classifier(self, what: str) -> None:
        """Raise an `AdaptextError` saying that `what` needs labels, when this model predicts a value (regression)."""
        if self.task.regression:
            raise AdaptextError(f"{what} works on a classifier's labels; this model predicts a value (regression)")

    @property
    def metadata(self) -> dict[str, Any]:
        """The keys of the `adaptext.json` saved beside the model, as saved (empty when there is none);
        `info` has them typed, with their defaults."""
        return self.info.to_dict()

    @classmethod
    def from_dir(cls, path: str | Path, *, device: str | None = None, batch_size: int = 64) -> Predictor:
        """Load from a run folder, a model folder or an adapter folder saved by adaptext (or any
        sequence-classification folder). An adapter is loaded on its base model, unmerged.

        The kind of folder decides how it is loaded: see `adaptext.inference.loaders`."""
        model_dir = find_model_dir(path)
        info = ModelInfo.read(model_dir)
        loader = loader_for(model_dir, info)
        try:
            tokenizer = loader.load_tokenizer(model_dir)
            model = loader.load(model_dir, info)
        except (OSError, ValueError) as error:
            raise AdaptextError(f"{model_dir}: cannot load the model: {error}") from None
        return cls._ready(
            model, tokenizer, info, device=device or loader.device, batch_size=batch_size, folder=model_dir
        )

    @classmethod
    def _ready(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        info: ModelInfo,
        *,
        device: str | None,
        batch_size: int,
        folder: Path,
    ) -> Predictor:
        model.to(default_device(device))  # type: ignore[arg-type]  # transformers types `to` for dtype-or-device
        model.eval()
        predictor = cls(
            model,
            tokenizer,
            max_length=info.max_length or min(tokenizer.model_max_length, 512),
            threshold=info.threshold,
            batch_size=batch_size,
        )
        predictor.info = info
        if info.calibration and not info.calibration.get("folded"):  # folded: the logits are already divided
            predictor.temperature = float(info.calibration["temperature"])
        predictor.detector = load_detector(folder, info)
        if predictor.detector is not None and predictor.detector.needs_features and predictor.feature_layer() is None:
            raise AdaptextError(
                f"{folder}: the {predictor.detector.method} out-of-scope detector reads the model's features, "
                "which this kind of model does not give"
            )
        return predictor

    def feature_layer(self) -> torch.nn.Linear | None:
        """The model's output layer, whose input are the features out-of-scope detectors read (None if it has none)."""
        if not isinstance(self.model, torch.nn.Module):
            return None
        return output_layer(self.model, len(self.labels))

    def _logits(self, features: dict[str, list[list[int]]], progress: bool) -> np.ndarray:
        return self._forward(features, progress, None)[0]

    @torch.inference_mode()
    def _forward(
        self, features: dict[str, list[list[int]]], progress: bool, layer: torch.nn.Linear | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (n, num_labels) in input order, and with `layer` the inputs it took (n, hidden)."""
        # Longest first, so each batch pads little and a memory problem shows up at once.
        n = len(features["input_ids"])
        order = sorted(range(n), key=lambda i: len(features["input_ids"][i]), reverse=True)
        out = np.zeros((n, len(self.labels)), dtype=np.float32)
        tap = FeatureTap(layer) if layer is not None else None
        hidden: np.ndarray | None = None
        device = torch.device(self.model.device)
        autocast = (
            torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        if getattr(self.model, "training", True):  # eval() walks every module, a cost one-text calls notice
            self.model.eval()
        # A bag-of-tokens model (the static student) reads the unpadded ids as they are: no padding, no masks.
        bag = getattr(self.model, "bag_logits", None)
        batches = range(0, n, self.batch_size)
        try:
            for start in progress_bar(batches, show=progress, desc="predict", unit="batch"):
                idx = order[start : start + self.batch_size]
                if bag is not None:
                    with autocast:
                        logits = bag([features["input_ids"][i] for i in idx])
                else:
                    items = [{name: values[i] for name, values in features.items()} | {"index": i} for i in idx]
                    batch = self._collate(items)
                    inputs = {k: v.to(device) for k, v in batch.items() if k not in ("index", "labels")}
                    with autocast:
                        logits = self.model(**inputs).logits
                out[idx] = logits.float().cpu().numpy()
                if tap is not None:
                    taken = tap.pop()
                    if hidden is None:
                        hidden = np.zeros((n, taken.shape[-1]), dtype=np.float32)
                    hidden[idx] = taken
        finally:
            if tap is not None:
                tap.close()
        return out, hidden

    def _to_probs(self, logits: np.ndarray) -> np.ndarray:
        return self.task.scores(logits / self.temperature)

    def predict_with_features(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        features: bool = True,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Raw logits and probabilities (n, num_labels), and with `features` the inputs of the model's output layer
        (n, hidden), all in input order."""
        _check_texts(texts, pairs)
        layer = self.feature_layer() if features else None
        if features and layer is None:
            raise AdaptextError("this model has no output layer whose features could be read")
        if not texts:
            empty = np.zeros((0, len(self.labels)), dtype=np.float32)
            return empty, empty, np.zeros((0, layer.in_features), dtype=np.float32) if layer is not None else None
        logits, hidden = self._forward(self._features(texts, pairs), progress, layer)
        return logits, self._to_probs(logits), hidden

    def ood_scores(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (n, num_labels) and the detector's raw out-of-scope scores (n,), in input order."""
        if self.detector is None:
            raise AdaptextError("this model has no out-of-scope detector (train it with ood.method set)")
        logits, probs, hidden = self.predict_with_features(
            texts, pairs, features=self.detector.needs_features, progress=progress
        )
        return probs, self.detector.scores(logits, probs, hidden)

    def predict_logits(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, progress: bool = False
    ) -> np.ndarray:
        """Raw logits (n, num_labels), in input order, texts truncated to `max_length` tokens."""
        _check_texts(texts, pairs)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._logits(self._features(texts, pairs), progress)

    def _features(self, texts: Sequence[str], pairs: Sequence[str] | None) -> dict[str, list[list[int]]]:
        # A prompt model fills its template around the text; every other model reads the text as it is.
        encode_texts = getattr(self.model, "encode_texts", None)
        if encode_texts is not None:
            return encode_texts(self.tokenizer, texts, pairs, self.max_length)
        encoder = self.direct_encoder()
        if encoder is not None:
            return encoder(texts, pairs)
        return tokenize(self.tokenizer, texts, pairs, self.max_length)

    def direct_encoder(self) -> DirectEncoder | None:
        """The tokenizer's encoder called directly, checked against the tokenizer at the current `max_length`;
        None where it gives other ids (the tokenizer's own call is used then)."""
        cached = self._direct
        if cached is None or cached[0] is not self.tokenizer or cached[1] != self.max_length:
            cached = (self.tokenizer, self.max_length, DirectEncoder.for_tokenizer(self.tokenizer, self.max_length))
            self._direct = cached
        return cached[2]

    def predict_proba(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        sliding_window: bool = False,
        stride: int | None = None,
        aggregate: Literal["mean", "max"] = "mean",
        progress: bool = False,
    ) -> np.ndarray:
        """Class probabilities (n, num_labels): softmax, or per-label sigmoid for multi-label models.

        With `sliding_window`, a text longer than `max_length` is cut into overlapping windows
        (`stride` tokens of overlap; default `min(32, max_length // 4)`), each window is scored and the window
        probabilities are
        aggregated by `mean` or `max`, so the end of a long text counts too.
        """
        if not sliding_window:
            return self._to_probs(self.predict_logits(texts, pairs, progress=progress))
        _check_texts(texts, pairs)
        if pairs is not None:
            raise AdaptextError("sliding_window works on single texts, not text pairs")
        if hasattr(self.model, "encode_texts"):
            raise AdaptextError("sliding_window is not available for prompt (PET) models")
        if stride is None:
            stride = min(32, self.max_length // 4)
        if not 0 <= stride < self.max_length // 2:
            raise AdaptextError(f"stride must be between 0 and {self.max_length // 2 - 1}, got {stride}")
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            stride=stride,
            return_overflowing_tokens=True,
        )
        owner = np.asarray(encoded["overflow_to_sample_mapping"])
        features = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
        window_probs = self._to_probs(self._logits(features, progress))
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for i in range(len(texts)):
            mine = window_probs[owner == i]
            probs[i] = mine.mean(axis=0) if aggregate == "mean" else mine.max(axis=0)
        return probs

    def decide(self, probs: np.ndarray, ood_scores: np.ndarray | None = None) -> list[Prediction]:
        """Turn probabilities (n, num_labels), and the detector's raw `ood_scores` (n,) if any, into `Prediction`s."""
        outside: np.ndarray | None = None
        shares: np.ndarray | None = None
        if ood_scores is not None:
            if self.detector is None:
                raise AdaptextError("out-of-scope scores given, but this model has no detector")
            outside, shares = self.detector.out_of_scope(ood_scores), self.detector.share_below(ood_scores)
        if self.task.regression:  # one value per text, no labels to decide between
            name = self.labels[0]
            return [
                Prediction(label=name, score=float(row[0]), labels=[], scores={name: float(row[0])}) for row in probs
            ]
        # Whole-matrix numpy, then plain Python values per text: with many labels (77 intents) and a fast model (a
        # static student) building the predictions cost more than the model (bench/distill.py).
        if self.task.multi_label:
            ranked = np.argsort(-probs, axis=1, kind="stable")
            decided = self.task.decide(probs, self.threshold)
            tops = ranked[:, 0].tolist()
            chosen = [order[keep[order]].tolist() for order, keep in zip(ranked, decided, strict=True)]  # best first
        else:  # the one label decided is the top one
            tops = probs.argmax(axis=1).tolist()
            chosen = [[top] for top in tops]
        results = []
        for i, row in enumerate(probs.tolist()):
            prediction = Prediction(
                label=self.labels[tops[i]],
                score=row[tops[i]],
                labels=[self.labels[j] for j in chosen[i]],
                scores=dict(zip(self.labels, row, strict=True)),
            )
            if shares is not None and outside is not None and self.detector is not None:
                prediction.ood_score = float(shares[i])
                if outside[i]:
                    prediction.label, prediction.score = self.detector.label, float(shares[i])
                    prediction.labels = [self.detector.label]
            results.append(prediction)
        return results

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, **kwargs: Any) -> list[Prediction]:
        """Predict one `Prediction` per text (keyword options as in `predict_proba`). With an out-of-scope
        detector, a text beyond its threshold is answered with the detector's label."""
        if self.detector is None:
            return self.decide(self.predict_proba(texts, pairs, **kwargs))
        if kwargs.get("sliding_window"):
            raise AdaptextError(
                "sliding_window is not available with an out-of-scope detector; raise data.max_length instead"
            )
        probs, ood = self.ood_scores(texts, pairs, progress=bool(kwargs.get("progress")))
        return self.decide(probs, ood)


class MultiPredictor:
    """Several task adapters on one base model held in memory once; requests are routed by task name.

    Each task keeps its own adapter and head (label sets may differ); the base model's weights are shared.

    >>> router = MultiPredictor.from_dirs({"intent": "runs/intent", "sentiment": "runs/sst2"})  # doctest: +SKIP
    >>> router.predict("intent", ["I lost my card"])[0].label  # doctest: +SKIP
    'lost_or_stolen_card'
    """

    def __init__(self, predictors: Mapping[str, Predictor]) -> None:
        if not predictors:
            raise AdaptextError("MultiPredictor needs at least one task")
        self.predictors = dict(predictors)

    @property
    def tasks(self) -> list[str]:
        return list(self.predictors)

    def __getitem__(self, task: str) -> Predictor:
        try:
            return self.predictors[task]
        except KeyError:
            raise AdaptextError(f"unknown task {task!r}; the tasks are {', '.join(self.predictors)}") from None

    def predict(
        self, task: str, texts: Sequence[str], pairs: Sequence[str] | None = None, **kwargs: Any
    ) -> list[Prediction]:
        """Predict with the adapter of `task` (keyword options as in `Predictor.predict`)."""
        return self[task].predict(texts, pairs, **kwargs)

    @classmethod
    def from_dirs(
        cls, dirs: Mapping[str, str | Path], *, device: str | None = None, batch_size: int = 64
    ) -> MultiPredictor:
        """Load one adapter folder (or run folder) per task; all must share one base model."""
        if not dirs:
            raise AdaptextError("MultiPredictor needs at least one task")
        folders = {task: find_model_dir(path) for task, path in dirs.items()}
        for task, folder in folders.items():
            if not is_adapter_folder(folder):
                raise AdaptextError(
                    f"task {task!r}: {folder} is a full model, not an adapter; only adapters share a base model"
                )
        infos = {task: ModelInfo.read(folder) for task, folder in folders.items()}
        same_base(folders, infos)
        tasks = list(folders)
        first = build_base(folders[tasks[0]], infos[tasks[0]])
        # On the target device before sharing: moving each model there afterwards would copy the base per task.
        first.to(default_device(device))  # type: ignore[arg-type]
        bases = [first] + [new_classifier(folders[t], infos[t]) for t in tasks[1:]]
        share_base(bases)
        predictors = {}
        for task, base in zip(tasks, bases, strict=True):
            model = load_adapter_model(folders[task], infos[task], base_model=base)
            tokenizer = AutoTokenizer.from_pretrained(folders[task])
            predictors[task] = Predictor._ready(
                model, tokenizer, infos[task], device=device, batch_size=batch_size, folder=folders[task]
            )
        return cls(predictors)


def scores(logits: np.ndarray, function: str) -> np.ndarray:
    """Scores from logits (n, num_labels): `softmax` over labels, per-label `sigmoid`, or `none` (the logits)."""
    if function == "softmax":
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def _check_texts(texts: Sequence[str], pairs: Sequence[str] | None) -> None:
    if isinstance(texts, str):
        raise AdaptextError("texts must be a list of strings, not one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise AdaptextError(f"text {i} is a {type(text).__name__}, expected a string")
    if pairs is not None and len(pairs) != len(texts):
        raise AdaptextError(f"got {len(texts)} texts but {len(pairs)} text pairs")
