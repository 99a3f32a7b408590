"""Parameter-efficient fine-tuning through `peft`: building the method's config, keeping the head trainable,
loading adapter folders, merging with a parity check, and several task adapters on one base model.

A saved adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (the adapter and the
classification head), the tokenizer, and `adaptext.json`, which records the base model and the label names.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from adaptext.core.config import PeftSection
from adaptext.core.errors import AdaptextError, ConfigError
from adaptext.core.info import ADAPTER_CONFIG, ModelInfo
from adaptext.core.task import Task
from adaptext.modeling.build import HEAD_PREFIXES, build_model

PROMPT_METHODS = ("prefix_tuning", "prompt_tuning", "p_tuning")


# peft types that do not apply to sequence classification (causal-LM only, or they need task ids per example).
UNSUPPORTED = ("adaption_prompt", "multitask_prompt_tuning", "poly", "xlora", "cpt", "cartridge")


# Every linear layer inside the transformer blocks, by architecture. A regular expression (peft matches it against
# the full module name), so a RoBERTa head's `classifier.dense` or BERT's `pooler.dense` is not caught by `dense`.
_BLOCK = r".*\.layer\.\d+\.(.*\.)?({names})"


LINEAR_TARGETS: dict[str, str] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text", "xmod"),
        _BLOCK.format(names="query|key|value|dense"),
    ),
    "deberta-v2": _BLOCK.format(names="query_proj|key_proj|value_proj|dense"),
    "distilbert": _BLOCK.format(names="q_lin|k_lin|v_lin|out_lin|lin1|lin2"),
}


# IA3 rescales keys, values and the feed-forward output (peft's recipe), for architectures peft has no table for.
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"]),
    "electra": (["key", "value", "output.dense"], ["output.dense"]),
}


# Learning rates for `train.learning_rate: auto` by method: adapters train few parameters and want larger steps.
# Chosen by measurement on MiniLM (docs/benchmarks.md, "Parameter-efficient fine-tuning").
AUTO_LEARNING_RATES: dict[str, float] = {
    "lora": 2e-3,
    "adalora": 2e-3,
    "ia3": 3e-3,
    "prefix_tuning": 1e-2,
    "prompt_tuning": 3e-2,
    "p_tuning": 1e-2,
}


DEFAULT_ADAPTER_LEARNING_RATE = 1e-3


def peft_methods() -> list[str]:
    """The method names `peft.method` accepts besides `none`."""
    from peft import PeftType

    return sorted(t.value.lower() for t in PeftType if t.value.lower() not in UNSUPPORTED)


def check_method(section: PeftSection) -> None:
    """Fail early, before any work, on a method name peft does not know."""
    if section.method == "none":
        if section.options:
            raise ConfigError("peft.options is set but peft.method is none: choose a method (e.g. peft.method=lora)")
        return
    methods = peft_methods()
    if section.method not in methods:
        raise ConfigError(f"peft.method: unknown method {section.method!r}; choose none or one of {', '.join(methods)}")


def is_prompt_method(method: str) -> bool:
    """Prompt-style methods add virtual tokens to the input; they cannot be merged into the weights."""
    return method in PROMPT_METHODS


def head_modules(model: PreTrainedModel) -> list[str]:
    """Names of the modules that form the classification head: trained in full and saved with the adapter.

    The new classifier (`classifier`, `score`, DistilBERT's `pre_classifier`) and the pooler that BERT-style
    classifiers read. peft by default saves only `classifier`/`score`; a frozen random `pre_classifier` is a
    classic silent failure.
    """
    names = [name for name, _ in model.named_children() if name in HEAD_PREFIXES]
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    pooler = getattr(base, "pooler", None) if base is not None else None
    if isinstance(pooler, torch.nn.Module):
        # Its leaf layers, not the pooler itself: several peft methods can merge only wrapped layers with weights.
        names += [
            f"pooler.{name}"
            for name, module in pooler.named_modules()
            if name and not list(module.children()) and list(module.parameters(recurse=False))
        ]
    return names


def peft_config(
    section: PeftSection, model: PreTrainedModel, *, total_steps: int, max_length: int
) -> Any:  # a peft.PeftConfig
    """The peft config for `section`: adaptext's defaults for this architecture, overridden by `peft.options`."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftType, TaskType

    method = section.method
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(method.upper())]
    options = default_options(method, model, total_steps) | dict(section.options)
    for reserved in ("task_type", "peft_type", "base_model_name_or_path"):
        if reserved in section.options:
            raise ConfigError(f"peft.options.{reserved} is set by adaptext; remove it")
    heads = head_modules(model)
    options["modules_to_save"] = heads + [m for m in options.get("modules_to_save") or [] if m not in heads]
    try:
        config = config_class(task_type=TaskType.SEQ_CLS, **options)
    except TypeError as error:  # an option the method does not have
        raise ConfigError(f"peft.options for {method}: {error}") from None
    except ValueError as error:
        raise ConfigError(f"peft.options for {method}: {error}") from None
    if method == "prefix_tuning":
        check_prefix_support(model)
    if method in PROMPT_METHODS:
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        virtual = int(getattr(config, "num_virtual_tokens", 0) or 0)
        # Prompt and p-tuning prepend tokens to the input; prefix tuning shifts the input's positions by as much.
        if limit and max_length + virtual > limit:
            raise ConfigError(
                f"data.max_length ({max_length}) + peft.options.num_virtual_tokens ({virtual}) exceeds the model's "
                f"{limit} positions; lower one of them"
            )
    return config


