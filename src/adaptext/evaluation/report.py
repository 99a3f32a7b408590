"""Writing an evaluation as files a person can open: metrics.json, per_class.csv, PNG plots and report.html."""

from __future__ import annotations

import csv
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adaptext.core.run import write_json
from adaptext.explain.page import STYLE as HIGHLIGHT_STYLE
from adaptext.explain.page import held_fixed, highlight, legend

if TYPE_CHECKING:
    from adaptext.evaluation.metrics import EvalReport
    from adaptext.inference.ood import OodDetector


logger = logging.getLogger(__name__)


MAX_LABELS_ON_AXES = 100


CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "Source Han Sans SC", "SimHei")


def plot_confusion(report: EvalReport, path: Path) -> None:
    """Row-normalised confusion matrix (rows = true label), with counts written in small matrices."""
    assert report.confusion is not None
    counts = np.asarray(report.confusion)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(report.labels)
    names, fonts = _tick_names(report.labels)
    size = min(max(5.0, 0.22 * n + 3), 24.0)
    with plt.rc_context({"font.family": fonts}):
        fig, ax = plt.subplots(figsize=(size, size))
        _draw_confusion(fig, ax, counts, norm, names)
        ax.set_title(f"Confusion matrix ({report.n_examples} examples)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)


def _tick_names(labels: list[str]) -> tuple[list[str], list[str]]:
    """Tick labels and font families: label ids where no installed font has the labels' characters."""
    if all(label.isascii() for label in labels):
        return labels, ["DejaVu Sans"]
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallback = [name for name in CJK_FONTS if name in installed]
    if fallback:
        return labels, ["DejaVu Sans", *fallback]
    logger.info("no font for the label names is installed; the confusion matrix shows label ids (see report.html)")
    return [str(i) for i in range(len(labels))], ["DejaVu Sans"]


def _draw_confusion(fig: Figure, ax: Axes, counts: np.ndarray, norm: np.ndarray, names: list[str]) -> None:
    n = len(names)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true label")
    if n <= MAX_LABELS_ON_AXES:
        fontsize = 9 if n <= 20 else max(4, int(200 / n))
        ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), names, fontsize=fontsize)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=9,
                )
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str) -> bool:
    """Training loss, validation loss and a validation metric against epochs; False when nothing to plot."""
    train = [r for r in history if "loss" in r]
    evals = [r for r in history if f"eval_{metric}" in r]
    if not evals:
        return False
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_ax.plot([r["epoch"] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.7)
    loss_ax.plot([r["epoch"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="validation loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    for name in dict.fromkeys([metric, "accuracy"]):
        key = f"eval_{name}"
        if key in evals[0]:
            metric_ax.plot([r["epoch"] for r in evals], [r[key] for r in evals], "o-", label=f"validation {name}")
    metric_ax.set_xlabel("epoch")
    if metric not in ("pearson", "spearman"):  # correlations go down to -1
        metric_ax.set_ylim(0, 1.02)
    metric_ax.legend()
    metric_ax.grid(alpha=0.3)
    fig.suptitle("Training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


OOD_PLOT = "ood_scores.png"


def plot_ood_scores(inside: np.ndarray, outside: np.ndarray, detector: OodDetector, path: Path) -> None:
    """Histograms of the detector's raw scores on in-scope and out-of-scope texts, with its threshold."""
    both = np.concatenate([inside, outside])
    low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    edges = [low + (high - low) * i / 50 for i in range(51)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(inside, bins=edges, alpha=0.6, density=True, label=f"in scope ({len(inside)})", color="#1f77b4")
    ax.hist(outside, bins=edges, alpha=0.6, density=True, label=f"out of scope ({len(outside)})", color="#d62728")
    ax.axvline(detector.threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlabel(f"{detector.method} score (higher: further out of scope)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ood_section(method: str, report: EvalReport) -> str:
    """The report's out-of-scope part: the detector's metrics and the score histograms."""
    names = ["in_scope_accuracy", "oos_recall", "oos_precision", "ood_auroc", "ood_fpr95"]
    rows = [{"metric": name, "value": report.metrics[name]} for name in names if name in report.metrics]
    return (
        f"<p>Detector: {html.escape(method)}. Out-of-scope texts count as one more class in the summary.</p>"
        + _table(rows, ["metric", "value"])
        + f"<img src='{OOD_PLOT}' alt='out-of-scope score histograms'>"
    )


def plot_reliability(report: EvalReport, path: Path) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    bins = report.reliability
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centers, [b["accuracy"] for b in bins], width=0.09, alpha=0.7, label="accuracy in bin")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C1", label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Calibration (ECE {report.metrics.get('ece', float('nan')):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.low{background:#fde2e2}td .why{display:block;text-align:left}"""


def top_confusions(report: EvalReport, limit: int = 10) -> list[dict[str, Any]]:
    """The most frequent (true label, predicted label) mistakes, largest first."""
    if report.confusion is None:
        return []
    counts = np.asarray(report.confusion)
    np.fill_diagonal(counts, 0)
    order = np.argsort(-counts, axis=None, kind="stable")[:limit]
    rows = []
    for flat in order:
        i, j = divmod(int(flat), counts.shape[1])
        if counts[i, j] == 0:
            break
        rows.append({"true label": report.labels[i], "predicted": report.labels[j], "count": int(counts[i, j])})
    return rows


def _errors_section(errors: list[dict[str, Any]], source: str) -> list[str]:
    rows = []
    for error in errors:
        cells = [
            str(error["row"]),
            html.escape(error["true label"]),
            html.escape(error["predicted"]),
            f"{error['score']:.3f}",
            highlight(error["tokens"], error["attributions"]) + held_fixed(error.get("pair")),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    method = html.escape(str(errors[0]["method"]))
    return [
        "<h2>Misclassified examples, most confident first</h2>",
        f"<p>From {html.escape(source)}. Words are highlighted by their push towards the predicted label "
        f"({method}); <code>adaptext explain</code> explains any file.</p>",
        legend(),
        "<table><thead><tr><th>row</th><th>true label</th><th>predicted</th><th>score</th><th>text</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
    ]


def write_report(
    report: EvalReport,
    out_dir: Path,
    *,
    history: list[dict[str, Any]] | None = None,
    title: str = "Evaluation",
    metric: str | None = None,
    run_info: dict[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
    errors_source: str = "",
    sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write metrics.json, per_class.csv, the plots and report.html into `out_dir`; return report.html's path.

    `errors` are misclassified examples with their word attributions (`explained_errors`), taken from
    `errors_source`; `sections` are (heading, HTML) parts a strategy adds after the summary. `metric` is the one
    plotted in the training curves (default: `macro_f1`, `spearman` for regression). A regression report has no
    classes: no per_class.csv, no class tables."""
    regression = report.task.regression
    metric = metric or ("spearman" if regression else "macro_f1")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", report.metrics | {"n_examples": report.n_examples})
    if not regression:
        with (out_dir / "per_class.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["label", "precision", "recall", "f1", "support"])
            writer.writeheader()
            writer.writerows(report.per_class)
    figures = []
    if report.confusion is not None:
        plot_confusion(report, out_dir / "confusion_matrix.png")
        figures.append(("Confusion matrix", "confusion_matrix.png"))
    if report.reliability:
        plot_reliability(report, out_dir / "calibration.png")
        figures.append(("Calibration", "calibration.png"))
    if history and plot_curves(history, out_dir / "training_curves.png", metric):
        figures.append(("Loss and metrics per epoch", "training_curves.png"))
    summary = [{"metric": k, "value": v} for k, v in report.metrics.items()]
    worst = sorted(report.per_class, key=lambda r: r["f1"])[:10]
    confused = top_confusions(report)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}{HIGHLIGHT_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{report.n_examples} examples, "
        + ("one predicted value each (regression)" if regression else f"{len(report.labels)} labels")
        + f"{' (multi-label)' if report.multi_label else ''}. Data: {html.escape(report.data_source)}</p>",
        "<h2>Summary</h2>",
        _table(summary, ["metric", "value"]),
        *(part for heading, body in sections for part in (f"<h2>{html.escape(heading)}</h2>", body)),
        *(
            ["<h2>Run</h2>", _table([{"item": k, "value": v} for k, v in run_info.items()], ["item", "value"])]
            if run_info
            else []
        ),
    ]
    if not regression:
        parts += ["<h2>Weakest classes</h2>", _table(worst, ["label", "precision", "recall", "f1", "support"])]
    if confused:
        parts += ["<h2>Most frequent confusions</h2>", _table(confused, ["true label", "predicted", "count"])]
    for caption, name in figures:
        parts += [f"<h2>{html.escape(caption)}</h2>", f"<img src='{name}' alt='{html.escape(caption)}'>"]
    if errors:
        parts += _errors_section(errors, errors_source)
    if not regression:
        parts += [
            "<h2>All classes</h2>",
            _table(
                [{"id": i} | row for i, row in enumerate(report.per_class)],
                ["id", "label", "precision", "recall", "f1", "support"],
            ),
        ]
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    logger.info("report written to %s", path)
    return path
