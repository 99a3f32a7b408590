"""Loaders for the kinds of saved model folder: each says whether it handles a folder and loads it.

`Predictor.from_dir` reads the folder's `ModelInfo` and asks the loaders in `LOADERS`, highest `priority` first
(then in registration order), for the first that handles the folder. A new kind of folder is a new loader
registered here or anywhere else; nothing that predicts needs to change.

The built-in kinds, in the order they are asked:

- `routed`: one adapter per task and a router (`continual.method: adapters`), `routed` in `adaptext.json`;
- `ensemble`: an ensemble of saved classifiers (`adaptext ensemble`), `ensemble` in `adaptext.json`;
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
from adaptext.inference.ensemble import EnsembleClassifier, member_temperature
from adaptext.inference.onnx import ONNX_FILE, OnnxClassifier
from adaptext.inference.routed import ROUTER_FILE, RoutedClassifier, RouterHead
from adaptext.modeling.adapters import (
    base_model_name,
    build_base,
    load_adapter_model,
    new_classifier,
    share_base,
)
from adaptext.modeling.cloze import load_prompt_model
from adaptext.modeling.hub import check_classifier_folder
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
    not_plain = "reads its text through a template"  # why it is not a plain classifier, for messages

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


def is_member_kind(loader: FolderLoader) -> bool:
    """True when folders of `loader`'s kind may be ensemble members: PyTorch classifiers that read the tokenized text
    as it is (not prompt or NLI models, which build their own input; not ONNX exports; not ensembles)."""
    return loader.plain_classifier and loader.device is None


class EnsembleLoader(FolderLoader):
    """An ensemble (`adaptext ensemble`): its members' model folders under `members/`, loaded each by its own kind.

    Members are adapters or full models of one label set that share one tokenizer; adapters on one base model
    share that base in memory.
    """

    description = "ensemble"
    priority = 50
    not_plain = "averages the probabilities of several models"
    plain_classifier = False  # several models in one: ONNX export and the audit's encoder do not apply

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return info.ensemble is not None

    def load(self, folder: Path, info: ModelInfo) -> Any:
        members = info.ensemble or []
        if not members or not info.labels:
            raise ValueError(f"{info.source}: an ensemble record needs its members and label names")
        folders = [folder / member.path for member in members]
        infos = [ModelInfo.read(path) for path in folders]
        for path, member_info in zip(folders, infos, strict=True):
            if not is_member_kind(loader_for(path, member_info)):
                raise ValueError(f"{path}: not a kind of model an ensemble can hold")
        models = _load_members(folders, infos)
        return EnsembleClassifier(
            models,
            [member.weight for member in members],
            info.labels,
            info.task,
            [member_temperature(member_info) for member_info in infos],
        )

    def load_tokenizer(self, folder: Path) -> PreTrainedTokenizerBase:
        # Every member reads the same tokens (`adaptext ensemble` checks it): the first member's tokenizer.
        members = ModelInfo.read(folder).ensemble or []
        if not members:
            raise ValueError(f"{folder}: the ensemble record lists no members")
        first = folder / members[0].path
        return loader_for(first, ModelInfo.read(first)).load_tokenizer(first)


def _load_members(folders: list[Path], infos: list[ModelInfo]) -> list[Any]:
    """Each member by its own loader; adapters on one base model get that base loaded once and shared."""
    adapters: dict[str, list[int]] = {}
    for i, (path, info) in enumerate(zip(folders, infos, strict=True)):
        if is_adapter_folder(path):
            adapters.setdefault(base_model_name(path, info), []).append(i)
    bases: dict[int, Any] = {}
    for group in adapters.values():
        if len(group) > 1:
            models = [build_base(folders[group[0]], infos[group[0]])]
            models += [new_classifier(folders[i], infos[i]) for i in group[1:]]
            share_base(models)
            bases |= dict(zip(group, models, strict=True))
    return [
        load_adapter_model(path, info, base_model=bases[i]) if i in bases else loader_for(path, info).load(path, info)
        for i, (path, info) in enumerate(zip(folders, infos, strict=True))
    ]


class RoutedLoader(FolderLoader):
    """A routed folder (`continual.method: adapters`): one adapter per task under `members/`, on one base model
    loaded once and shared, and the router in `router.safetensors`."""

    description = "routed adapters"
    priority = 60
    not_plain = "runs one adapter per task, chosen by a router"
    plain_classifier = False  # several adapters and a router in one: ONNX export and the audit's encoder do not apply

    def handles(self, folder: Path, info: ModelInfo) -> bool:
        return info.routed is not None

    def load(self, folder: Path, info: ModelInfo) -> Any:
        routing = info.routed
        assert routing is not None
        if not routing.experts or not info.labels:
            raise ValueError(f"{info.source}: a routed record needs its experts and label names")
        folders = [folder / expert.path for expert in routing.experts]
        infos = [ModelInfo.read(path) for path in folders]
        for path, expert_info in zip(folders, infos, strict=True):
            if not is_adapter_folder(path) or not expert_info.labels:
                raise ValueError(f"{path}: not an adapter folder saved by adaptext")
        index = {name: i for i, name in enumerate(info.labels)}
        unknown = [name for expert_info in infos for name in expert_info.labels or [] if name not in index]
        if unknown:
            raise ValueError(f"{info.source}: experts have labels the record does not list: {unknown[:3]}")
        return RoutedClassifier(
            _load_members(folders, infos),
            [[index[name] for name in expert_info.labels or []] for expert_info in infos],
            RouterHead.load(folder / ROUTER_FILE),
            routing.layers,
            info.labels,
            info.task,
            top_k=routing.top_k,
            temperatures=[member_temperature(expert_info) for expert_info in infos],
        )


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
        check_classifier_folder(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        use_direct_mean_pooling(model)  # the same outputs, without the pooling layer's full cost
        return model


LOADERS.add("routed", RoutedLoader())
LOADERS.add("ensemble", EnsembleLoader())
LOADERS.add("prompt", PromptLoader())
LOADERS.add("nli", NliLoader())
LOADERS.add("adapter", AdapterLoader())
LOADERS.add("onnx", OnnxLoader())
LOADERS.add("static", StaticLoader())
LOADERS.add("transformers", TransformersLoader())