def check_prefix_support(model: PreTrainedModel) -> None:
    """peft feeds the prefix to the model as `past_key_values`; newer transformers name that argument `cache`,
    which peft (0.21) does not recognise, and then fails mid-training. Say so before any work."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), model)
    accepted = set(inspect.signature(model.forward).parameters) | set(inspect.signature(backbone.forward).parameters)
    if "past_key_values" not in accepted:
        import transformers

        raise ConfigError(
            f"peft.method=prefix_tuning: {type(model).__name__} in transformers {transformers.__version__} takes no "
            "`past_key_values`, which peft passes the prefix as (transformers 5.24 renamed it `cache`). Use "
            "transformers<5.24 (as constraints.txt pins) or another method such as p_tuning or lora."
        )


def default_options(method: str, model: PreTrainedModel, total_steps: int) -> dict[str, Any]:
    """adaptext's defaults per method (documented in docs/adapters.md)."""
    model_type = str(getattr(model.config, "model_type", ""))
    targets = LINEAR_TARGETS.get(model_type)
    if method == "lora":
        return {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1} | ({"target_modules": targets} if targets else {})
    if method == "adalora":
        # AdaLoRA prunes ranks between tinit and total_step - tfinal; it must know the step count up front.
        return {
            "init_r": 12,
            "target_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.1,
            "total_step": total_steps,
            "tinit": int(0.1 * total_steps),
            "tfinal": int(0.2 * total_steps),
        } | ({"target_modules": targets} if targets else {})
    if method == "ia3":
        if model_type in IA3_TARGETS:
            target, feedforward = IA3_TARGETS[model_type]
            return {"target_modules": target, "feedforward_modules": feedforward}
        return {}
    if method in ("prefix_tuning", "prompt_tuning"):
        return {"num_virtual_tokens": 20}
    if method == "p_tuning":
        return {"num_virtual_tokens": 20, "encoder_hidden_size": int(getattr(model.config, "hidden_size", 128))}
    if method == "ln_tuning":  # LayerNorm tuning: every normalisation layer (peft has no table for these)
        return {"target_modules": r".*(LayerNorm|layer_norm)"} if model_type in LINEAR_TARGETS else {}
    # Other LoRA-like methods (loha, lokr, vera, ...) take target_modules the same way.
    return {"target_modules": targets} if targets else {}


def validate(
    section: PeftSection, model_name: str, labels: list[str], task: Task, *, total_steps: int, max_length: int
) -> None:
    """Build the method on a weightless copy of the model, so a bad option fails before any work or file."""
    if section.method == "none":
        return
    from adaptext.modeling.build import model_config

    config = model_config(model_name, labels, task)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    wrap_model(section, model, total_steps=total_steps, max_length=max_length)


def wrap_model(section: PeftSection, model: PreTrainedModel, *, total_steps: int, max_length: int) -> Any:
    """`model` with the method's adapter added; only the adapter and the head require gradients."""
    from peft import get_peft_model

    config = peft_config(section, model, total_steps=total_steps, max_length=max_length)
    try:
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question while wrapping; nothing for our users to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = " (set peft.options.target_modules for this architecture)" if "target_modules" in message else ""
        raise ConfigError(f"peft.method={section.method}: {message}{hint}") from None
    return wrapped


