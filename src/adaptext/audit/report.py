"""Writing an audit: `suspects.csv`, `duplicates.csv`, `audit.json` and a self-contained `audit.html`."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from adaptext.audit.duplicates import Duplicate, Split
from adaptext.audit.result import AuditResult

SHOWN_ROWS = 1000  # rows per table on the page; the CSV files hold them all
SUSPECT_COLUMNS = ["rank", "row", "text", "given_label", "suggested_label", "confidence", "label_quality"]
DUPLICATE_COLUMNS = [
    "kind",
    "split_a",
    "row_a",
    "text_a",
    "label_a",
    "split_b",
    "row_b",
    "text_b",
    "label_b",
    "similarity",
    "conflict",
]


def write_audit(result: AuditResult, splits: Sequence[Split], folder: Path) -> None:
    """Write the audit's four files into `folder`."""
    suspects = pd.DataFrame([asdict(s) for s in result.suspects], columns=SUSPECT_COLUMNS)
    suspects.to_csv(folder / "suspects.csv", index=False)
    duplicates = duplicate_frame(result.duplicates, splits)
    duplicates.to_csv(folder / "duplicates.csv", index=False)
    record = {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": result.summary(),
        "labels": result.labels,
        "settings": result.settings,
        "seconds": result.seconds,
    }
    (folder / "audit.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (folder / "audit.html").write_text(_page(result, suspects, duplicates), encoding="utf-8")


def duplicate_frame(duplicates: Sequence[Duplicate], splits: Sequence[Split]) -> pd.DataFrame:
    """One row per pair: leakage across files first, then pairs whose labels disagree, then by similarity."""
    texts = {split.name: dict(zip(split.data.rows, split.data.texts, strict=True)) for split in splits}
    records = [
        {
            "kind": d.kind,
            "split_a": d.split_a,
            "row_a": d.row_a,
            "text_a": texts[d.split_a][d.row_a],
            "label_a": d.label_a if d.label_a is not None else "",
            "split_b": d.split_b,
            "row_b": d.row_b,
            "text_b": texts[d.split_b][d.row_b],
            "label_b": d.label_b if d.label_b is not None else "",
            "similarity": d.similarity,
            "conflict": "yes" if d.conflict else "no",
            "_order": (not d.leakage, not d.conflict, -d.similarity),
        }
        for d in duplicates
    ]
    records.sort(key=lambda r: r["_order"])
    frame = pd.DataFrame(records, columns=[*DUPLICATE_COLUMNS, "_order"])
    return frame.drop(columns="_order")


def _table(frame: pd.DataFrame, table_id: str) -> str:
    if frame.empty:
        return "<p class='none'>None found.</p>"
    shown = frame.head(SHOWN_ROWS)
    numeric = {c for c in shown.columns if pd.api.types.is_numeric_dtype(shown[c])}
    head = "".join(
        f"<th data-kind='{'num' if c in numeric else 'text'}' title='click to sort'>{html.escape(c)}</th>"
        for c in shown.columns
    )
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
    note = (
        f"<p class='note'>The first {SHOWN_ROWS} of {len(frame)}; the CSV file has all.</p>"
        if len(frame) > len(shown)
        else ""
    )
    return f"{note}<table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(result: AuditResult) -> str:
    counts = result.summary()
    classifier = _CLASSIFIER_WORDS.get(result.settings["classifier"], result.settings["classifier"])
    items: list[tuple[str, Any]] = [
        ("file", result.source),
        ("rows audited", counts["rows"]),
        ("labels", ", ".join(result.labels)),
        ("suspected label errors", counts["suspects"]),
        ("exact duplicate pairs", counts["exact_duplicates"]),
        ("near duplicate pairs", counts["near_duplicates"]),
        ("duplicate pairs whose labels disagree", counts["conflicting_duplicates"]),
        *((f"leakage {pair}", n) for pair, n in counts["leakage"].items() if _both_given(pair, result)),
        ("embeddings from", result.settings["encoder_source"]),
        ("ranking", f"{result.settings['method']}, {result.settings['folds_used']}-fold {classifier}"),
        ("near-duplicate threshold", result.settings["near_threshold"]),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table class='summary'>{rows}</table>"


_CLASSIFIER_WORDS = {
    "ensemble": "logistic regression + 10-nearest-neighbour vote",
    "logistic": "logistic regression",
    "knn": "10-nearest-neighbour vote",
}


def _both_given(pair: str, result: AuditResult) -> bool:
    return all(name in result.settings["files"] for name in pair.split("-"))


def _page(result: AuditResult, suspects: pd.DataFrame, duplicates: pd.DataFrame) -> str:
    leakage = duplicates[duplicates["split_a"] != duplicates["split_b"]]
    within = duplicates[duplicates["split_a"] == duplicates["split_b"]]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adaptext audit: {html.escape(Path(result.source).name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Data audit of {html.escape(result.source)}</h1>
{_summary(result)}
<h2>Suspected label errors</h2>
<p>Rows whose given label the other rows contradict: a classifier trained without the row (out of fold) gives
another label. <b>confidence</b> is its probability for the suggested label; <b>label_quality</b> is cleanlab's
score of the given label (low = more likely wrong). <b>row</b> is the data row in the file (1 = the first row
after the header). Click a column header to sort.</p>
{_table(suspects, "suspects")}
<h2>Leakage: the same or nearly the same text in two files</h2>
{_table(leakage, "leakage")}
<h2>Duplicates within a file</h2>
{_table(within, "duplicates")}
<script>{_SCRIPT}</script>
</body></html>
"""


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; background: #f0f0f0; }
table.summary th { background: #f7f7f7; }
td { max-width: 40em; overflow-wrap: anywhere; }
.note, .none { color: #666; }
"""

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
      var num = th.dataset.kind === 'num';
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""
