"""Metrics for single- and multi-label classification, computed from class probabilities, and for regression."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    hamming_loss,
    precision_recall_fscore_support,
)

from adaptext.core.errors import ConfigError
from adaptext.core.task import MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task
from adaptext.data.examples import TextData
from adaptext.data.labels import label_targets
from adaptext.inference.predictor import Predictor

SINGLE_LABEL_METRICS = ["accuracy", "loss", "ece"] + [
    f"{avg}_{kind}" for avg in ("macro", "micro", "weighted") for kind in ("precision", "recall", "f1")
]


MULTI_LABEL_METRICS = ["accuracy", "loss", "hamming_loss"] + [
    f"{avg}_{kind}" for avg in ("macro", "micro", "weighted", "samples") for kind in ("precision", "recall", "f1")
]


REGRESSION_METRICS = ["mse", "rmse", "mae", "pearson", "spearman", "loss"]


LOWER_IS_BETTER = {"loss", "ece", "hamming_loss", "mse", "rmse", "mae"}


@dataclass
class EvalReport:
    """The evaluation of one model on one labelled data set.

    `metrics` is flat (`accuracy`, `macro_f1`, ...); `per_class` has one row per label with precision,
    recall, f1 and support; `confusion` is rows = true label, columns = predicted (single-label only).
    """

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    labels: list[str]
    task: Task
    confusion: list[list[int]] | None = None
    reliability: list[dict[str, float]] = field(default_factory=list)
    n_examples: int = 0
    data_source: str = ""

    @property
    def multi_label(self) -> bool:
        return self.task.multi_label


def metric_names(task: Task) -> list[str]:
    """The metrics computed for `task`, the names `train.metric_for_best` may take."""
    if task.regression:
        return REGRESSION_METRICS
    return MULTI_LABEL_METRICS if task.multi_label else SINGLE_LABEL_METRICS


def check_metric_name(name: str, task: Task) -> None:
    """Fail early when `train.metric_for_best` names a metric that will never be computed."""
    valid = metric_names(task)
    if name not in valid:
        raise ConfigError(f"train.metric_for_best: {name!r} is not a metric here; choose one of {', '.join(valid)}")


def is_improvement(name: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if name in LOWER_IS_BETTER else value > best


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray) -> float:
    """ECE of single-label probabilities (n, k) against class ids (n,), over 10 equal-width confidence bins."""
    return _reliability(probs.max(axis=1), (probs.argmax(axis=1) == targets).astype(float))[0]


def log_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of class ids `targets` (n,) under single-label `probs` (n, k)."""
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0)).mean())


def _reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    # Expected calibration error over equal-width confidence bins, and the bins themselves for the plot.
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        mask = (confidence > low) & (confidence <= high)
        if not mask.any():
            continue
        accuracy = float(correct[mask].mean())
        mean_conf = float(confidence[mask].mean())
        ece += mask.mean() * abs(accuracy - mean_conf)
        table.append(
            {
                "low": float(low),
                "high": float(high),
                "accuracy": accuracy,
                "confidence": mean_conf,
                "count": int(mask.sum()),
            }
        )
    return float(ece), table


def _per_class(labels: list[str], y_true: np.ndarray, y_pred: np.ndarray) -> list[dict[str, Any]]:
    ids = list(range(len(labels)))
    kwargs: dict[str, Any] = {"zero_division": 0}
    if y_true.ndim == 1:
        kwargs["labels"] = ids
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, **kwargs)
    return [
        {"label": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]


def _averages(y_true: np.ndarray, y_pred: np.ndarray, averages: tuple[str, ...], n: int) -> dict[str, float]:
    metrics = {}
    kwargs: dict[str, Any] = {"zero_division": 0}
    if y_true.ndim == 1:
        kwargs["labels"] = list(range(n))
    for avg in averages:
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, **kwargs)
        metrics.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    return metrics


def compute_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    task: Task,
    threshold: float = 0.5,
) -> EvalReport:
    """Metrics from class probabilities `probs` (n, k) and `targets`: class ids (n,), or multi-hot (n, k) for a
    multi-label task; for a regression task, predicted values `probs` (n, 1) and target values (n,)."""
    if task.regression:
        return regression_metrics(probs[:, 0], targets, labels)
    eps = 1e-12
    if task.multi_label:
        y_true = targets.astype(int)
        y_pred = task.decide(probs, threshold).astype(int)
        clipped = np.clip(probs, eps, 1 - eps)
        loss = float(-(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped)).mean())
        metrics = {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "loss": loss,
            "hamming_loss": float(hamming_loss(y_true, y_pred)),
        }
        metrics.update(_averages(y_true, y_pred, ("macro", "micro", "weighted", "samples"), len(labels)))
        return EvalReport(
            metrics=metrics,
            per_class=_per_class(labels, y_true, y_pred),
            labels=labels,
            task=MULTI_LABEL,
            n_examples=len(targets),
        )
    y_true = targets.astype(int)
    y_pred = probs.argmax(axis=1)
    loss = log_loss(probs, y_true)
    ece, bins = _reliability(probs.max(axis=1), (y_pred == y_true).astype(float))
    metrics = {"accuracy": float(accuracy_score(y_true, y_pred)), "loss": loss, "ece": ece}
    metrics.update(_averages(y_true, y_pred, ("macro", "micro", "weighted"), len(labels)))
    confusion = confusion_matrix(y_true, y_pred, labels=list(range(len(labels)))).tolist()
    return EvalReport(
        metrics=metrics,
        per_class=_per_class(labels, y_true, y_pred),
        labels=labels,
        task=SINGLE_LABEL,
        confusion=confusion,
        reliability=bins,
        n_examples=len(targets),
    )


