"""Ensembles of saved classifiers, and weight averages of compatible ones, written as servable folders.

`build_ensemble` copies the members' model folders into one folder whose `adaptext.json` lists them with their
weights; `EnsembleLoader` (`adaptext.inference.loaders`) loads it as one classifier whose probabilities are the
weighted mean of the members'. `average_weights` averages the weights of models of one architecture (checkpoints
of one run, or fine-tunings of one base model) into one plain model folder. See docs/ensemble.md.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptext.core.errors import AdaptextError
from adaptext.core.info import ENSEMBLE_SUBDIR, EnsembleMember, ModelInfo, find_model_dir, is_adapter_folder
from adaptext.core.outputs import MARKER, check_output_dir, expand, replace_folder
from adaptext.core.task import task_for
from adaptext.inference.loaders import LOADERS, is_member_kind, loader_for

logger = logging.getLogger(__name__)

# Texts every member's tokenizer must turn into the same ids: cased, accented, CJK, digits and punctuation.
PROBE_TEXTS = ("Hello World, it's 2024!", "Ünïcödé naïve café", "退款 没有 到账", "e-mail: a.b@c.de #42")


@dataclass
class EnsembleResult:
    """What `build_ensemble` or `average_weights` wrote: the folder, its members (as given), their weights
    (normalised), the label names and whether each text gets any number of labels."""

    output: Path
    members: list[str]
    weights: list[float]
    labels: list[str]
    multi_label: bool


@dataclass
class _Member:
    """A member as read for the checks: its folder, record, loader name, labels, task and tokenizer."""

    given: str
    folder: Path
    info: ModelInfo
    kind: str
    labels: list[str]
    multi_label: bool
    tokenizer: Any
    max_length: int


def parse_weights(text: str | None, count: int) -> list[float]:
    """`w1,w2,...` as `count` positive weights normalised to sum to 1 (equal weights when `text` is None)."""
    if text is None:
        return [1.0 / count] * count
    try:
        weights = [float(item) for item in text.split(",")]
    except ValueError:
        raise AdaptextError(f"--weights: {text!r} is not a comma-separated list of numbers") from None
    if len(weights) != count:
        raise AdaptextError(f"--weights: {len(weights)} weights for {count} members; give one per member")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise AdaptextError(f"--weights: every weight must be a positive number, got {text!r}")
    total = sum(weights)
    return [w / total for w in weights]


def build_ensemble(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> EnsembleResult:
    """Write an ensemble of the runs (or model or adapter folders) `paths` into the folder `output`.

    The members must have the same label names in the same order, be all single-label or all multi-label, and
    tokenize alike (one tokenization feeds them all); each is checked before anything is written and a refusal
    names the member and the difference. Their model folders are copied into `output/members/`, so the ensemble
    keeps working after the runs are deleted. `weights` (default equal) are normalised to sum to 1.

    >>> build_ensemble(["runs/s0", "runs/s1", "runs/s2"], "models/ensemble")  # doctest: +SKIP
    >>> Predictor.from_dir("models/ensemble").predict(["I lost my card"])[0].label  # doctest: +SKIP
    'lost_or_stolen_card'
    """
    weights = _check_weights(weights, len(paths))
    members, output = _read_members(paths, output, overwrite)
    first = members[0]
    for member in members[1:]:
        _check_compatible(first, member)
    thresholds = {member.info.threshold for member in members}
    if len(thresholds) > 1:
        logger.warning("the members' thresholds differ (%s); the ensemble uses the first's", sorted(thresholds))
    # How the ensemble reads data and decides is its first member's; how it was made is in `ensemble`.
    record = ModelInfo(
        labels=first.labels,
        problem_type=task_for(multi_label=first.multi_label).problem_type,
        max_length=min(member.max_length for member in members),  # every member reads this many tokens
        threshold=first.info.threshold,
        text_column=first.info.text_column,
        text_pair_column=first.info.text_pair_column,
        label_column=first.info.label_column,
        label_delimiter=first.info.label_delimiter,
        ensemble=[
            EnsembleMember(path=f"{ENSEMBLE_SUBDIR}/{i}", weight=w, source=m.given, kind=m.kind)
            for i, (m, w) in enumerate(zip(members, weights, strict=True))
        ],
    )

    def write(folder: Path) -> None:
        for i, member in enumerate(members):
            # Copies, not links: a member's files stay as they were if its run is trained again in place.
            shutil.copytree(member.folder, folder / ENSEMBLE_SUBDIR / str(i), ignore=shutil.ignore_patterns(MARKER))
        record.write(folder)

    replace_folder(output, write, "ensemble")
    described = ", ".join(f"{m.given} ({w:.3g})" for m, w in zip(members, weights, strict=True))
    logger.info("ensemble of %d members written to %s: %s", len(members), output, described)
    return EnsembleResult(output, [str(m.given) for m in members], list(weights), first.labels, first.multi_label)


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    return parse_weights(",".join(repr(float(w)) for w in weights), count)


def _read_members(paths: Sequence[str | Path], output: str | Path, overwrite: bool) -> tuple[list[_Member], Path]:
    """The members' folders, checked for kind and loaded far enough to compare them; the output folder, checked."""
    from adaptext.inference.predictor import Predictor

    if len(paths) < 2:
        raise AdaptextError(f"an ensemble needs at least two members, got {len(paths)}")
    folders = [find_model_dir(expand(path)) for path in paths]
    output = check_output_dir(output, "ensemble", overwrite=overwrite, inputs=[*paths, *folders])
    seen: dict[Path, str] = {}
    members = []
    for given, folder in zip(paths, folders, strict=True):
        if folder.resolve() in seen:
            raise AdaptextError(f"{given}: the same model as {seen[folder.resolve()]}; name each member once")
        seen[folder.resolve()] = str(given)
        info = ModelInfo.read(folder)
        loader = loader_for(folder, info)
        if info.ensemble is not None:
            raise AdaptextError(f"{given}: is an ensemble itself; name its members instead")
        if not is_member_kind(loader):
            raise AdaptextError(
                f"{given}: a {loader.description} model cannot be an ensemble member; members are full models or "
                "peft adapters (PyTorch) that read the tokenized text as it is"
            )
        predictor = Predictor.from_dir(folder, device="cpu")
        predictor.require_classifier("ensemble")
        kind = next(name for name in LOADERS.names() if LOADERS.get(name) is loader)
        members.append(
            _Member(
                given=str(given),
                folder=folder,
                info=info,
                kind=kind,
                labels=list(predictor.labels),
                multi_label=predictor.multi_label,
                tokenizer=predictor.tokenizer,
                max_length=predictor.max_length,
            )
        )
        del predictor  # only its labels, task and tokenizer were needed
    return members, output


