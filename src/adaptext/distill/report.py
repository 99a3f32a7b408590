"""The student's report page: accuracy of teacher and student, their agreement, speed, and where they disagree."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from adaptext.explain.page import _PAGE_STYLE

REPORT_JSON = "distill.json"
REPORT_PAGE = "distill.html"


def write_page(path: Path, summary: dict[str, Any]) -> None:
    """Write `summary` (what `distill_model` returns) as an HTML page at `path`."""
    rows = []
    for split, agreement in summary["agreement"].items():
        accuracy = summary["accuracy"][split]
        speed = summary["texts_per_second"][split]
        rows.append(
            "<tr>"
            + _cell(html.escape(split))
            + _cell(f"{accuracy['teacher']:.4f}", numeric=True)
            + _cell(f"{accuracy['student']:.4f}", numeric=True)
            + _cell(f"{agreement:.4f}", numeric=True)
            + _cell(f"{speed['teacher']:.0f}", numeric=True)
            + _cell(f"{speed['student']:.0f}", numeric=True)
            + "</tr>"
        )
    scores = (
        "<table class='summary'><thead><tr><th>split</th><th>teacher accuracy</th><th>student accuracy</th>"
        "<th>agreement</th><th>teacher texts/s</th><th>student texts/s</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>The teacher is no run folder: there was no labelled split to score on.</p>"
    )
    disagreements = "".join(
        "<tr>"
        + _cell(html.escape(str(row["label"] if row["label"] is not None else "")))
        + _cell(html.escape(row["teacher"]))
        + _cell(html.escape(row["student"]))
        + _cell(html.escape(row["text"]))
        + "</tr>"
        for row in summary["disagreements"]
    )
    texts = summary["texts"]
    seconds = summary["seconds"]
    settings = summary["settings"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Distilled student</title>",
        f"<style>{_PAGE_STYLE}</style></head><body>",
        f"<h1>Static student of {html.escape(summary['teacher'])}</h1>",
        f"<p>Teacher: {html.escape(summary['teacher_kind'])}, {summary['labels']} labels. Student: a table of "
        f"{summary['dim']}-wide token embeddings (initialised from {html.escape(summary['init'])}), averaged and read "
        f"by a {'linear' if not settings['hidden'] else str(settings['hidden']) + '-unit'} head.</p>",
        "<h2>Student against teacher</h2>",
        "<p>Accuracy against the labels; agreement: the share of texts where both decide the same. Texts/s as "
        "measured while scoring, batched through <code>Predictor</code> on this machine.</p>",
        scores,
        "<h2>Distillation</h2>",
        f"<p>{texts['distilled_on']} texts labelled by the teacher: {texts['train']} training texts, "
        f"{texts['copies_per_text']} changed copies of each, {texts['unlabelled']} unlabelled texts "
        "(repeats and texts of the scored splits left out). "
        f"{settings['epochs']} epochs, "
        + (
            "the squared difference of the logits as the loss"
            if settings["loss"] == "mse"
            else f"the KL divergence at temperature {settings['temperature']} as the loss"
        )
        + ". Time: teacher labels "
        f"{seconds['teacher_labels_s']:.0f} s, table {seconds['init_s']:.0f} s, training {seconds['train_s']:.0f} s, "
        f"in all {seconds['total_s']:.0f} s.</p>",
        "<p>Loss per epoch: " + ", ".join(f"{loss:.4f}" for loss in summary["epoch_losses"]) + "</p>",
        "<h2>Where they disagree (validation, first 20)</h2>" if disagreements else "",
        "<table><thead><tr><th>label</th><th>teacher</th><th>student</th><th>text</th></tr></thead>"
        f"<tbody>{disagreements}</tbody></table>"
        if disagreements
        else "",
        "</body></html>",
    ]
    path.write_text("\n".join(p for p in parts if p), encoding="utf-8")


def _cell(value: str, numeric: bool = False) -> str:
    return f"<td class='num'>{value}</td>" if numeric else f"<td>{value}</td>"
