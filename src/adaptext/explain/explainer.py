"""Explaining texts and files: which label to explain, which methods apply, and the files a person reads.

>>> explanations = explain_texts(Predictor.from_dir("runs/sst2"), ["a gorgeous, witty film"])  # doctest: +SKIP
>>> explanations[0].tokens, explanations[0].attributions  # doctest: +SKIP
(['a', 'gorgeous', ',', 'witty', 'film'], [0.01, 2.3, 0.05, 1.1, 0.2])
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptext.core.config import DataConfig
from adaptext.core.console import progress_bar
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.data.io import load_examples, read_table
from adaptext.explain.faithfulness import agreement, faithfulness, random_attributions
from adaptext.explain.methods import EXPLAINERS, encode_with_offsets
from adaptext.explain.page import write_page
from adaptext.explain.records import ExplainResult, Explanation
from adaptext.explain.words import Span, word_spans, words_of, words_within
from adaptext.inference.predictor import Predictor

logger = logging.getLogger(__name__)

# The method used when none is named (the report's highlights, `serve`'s /explain): the first one that can explain
# the model, in this order (chosen by faithfulness and speed in bench/explain.py, see docs/benchmarks.md).
DEFAULT_ORDER = ("ig", "occlusion")
CHUNK = 16  # texts per step of the progress bar


def method_problems(predictor: Predictor) -> dict[str, str]:
    """Why each registered method cannot explain `predictor`'s model (methods that can are absent)."""
    problems = {}
    for name in EXPLAINERS.names():
        reason = EXPLAINERS.get(name).unsupported(predictor)
        if reason is not None:
            problems[name] = reason
    return problems


def default_method(predictor: Predictor) -> str:
    """The method used when none is named: the first of `DEFAULT_ORDER` that can explain the model."""
    problems = method_problems(predictor)
    for name in DEFAULT_ORDER:
        if name not in problems:
            return name
    raise AdaptextError(f"no attribution method can explain this model: {problems}")