def _check_compatible(first: _Member, other: _Member) -> None:
    """Refuse `other` when it cannot be averaged with `first`: labels, single/multi-label, tokenization."""
    if other.labels != first.labels:
        raise AdaptextError(f"{other.given}: its labels differ from {first.given}'s: {_label_difference(first, other)}")
    if other.multi_label != first.multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise AdaptextError(
            f"{other.given}: is {kinds[other.multi_label]}, {first.given} is {kinds[first.multi_label]}; "
            "the members of an ensemble are all one or the other"
        )
    difference = _tokenizer_difference(first.tokenizer, other.tokenizer)
    if difference:
        raise AdaptextError(
            f"{other.given}: tokenizes differently from {first.given} ({difference}); the members of an ensemble "
            "read one tokenization, so they must share the tokenizer of their base model"
        )


def _label_difference(first: _Member, other: _Member) -> str:
    missing = [label for label in first.labels if label not in other.labels]
    extra = [label for label in other.labels if label not in first.labels]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"it lacks {', '.join(map(repr, missing[:5]))}")
        if extra:
            parts.append(f"it has {', '.join(map(repr, extra[:5]))} in addition")
        return "; ".join(parts)
    position = next(i for i, (a, b) in enumerate(zip(first.labels, other.labels, strict=True)) if a != b)
    return (
        f"the same labels in another order (position {position}: {other.labels[position]!r} where "
        f"{first.given} has {first.labels[position]!r}); retrain it with the first member's label order"
    )