def auto_learning_rate(method: str) -> float:
    return AUTO_LEARNING_RATES.get(method, DEFAULT_ADAPTER_LEARNING_RATE)


def read_adapter_config(folder: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return result


def load_adapter_model(folder: Path, info: ModelInfo, *, base_model: PreTrainedModel | None = None) -> Any:
    """The peft model saved in `folder`, on its base model (built here, or `base_model` when given)."""
    from peft import PeftModel

    if base_model is None:
        base_model = build_base(folder, info)
    try:
        with warnings.catch_warnings():
            # AdaLoRA saves its pruned ranks under parameter names and peft warns that they match no module on
            # load; the pruned ranks are zeros in the saved weights, so the loaded model is the same.
            warnings.filterwarnings("ignore", message=".*rank_pattern keys did not match.*", category=RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(base_model, folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise AdaptextError(f"{folder}: cannot load the adapter: {str(error).strip().splitlines()[0]}") from None
    return model


def base_model_name(folder: Path, info: ModelInfo) -> str:
    """The base model an adapter folder was trained on: adaptext's name for it, else peft's record."""
    name = info.base_model or read_adapter_config(folder).get("base_model_name_or_path")
    if not name:
        raise AdaptextError(f"{folder}: the adapter does not record its base model")
    return str(name)


def _label_set(folder: Path, info: ModelInfo) -> tuple[list[str], Task]:
    """The adapter's label names and its task, from its `adaptext.json`."""
    if not info.labels:
        raise AdaptextError(f"{folder}: adaptext.json has no label names; was this adapter saved by adaptext?")
    return list(info.labels), info.task


def build_base(folder: Path, info: ModelInfo) -> PreTrainedModel:
    """The adapter's base model with a head for its labels, pretrained weights loaded."""
    return build_model(base_model_name(folder, info), *_label_set(folder, info))


def adapter_method(model_dir: Path, info: ModelInfo) -> str:
    """The peft method of an adapter folder: adaptext's record, else peft's."""
    return str(info.peft_method or read_adapter_config(model_dir).get("peft_type", "")).lower()


def merge_model(model: Any) -> PreTrainedModel:
    """Fold the adapter into the base weights; the head's trained copy replaces the original."""
    merged: PreTrainedModel = model.merge_and_unload()
    return merged


def share_base(models: Sequence[PreTrainedModel]) -> None:
    """Make every model in `models` use the first one's encoder tensors (same storage, loaded once).

    The models must have the same architecture; their heads (which may differ in size) stay their own.
    """
    first = models[0]
    heads = tuple(head_modules(first))
    shared = {k: v for k, v in first.state_dict().items() if not k.startswith(heads)}
    for other in models[1:]:
        missing, unexpected = other.load_state_dict(shared, strict=False, assign=True)
        body_missing = [k for k in missing if not k.startswith(heads)]
        if unexpected or body_missing:
            raise AdaptextError(f"the adapters' base models differ in their weights: {(unexpected + body_missing)[:3]}")


def new_classifier(folder: Path, info: ModelInfo) -> PreTrainedModel:
    """The adapter's base architecture with a head for its labels, weights not loaded (random; see share_base)."""
    from adaptext.modeling.build import model_config

    config = model_config(base_model_name(folder, info), *_label_set(folder, info))
    model: PreTrainedModel = AutoModelForSequenceClassification.from_config(config)
    return model


def same_base(folders: Mapping[str, Path], infos: Mapping[str, ModelInfo]) -> str:
    """The one base model every adapter in `folders` was trained on; an error naming the odd one out."""
    bases = {task: base_model_name(folder, infos[task]) for task, folder in folders.items()}
    first_task, first = next(iter(bases.items()))
    for task, base in bases.items():
        if base != first:
            raise AdaptextError(
                f"adapters for one base model only: {first_task!r} was trained on {first!r}, {task!r} on {base!r}"
            )
    return first


def adapter_size_bytes(folder: Path) -> int:
    """Bytes on disk of the weights in a model or adapter folder."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) + sum(
        p.stat().st_size for p in folder.glob("*.bin")
    )