def choose_methods(predictor: Predictor, requested: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The methods to run for `requested` names (`all`: every method that applies, `default`: the default one),
    and the reasons for those left out. A named method that cannot explain the model is an error."""
    problems = method_problems(predictor)
    chosen: list[str] = []
    for name in requested:
        if name == "all":
            chosen += [m for m in EXPLAINERS.names() if m not in problems]
        elif name == "default":
            chosen.append(default_method(predictor))
        elif name not in EXPLAINERS:
            raise AdaptextError(f"unknown method {name!r}; the methods are {', '.join(EXPLAINERS.names())}, all")
        elif name in problems:
            raise AdaptextError(f"method {name!r} cannot explain this model: {problems[name]}")
        else:
            chosen.append(name)
    unique = list(dict.fromkeys(chosen))
    left_out = {m: r for m, r in problems.items() if m not in unique} if "all" in requested else {}
    return unique, left_out


def resolve_targets(
    predictor: Predictor, probs: np.ndarray, target: str, true_labels: Sequence[Any] | None
) -> list[int]:
    """The label index to explain for each text: `predicted`, `true` (needs `true_labels`), a label name, or
    `label:NAME` (a label whose name is `predicted` or `true`)."""
    if target.startswith("label:"):
        return _label_target(predictor, target.removeprefix("label:"), len(probs))
    if target == "true" and "true" in predictor.labels:  # `predicted`, the default, always means the model's label
        raise AdaptextError(
            "--target true: the model has a label named 'true'; write label:true for that label, or use the data's "
            "labels under another name"
        )
    if target == "predicted":
        return [int(i) for i in probs.argmax(axis=1)]
    if target == "true":
        if true_labels is None:
            raise AdaptextError("--target true needs the data's label column; it has none")
        if predictor.multi_label:
            raise AdaptextError("--target true is for single-label models; name a label or use predicted")
        index = {name: i for i, name in enumerate(predictor.labels)}
        unknown = sorted({str(label) for label in true_labels if str(label) not in index})
        if unknown:
            raise AdaptextError(f"labels the model does not know: {', '.join(unknown[:5])}")
        return [index[str(label)] for label in true_labels]
    return _label_target(predictor, target, len(probs))


def _label_target(predictor: Predictor, name: str, count: int) -> list[int]:
    if name not in predictor.labels:
        raise AdaptextError(f"unknown label {name!r}; the model's labels are {', '.join(predictor.labels[:20])}")
    return [predictor.labels.index(name)] * count


def explain_texts(
    predictor: Predictor,
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    methods: Sequence[str] = ("default",),
    target: str = "predicted",
    true_labels: Sequence[Any] | None = None,
    progress: bool = False,
) -> ExplainResult:
    """Explain every text with every method in `methods` (names, `all` or `default`)."""
    chosen, _ = choose_methods(predictor, methods)
    probs = predictor.predict_proba(list(texts), list(pairs) if pairs is not None else None)
    targets = resolve_targets(predictor, probs, target, true_labels)
    spans = [word_spans(text) for text in texts]
    predicted = [predictor.labels[int(i)] for i in probs.argmax(axis=1)]
    seen = words_seen(predictor, texts, pairs, spans)
    result = ExplainResult(explanations={}, seconds_per_text={}, targets=targets, spans=spans, seen=seen)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # texts of a batch pad to similar lengths
    for name in chosen:
        method = EXPLAINERS.get(name)
        values: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(texts)
        start = time.perf_counter()
        steps = range(0, len(texts), CHUNK)
        for first in progress_bar(steps, show=progress, desc=f"explain ({name})", unit="chunk"):
            chunk = order[first : first + CHUNK]
            found = method.attribute(
                predictor,
                [texts[i] for i in chunk],
                [spans[i] for i in chunk],
                [targets[i] for i in chunk],
                [pairs[i] for i in chunk] if pairs is not None else None,
            )
            for i, value in zip(chunk, found, strict=True):
                values[i] = value
        result.seconds_per_text[name] = (time.perf_counter() - start) / max(1, len(texts))
        result.explanations[name] = [
            Explanation(
                text=text,
                label=predictor.labels[targets[i]],
                score=float(probs[i, targets[i]]),
                method=name,
                tokens=words_of(text, spans[i]),
                attributions=[round(float(v), 6) for v in values[i]],
                predicted=predicted[i],
                true_label=None if true_labels is None else str(true_labels[i]),
                pair=None if pairs is None else pairs[i],
                words_seen=seen[i] if seen[i] < len(spans[i]) else None,
            )
            for i, text in enumerate(texts)
        ]
    return result


def words_seen(
    predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None, spans: Sequence[Sequence[Span]]
) -> list[int]:
    """Per text, how many of its words the model reads: the words before `max_length` cuts the text (all of them
    for a tokenizer without character offsets, or a prompt / NLI model, whose own template changes the cut)."""
    tokenizer = predictor.tokenizer
    if not tokenizer.is_fast or hasattr(predictor.model, "encode_texts"):
        return [len(words) for words in spans]
    encoded = encode_with_offsets(predictor, texts, pairs)
    seen = []
    for i, words in enumerate(spans):
        ids = encoded.sequence_ids(i)
        offsets = [o for o, sequence in zip(encoded["offset_mapping"][i], ids, strict=True) if sequence == 0]
        seen.append(words_within(offsets, words))
    return seen


def faithfulness_summary(
    predictor: Predictor,
    texts: Sequence[str],
    result: ExplainResult,
    *,
    pairs: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Comprehensiveness and sufficiency of each method next to random attributions, and agreement."""
    # Rationales (and random ones) are drawn from the words the model reads: removing an unseen word changes nothing.
    spans = [words[:count] for words, count in zip(result.spans, result.seen, strict=True)]
    targets = result.targets
    random = faithfulness(predictor, texts, spans, targets, random_attributions(spans, seed), pairs, progress=progress)
    methods: dict[str, Any] = {}
    by_method: dict[str, list[np.ndarray]] = {}
    for name, explanations in result.explanations.items():
        values = [
            np.asarray(e.attributions[:count], dtype=np.float32)
            for e, count in zip(explanations, result.seen, strict=True)
        ]
        by_method[name] = values
        measured = faithfulness(predictor, texts, spans, targets, values, pairs, progress=progress)
        methods[name] = {
            "comprehensiveness": measured.comprehensiveness,
            "sufficiency": measured.sufficiency,
            "comprehensiveness_vs_random": _ratio(measured.comprehensiveness, random.comprehensiveness),
            "sufficiency_vs_random": _ratio(measured.sufficiency, random.sufficiency),
            "seconds_per_text": result.seconds_per_text[name],
        }
    return {
        "random": {"comprehensiveness": random.comprehensiveness, "sufficiency": random.sufficiency},
        "methods": methods,
        "agreement_spearman": agreement(by_method),
    }


def _ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline > 0 else None


def explain_file(
    model_path: str | Path,
    data_path: str | Path,
    output_dir: str | Path,
    *,
    methods: Sequence[str] = ("default",),
    target: str = "predicted",
    columns: dict[str, str | None] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Explain the texts of a file with a saved model; write `explanations.jsonl`, `explanations.html` and
    `faithfulness.json` into `output_dir` (a new or empty folder, or an earlier explanation folder with
    `overwrite`). Returns the summary written to `faithfulness.json`."""
    model_path, data_path = expand(model_path), expand(data_path)
    output = check_output_dir(output_dir, "explanation", overwrite=overwrite, inputs=[model_path, data_path])
    if limit is not None and limit < 1:
        raise AdaptextError(f"--limit must be at least 1, got {limit}")
    predictor = Predictor.from_dir(model_path)
    predictor.require_classifier("explain")
    chosen, left_out = choose_methods(predictor, methods)
    settings = predictor.info.data_settings(columns) | {"multi_label": predictor.multi_label}
    cfg = DataConfig.model_validate(settings)
    has_labels = cfg.label_column in read_table(data_path).columns and not predictor.multi_label
    if target == "true" and predictor.multi_label:
        raise AdaptextError("--target true is for single-label models; name a label or use predicted")
    if target == "true" and not has_labels:
        raise AdaptextError(f"{data_path}: --target true needs the label column {cfg.label_column!r}")
    data = load_examples(data_path, cfg, with_labels=has_labels)
    if limit is not None:
        data = data.subset(list(range(min(limit, len(data)))))
    logger.info("explaining %d texts with %s", len(data), ", ".join(chosen))
    result = explain_texts(
        predictor,
        data.texts,
        pairs=data.pairs,
        methods=chosen,
        target=target,
        true_labels=data.labels,
        progress=True,
    )
    summary = {
        "model": str(model_path),
        "data": str(data_path),
        "n_texts": len(data),
        "target": target,
        "quantity": "log-odds of the explained label",
        "not_applicable": left_out,
    } | faithfulness_summary(predictor, data.texts, result, pairs=data.pairs, seed=seed, progress=True)

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "explanations.jsonl").open("w", encoding="utf-8") as handle:
            for i in range(len(data)):
                for name in result.explanations:
                    record = result.explanations[name][i].to_dict() | {"row": data.rows[i]}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        (folder / "faithfulness.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        write_page(folder / "explanations.html", result, data.rows, summary, title=f"{model_path} on {data_path}")

    replace_folder(output, write, "explanation")
    return summary
