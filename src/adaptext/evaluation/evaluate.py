"""Evaluating a saved model on a labelled file into a report folder."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adaptext.core.config import DataConfig
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.core.run import read_train_log
from adaptext.data.examples import TextData
from adaptext.data.io import load_examples, require_columns
from adaptext.data.labels import check_known_labels, is_regression
from adaptext.evaluation.errors import explained_errors
from adaptext.evaluation.metrics import EvalReport, compute_ood_metrics, evaluate_data
from adaptext.evaluation.ranking import NDCG_K, per_group_metrics, ranking_metrics
from adaptext.inference.predictor import Predictor
from adaptext.inference.scoring import PairScoring, pair_scoring


def evaluate_file(
    model_path: str | Path,
    data_path: str | Path,
    output_dir: str | Path,
    columns: dict[str, str | None] | None = None,
    *,
    overwrite: bool = False,
    errors: int = 20,
    ood_label: str | None = None,
    group_column: str | None = None,
    positive: str | None = None,
    recall_k: int = 10,
) -> EvalReport:
    """Evaluate a saved model (run or model folder) on a labelled file and write the report into `output_dir`.

    `columns` may set `text_column`, `text_pair_column` and `label_column`; by default those the model
    was trained with. Pointing at a run folder adds its training curves to the report. `output_dir` must be a new
    or empty folder, or an earlier evaluation report (replaced only with `overwrite`); never a run folder.
    The report shows up to `errors` misclassified examples with the words that made the model decide.

    With `ood_label`, rows with that label are out of scope: the model's out-of-scope detector is scored on them
    (`compute_ood_metrics`: in-scope accuracy, out-of-scope recall and precision, AUROC, FPR95, and accuracy with
    out-of-scope as one more class), and the report shows both groups' score histograms.

    With `group_column` (a query id: the rows are (query, item) pairs), the rows of each group are also ranked by
    the model's pair score (`adaptext.inference.scoring`; `positive` names the positive label) and NDCG@10, MRR and
    recall@`recall_k` against the rows' relevance are added to the metrics (`ranking_relevance`), with one row per
    group in `ranking.csv`.

    >>> evaluate_file("runs/quickstart", "data/banking77/train.csv", "eval-out")  # doctest: +SKIP
    """
    from adaptext.evaluation.report import OOD_PLOT, ood_section, plot_ood_scores, write_report  # matplotlib here

    model_path, data_path = expand(model_path), expand(data_path)
    output = check_output_dir(output_dir, "evaluation", overwrite=overwrite, inputs=[model_path, data_path])
    predictor = Predictor.from_dir(model_path)
    settings = predictor.info.data_settings(columns) | {"multi_label": predictor.multi_label}
    if predictor.task.regression:
        settings["problem"] = "regression"
    cfg = DataConfig.model_validate(settings)
    data = load_examples(data_path, cfg)
    if group_column is not None and ood_label is not None:
        raise AdaptextError("--group-column and --ood-label are separate evaluations; give one")
    scoring = pair_scoring(predictor, positive) if group_column is not None else None
    if group_column is not None:
        assert data.frame is not None
        require_columns(Path(data.source), data.frame, [group_column])
    if ood_label is not None and predictor.detector is None:
        raise AdaptextError(
            f"--ood-label: {model_path} has no out-of-scope detector; train it with ood.method set "
            "(e.g. ood.method=auto)"
        )
    inside = [i for i, label in enumerate(data.labels or []) if label != ood_label]
    in_scope = data.subset(inside) if ood_label is not None else data
    check_known_labels(in_scope, predictor.labels)
    ood: np.ndarray | None = None
    if predictor.detector is not None:
        probs, ood = predictor.ood_scores(data.texts, data.pairs, progress=True)
    else:
        probs = predictor.predict_proba(data.texts, data.pairs, progress=True)
    sections: list[tuple[str, str]] = []
    is_oos: np.ndarray | None = None
    if ood_label is not None and ood is not None and predictor.detector is not None:
        if len(inside) == len(data):
            raise AdaptextError(f"--ood-label {ood_label!r}: no row of {data_path} has that label")
        k = len(predictor.labels)
        index = {name: i for i, name in enumerate(predictor.labels)}
        targets = np.array([index.get(str(label), k) for label in data.labels or []])
        is_oos = targets == k
        outside = predictor.detector.out_of_scope(ood)
        report = compute_ood_metrics(probs, targets, outside, ood, predictor.labels, predictor.detector.label)
        report.data_source = data.source
        sections = [("Out-of-scope scores", ood_section(predictor.detector.method, report))]
    else:
        report = evaluate_data(predictor, data, probs)
        if ood is not None and predictor.detector is not None:
            report.metrics["ood_rate"] = float(predictor.detector.out_of_scope(ood).mean())
    ranking: list[dict[str, Any]] = []
    if group_column is not None and scoring is not None and data.frame is not None:
        groups = data.frame[group_column].tolist()
        relevance = ranking_relevance(data, predictor, scoring)
        scores = scoring.apply(probs, predictor.labels)
        report.metrics |= ranking_metrics(scores, relevance, groups, k=recall_k)
        ranking = per_group_metrics(scores, relevance, groups, k=recall_k)
        sections.append(("Ranking", ranking_section(report.metrics, scoring.describe(), group_column, recall_k)))
    explained = explained_errors(predictor, in_scope, probs[inside] if ood_label is not None else probs, errors)
    history = read_train_log(Path(model_path) / "train_log.jsonl")
    title = f"{model_path} on {data_path}"

    def write(folder: Path) -> None:
        if is_oos is not None and ood is not None and predictor.detector is not None:
            plot_ood_scores(ood[~is_oos], ood[is_oos], predictor.detector, folder / OOD_PLOT)
        write_report(
            report,
            folder,
            history=history,
            title=title,
            errors=explained,
            errors_source=str(data_path),
            sections=sections,
        )
        if ranking:
            pd.DataFrame(ranking).to_csv(folder / "ranking.csv", index=False)

    replace_folder(output, write, "evaluation")
    return report


def ranking_relevance(data: TextData, predictor: Predictor, scoring: PairScoring) -> np.ndarray:
    """Each row's relevance (n,): a regression target as it is; labels that are all numbers (0/1, grades) as those
    numbers (`true`/`false` as 1/0); other labels 1 for the positive label, else 0."""
    assert data.labels is not None
    if is_regression(data):
        return np.asarray(data.labels, dtype=np.float64)
    names = [str(label) for label in data.labels]
    numbers = {"true": 1.0, "false": 0.0}
    try:
        return np.asarray([numbers[name] if name in numbers else float(name) for name in names])
    except ValueError:
        return np.asarray([1.0 if name == scoring.label else 0.0 for name in names])


def ranking_section(metrics: dict[str, float], scored_by: str, group_column: str, k: int) -> str:
    """The report's ranking summary: what a pair's score is and the averaged metrics."""
    return (
        f"<p>Rows grouped by <code>{html.escape(group_column)}</code> and ranked by {html.escape(scored_by)}; "
        f"averaged over {metrics['groups']:.0f} groups with a relevant row "
        f"({metrics['groups_without_relevant']:.0f} without one left out). NDCG@{NDCG_K} "
        f"{metrics[f'ndcg@{NDCG_K}']:.4f}, MRR {metrics['mrr']:.4f}, recall@{k} {metrics[f'recall@{k}']:.4f}. "
        "Per group: ranking.csv.</p>"
    )
