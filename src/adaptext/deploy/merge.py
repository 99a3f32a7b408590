"""Folding a LoRA-style adapter into its base model, checked before anything is written."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from adaptext.core.errors import AdaptextError
from adaptext.core.info import ADAPTER_CONFIG, ModelInfo, find_model_dir, is_adapter_folder
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.deploy.parity import MergeCheck, compare_logits, parity_examples
from adaptext.modeling.adapters import adapter_method, is_prompt_method, merge_model

logger = logging.getLogger(__name__)


def merge_adapter(
    path: str | Path,
    output: str | Path,
    *,
    data: str | Path | None = None,
    tolerance: float = 1e-4,
    sample: int = 256,
    overwrite: bool = False,
) -> MergeCheck:
    """Fold the adapter of a run (or adapter folder) into its base model and save a plain model folder.

    Before anything is written, the merged model's logits on `sample` validation examples (the run's validation
    split, or the labelled or unlabelled file `data`) must match the adapter model's within `tolerance` with every
    label the same; otherwise an `AdaptextError` gives the numbers. `output` must be a new or empty folder, or an
    earlier merged model (replaced only with `overwrite`).
    """
    from adaptext.inference.predictor import Predictor

    model_dir = find_model_dir(expand(path))
    sources = [path, model_dir] + ([data] if data is not None else [])
    output = check_output_dir(output, "merge", overwrite=overwrite, inputs=sources)
    if not is_adapter_folder(model_dir):
        raise AdaptextError(f"{model_dir} is already a full model (no {ADAPTER_CONFIG}); there is nothing to merge")
    info = ModelInfo.read(model_dir)
    method = adapter_method(model_dir, info)
    if is_prompt_method(method):
        raise AdaptextError(
            f"{method} cannot be merged: it feeds learned virtual tokens to the model on every input instead of "
            "changing weights. Use the adapter folder itself (Predictor.from_dir, adaptext predict / serve)."
        )
    examples = parity_examples(Path(path), model_dir, data, info, sample)
    texts, pairs = examples.texts, examples.pairs
    predictor = Predictor.from_dir(model_dir)
    before = predictor.predict_logits(texts, pairs)
    merged = merge_model(predictor.model)
    predictor.model = merged
    after = predictor.predict_logits(texts, pairs)
    check = compare_logits(before, after, tolerance, predictor.task)
    if not check.passed:
        raise AdaptextError(f"merge check failed, nothing written: {check.describe()}")

    def write(folder: Path) -> None:
        merged.save_pretrained(folder)
        predictor.tokenizer.save_pretrained(folder)
        info.updated(
            peft_method="none",
            merged_from=str(model_dir),
            merged_method=method,
            merge_check=asdict(check),
        ).write(folder)

    replace_folder(output, write, "merge")
    logger.info("merged %s into %s: %s", method, output, check.describe())
    return check
