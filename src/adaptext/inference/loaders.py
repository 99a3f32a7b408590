"""Loaders for the kinds of saved model folder: each says whether it handles a folder and loads it.

`Predictor.from_dir` reads the folder's `ModelInfo` and asks the loaders in `LOADERS`, highest `priority` first
(then in registration order), for the first that handles the folder. A new kind of folder is a new loader
registered here or anywhere else; nothing that predicts needs to change.

The built-in kinds, in the order they are asked:

- `prompt`: a prompt (PET) classifier, `strategy: prompt` in `adaptext.json` (a masked-LM folder);
- `nli`: an NLI zero-shot scorer, `scorer: nli` (an entailment-model folder);
- `adapter`: a peft adapter, recognised by peft's `adapter_config.json`;
- `onnx`: an ONNX export, recognised by `model.onnx`;
- `static`: a static-embedding student (`adaptext distill`), recognised by `adaptext_static` in `config.json`;
- `transformers`: any other sequence-classification folder (`config.json`), the last resort.

>>> class Mine(FolderLoader):  # doctest: +SKIP
...     description = "my kind of"
...     def handles(self, folder, info):
...         return (folder / "mine.bin").is_file()
...     def load(self, folder, info):
...         return load_mine(folder)
>>> LOADERS.add("mine", Mine())  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo, is_adapter_folder
from adaptext.core.registry import Registry
from adaptext.inference.onnx import ONNX_FILE, OnnxClassifier
from adaptext.modeling.adapters import load_adapter_model
from adaptext.modeling.cloze import load_prompt_model
from adaptext.modeling.nli import load_nli_model
from adaptext.modeling.pooling import use_direct_mean_pooling
from adaptext.modeling.static import StaticClassifier, is_static_folder, load_tokenizer


class FolderLoader(ABC):
    """How one kind of saved folder is recognised and loaded.

    `load` returns a transformers sequence classifier, or a module that answers like one: `model(**inputs).logits`
    of shape (batch, num_labels), a `config` with the label names in `id2label` and transformers' `problem_type`,
    `to(device)` and `eval()`. A model that builds its own input from the texts (a template around them) has
    `encode_texts(tokenizer, texts, pairs, max_length)` as well.
    """

    description = "model"  # the kind, in messages: "a {description} model"
    priority = 0  # asked before loaders of lower priority; equal priorities in registration order
    device: str | None = None  # where the model runs when the caller names no device (None: the default device)
    plain_classifier = True  # reads the tokenized text as it is, so an ONNX export of it is the same classifier

    @abstractmethod
    def handles(self, folder: Path, info: ModelInfo) -> bool:
        """True when `folder` (whose `adaptext.json` says `info`) is of this loader's kind."""

    @abstractmethod
    def load(self, folder: Path, info: ModelInfo) -> Any:
        """The model saved in `folder`; `OSError` or `ValueError` for a folder that cannot be loaded."""

    def load_tokenizer(self, folder: Path) -> PreTrainedTokenizerBase:
        """The tokenizer saved in `folder`."""
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
        return tokenizer


LOADERS: Registry[FolderLoader] = Registry("model-folder loader")


def loader_for(folder: Path, info: ModelInfo) -> FolderLoader:
    """The loader of the kind of `folder`: the first of `LOADERS`, highest priority first, that handles it."""
    ranked = sorted(LOADERS.names(), key=lambda name: -LOADERS.get(name).priority)  # stable: ties keep their order
    for name in ranked:
        loader = LOADERS.get(name)
        if loader.handles(folder, info):
            return loader
    raise AdaptextError(f"{folder}: no loader handles this folder; the kinds known are {', '.join(ranked)}")


class PromptLoader(FolderLoader):
    """A prompt (PET) classifier: a masked LM read at the mask of its template through the verbalizer."""

    description = "prompt (PET)"
    priority = 40
    plain_classifier = False

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return info.strategy == "prompt"

    def load(self, folder: Path, info: ModelInfo) -> Any:
        return load_prompt_model(folder, info)


class NliLoader(FolderLoader):
    """An NLI zero-shot scorer: an entailment model asked about one hypothesis per label."""

    description = "NLI zero-shot"
    priority = 30
    plain_classifier = False

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return info.scorer == "nli"

    def load(self, folder: Path, info: ModelInfo) -> Any:
        return load_nli_model(folder, info)


class AdapterLoader(FolderLoader):
    """A peft adapter and its head, loaded (unmerged) on the base model `adaptext.json` names."""

    description = "peft adapter"
    priority = 20

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return is_adapter_folder(folder)

    def load(self, folder: Path, info: ModelInfo) -> Any:
        return load_adapter_model(folder, info)


class OnnxLoader(FolderLoader):
    """An ONNX export, run by onnxruntime's CPU provider."""

    description = "ONNX"
    priority = 10
    device = "cpu"

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return (folder / ONNX_FILE).is_file()

    def load(self, folder: Path, info: ModelInfo) -> Any:
        return OnnxClassifier(folder)


class StaticLoader(FolderLoader):
    """A static-embedding student: a token-embedding table averaged and read by a small head (`adaptext distill`)."""

    description = "static-embedding"
    priority = 5

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return is_static_folder(folder)

    def load(self, folder: Path, info: ModelInfo) -> Any:
        return StaticClassifier.load(folder)

    def load_tokenizer(self, folder: Path) -> PreTrainedTokenizerBase:
        return load_tokenizer(folder)


class TransformersLoader(FolderLoader):
    """Any transformers sequence-classification folder: the kind asked last."""

    description = "transformers"
    priority = -100

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return (folder / "config.json").is_file()

    def load(self, folder: Path, info: ModelInfo) -> Any:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        use_direct_mean_pooling(model)  # the same outputs, without the pooling layer's full cost
        return model


LOADERS.add("prompt", PromptLoader())
LOADERS.add("nli", NliLoader())
LOADERS.add("adapter", AdapterLoader())
LOADERS.add("onnx", OnnxLoader())
LOADERS.add("static", StaticLoader())
LOADERS.add("transformers", TransformersLoader())