def _tokenizer_difference(first: Any, other: Any) -> str | None:
    """How two tokenizers differ (vocabulary or the ids of the probe texts), or None when they tokenize alike."""
    if type(first).__name__ != type(other).__name__:
        return f"{type(other).__name__} vs {type(first).__name__}"
    vocab, theirs = first.get_vocab(), other.get_vocab()
    if vocab != theirs:
        return f"vocabularies of {len(theirs)} and {len(vocab)} entries, {len(set(theirs) ^ set(vocab))} not shared"
    for text in PROBE_TEXTS:
        if first(text)["input_ids"] != other(text)["input_ids"]:
            return f"{text!r} becomes different token ids"
    return None


def average_weights(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> EnsembleResult:
    """Average the weights of compatible models (same architecture, labels and weight files) into one model folder.

    Each floating-point tensor of `output` is the weighted mean of that tensor in the members (`weights`, default
    equal); the rest of the folder (config, tokenizer, `adaptext.json`) is the first member's. Meaningful for
    models that share a starting point (checkpoints of one run, fine-tunings of one base model): averaging
    unrelated models gives a model that predicts nothing useful.
    """
    import torch
    from safetensors.torch import load_file, save_file

    weights = _check_weights(weights, len(paths))
    members, output = _read_members(paths, output, overwrite)
    first = members[0]
    for member in members[1:]:
        _check_compatible(first, member)
    files = _weight_files(first)
    for member in members[1:]:
        if _weight_files(member) != files:
            raise AdaptextError(
                f"{member.given}: its weight files ({', '.join(_weight_files(member))}) are not "
                f"{first.given}'s ({', '.join(files)}); the members must be saved the same way"
            )
        if is_adapter_folder(member.folder) != is_adapter_folder(first.folder):
            raise AdaptextError(f"{member.given}: an adapter and a full model cannot be averaged; {first.given} is not")
    averaged: dict[str, dict[str, torch.Tensor]] = {}
    for name in files:
        tensors = [load_file(str(member.folder / name)) for member in members]
        averaged[name] = _mean_tensors(tensors, weights, [m.given for m in members], name)

    def write(folder: Path) -> None:
        shutil.copytree(first.folder, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER, *files))
        for name, tensors in averaged.items():
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        first.info.updated(averaged_from=[str(m.folder) for m in members]).write(folder)

    replace_folder(output, write, "ensemble")
    logger.info("weights of %d models averaged into %s", len(members), output)
    return EnsembleResult(output, [m.given for m in members], list(weights), first.labels, first.multi_label)


def _weight_files(member: _Member) -> list[str]:
    names = sorted(path.name for path in member.folder.glob("*.safetensors"))
    if not names:
        raise AdaptextError(f"{member.given}: no .safetensors weights in {member.folder}; only those can be averaged")
    return names


def _mean_tensors(tensors: list[dict[str, Any]], weights: list[float], names: list[str], file: str) -> dict[str, Any]:
    """The weighted mean of each floating-point tensor (others, such as position ids, from the first member)."""
    first = tensors[0]
    for given, other in zip(names[1:], tensors[1:], strict=True):
        if set(other) != set(first):
            odd = sorted(set(other) ^ set(first))[:3]
            raise AdaptextError(f"{given}: {file} holds other tensors than {names[0]}'s ({', '.join(odd)}, ...)")
        for key, value in other.items():
            if value.shape != first[key].shape:
                raise AdaptextError(
                    f"{given}: {file}: {key} has shape {tuple(value.shape)}, {names[0]}'s {tuple(first[key].shape)}; "
                    "only models of one architecture can be averaged"
                )
    mean = {}
    for key, value in first.items():
        if not value.is_floating_point():
            mean[key] = value
            continue
        total = sum(w * member[key].double() for w, member in zip(weights, tensors, strict=True))
        mean[key] = total.to(value.dtype).contiguous()
    return mean