def _correlation(method: Any, predicted: np.ndarray, targets: np.ndarray) -> float:
    # A constant prediction or target has no defined correlation; NaN says so rather than a warning and a number.
    if len(targets) < 2 or np.ptp(predicted) == 0 or np.ptp(targets) == 0:
        return float("nan")
    return float(method(predicted, targets).statistic)


def regression_metrics(predicted: np.ndarray, targets: np.ndarray, labels: list[str]) -> EvalReport:
    """MSE (also the `loss`), RMSE, MAE, Pearson's and Spearman's correlation of predicted values (n,) against
    target values (n,). Correlations are NaN when either side is constant."""
    from scipy.stats import pearsonr, spearmanr

    predicted, targets = np.asarray(predicted, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    errors = predicted - targets
    mse = float((errors**2).mean()) if len(errors) else float("nan")
    metrics = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(np.abs(errors).mean()) if len(errors) else float("nan"),
        "pearson": _correlation(pearsonr, predicted, targets),
        "spearman": _correlation(spearmanr, predicted, targets),
        "loss": mse,
    }
    return EvalReport(metrics=metrics, per_class=[], labels=labels, task=REGRESSION, n_examples=len(targets))


OOD_METRICS = ["in_scope_accuracy", "oos_recall", "oos_precision", "ood_auroc", "ood_fpr95"]


def compute_ood_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    outside: np.ndarray,
    scores: np.ndarray,
    labels: list[str],
    ood_label: str,
) -> EvalReport:
    """Metrics of a single-label model with an out-of-scope detector, out-of-scope as one more class.

    `targets` are class ids (n,), with `len(labels)` for an out-of-scope text; `outside` (n,) says which texts the
    detector put out of scope, `scores` (n,) are its raw scores (higher: further out). `accuracy` and the averages
    count out-of-scope as a class (predicting it on an out-of-scope text is correct); `in_scope_accuracy` is the
    share of in-scope texts given their label (put out of scope is wrong); `oos_recall` / `oos_precision` are of the
    out-of-scope class; `ood_auroc` is the scores' AUROC for out-of-scope against in-scope texts, and `ood_fpr95`
    the share of out-of-scope texts kept in scope at the score that keeps 95% of in-scope texts in scope. `loss`
    and `ece` are over the in-scope texts.
    """
    from sklearn.metrics import roc_auc_score

    k = len(labels)
    y_true = targets.astype(int)
    y_pred = np.where(outside, k, probs.argmax(axis=1))
    inside = y_true < k
    is_oos = ~inside
    metrics: dict[str, float] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    if inside.any():
        metrics["in_scope_accuracy"] = float((y_pred[inside] == y_true[inside]).mean())
        metrics["loss"] = log_loss(probs[inside], y_true[inside])
        metrics["ece"] = expected_calibration_error(probs[inside], y_true[inside])
    predicted_oos = y_pred == k
    metrics["oos_recall"] = float(predicted_oos[is_oos].mean()) if is_oos.any() else float("nan")
    metrics["oos_precision"] = float(is_oos[predicted_oos].mean()) if predicted_oos.any() else float("nan")
    if inside.any() and is_oos.any():
        metrics["ood_auroc"] = float(roc_auc_score(is_oos, scores))
        cut = np.quantile(scores[inside], 0.95, method="higher")
        metrics["ood_fpr95"] = float((scores[is_oos] <= cut).mean())
    metrics.update(_averages(y_true, y_pred, ("macro", "micro", "weighted"), k + 1))
    names = [*labels, ood_label]
    confidence = np.where(outside, 0.0, probs.max(axis=1))
    _, bins = _reliability(confidence[inside], (y_pred[inside] == y_true[inside]).astype(float))
    return EvalReport(
        metrics=metrics,
        per_class=_per_class(names, y_true, y_pred),
        labels=names,
        task=SINGLE_LABEL,
        confusion=confusion_matrix(y_true, y_pred, labels=list(range(k + 1))).tolist(),
        reliability=bins,
        n_examples=len(y_true),
    )


def evaluate_data(predictor: Predictor, data: TextData, probs: np.ndarray | None = None) -> EvalReport:
    """Predict `data` with `predictor` (unless its probabilities `probs` are given) and score the predictions
    against its labels."""
    targets = label_targets(data, predictor.labels, predictor.task)
    if probs is None:
        probs = predictor.predict_proba(data.texts, data.pairs)
    report = compute_metrics(probs, targets, predictor.labels, predictor.task, predictor.threshold)
    report.data_source = data.source
    return report
