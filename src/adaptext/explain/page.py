"""The explanations page: every text with its words highlighted, green for the label and red against it."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptext.explain.records import ExplainResult

STYLE = """.why{line-height:1.9}.why span{padding:1px 2px;border-radius:3px}
.why .unseen{color:#999;text-decoration:underline dotted}
.legend span{padding:1px 6px;border-radius:3px;margin-right:.5em}"""

_PAGE_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;text-align:left}th.sorted-asc:after{content:" ▲"}
th.sorted-desc:after{content:" ▼"}td.num{text-align:right;white-space:nowrap}.wrong{background:#fff6e0}
table.summary{width:auto}"""

# Clicking a header sorts its table by that column (numbers as numbers); the page reads the same without it.
_SORT_SCRIPT = """document.querySelectorAll("table.sortable th").forEach((th, col) =>
 th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], asc = !th.classList.contains("sorted-asc");
  table.querySelectorAll("th").forEach(h => h.classList.remove("sorted-asc", "sorted-desc"));
  th.classList.add(asc ? "sorted-asc" : "sorted-desc");
  const key = r => { const c = r.cells[col]; const v = c.dataset.sort ?? c.textContent.trim();
    return v !== "" && !isNaN(v) ? Number(v) : v.toLowerCase(); };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); })
    .forEach(r => body.appendChild(r));
}));"""


def word_color(value: float, scale: float) -> str:
    """A background colour for an attribution: green towards the label, red against, white for nothing."""
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    alpha = round(0.85 * strength, 3)
    return f"rgba(22,163,74,{alpha})" if value > 0 else f"rgba(220,38,38,{alpha})"


def highlight(tokens: Sequence[str], attributions: Sequence[float], seen: int | None = None) -> str:
    """The words as HTML spans coloured by their attribution (scaled to the text's largest), with the value as
    a tooltip; words from index `seen` on are past the model's max_length and shown as unread."""
    scale = max((abs(v) for v in attributions), default=0.0)
    spans = [
        f"<span style='background:{word_color(v, scale)}' title='{v:+.4f}'>{html.escape(t)}</span>"
        if seen is None or i < seen
        else f"<span class='unseen' title='past max_length: not read by the model'>{html.escape(t)}</span>"
        for i, (t, v) in enumerate(zip(tokens, attributions, strict=True))
    ]
    return "<span class='why'>" + " ".join(spans) + "</span>"


def held_fixed(pair: str | None) -> str:
    """The second text of a pair, shown under the first: it is read by the model but not attributed."""
    if pair is None:
        return ""
    return f"<br><small>second text (held fixed, not attributed): {html.escape(pair)}</small>"


def legend() -> str:
    return (
        "<p class='legend'><span style='background:rgba(22,163,74,.6)'>for the label</span>"
        "<span style='background:rgba(220,38,38,.6)'>against it</span> shade: the word's share of the text's "
        "largest attribution; hover a word for its value (log-odds).</p>"
    )


def _cell(value: Any, sort: Any | None = None, numeric: bool = False) -> str:
    attrs = f" data-sort='{html.escape(str(sort))}'" if sort is not None else ""
    attrs += " class='num'" if numeric else ""
    return f"<td{attrs}>{value}</td>"


def write_page(path: Path, result: ExplainResult, rows: Sequence[int], summary: dict[str, Any], *, title: str) -> None:
    """Write the explanations page: the faithfulness summary, then one sortable table row per text and method."""
    method_rows = []
    for name, numbers in summary.get("methods", {}).items():
        method_rows.append(
            "<tr>"
            + "".join(
                _cell(v, numeric=i > 0)
                for i, v in enumerate(
                    [
                        html.escape(name),
                        f"{numbers['comprehensiveness']:.3f}",
                        f"{numbers['sufficiency']:.3f}",
                        _fmt(numbers.get("comprehensiveness_vs_random")),
                        _fmt(numbers.get("sufficiency_vs_random")),
                        f"{numbers['seconds_per_text']:.3f}",
                    ]
                )
            )
            + "</tr>"
        )
    random = summary.get("random", {})
    if random:
        method_rows.append(
            "<tr>"
            + _cell("random")
            + _cell(f"{random['comprehensiveness']:.3f}", numeric=True)
            + _cell(f"{random['sufficiency']:.3f}", numeric=True)
            + _cell("1.00", numeric=True) * 2
            + _cell("", numeric=True)
            + "</tr>"
        )
    body = []
    for name, explanations in result.explanations.items():
        for row, explanation in zip(rows, explanations, strict=True):
            wrong = explanation.true_label is not None and explanation.true_label != explanation.predicted
            body.append(
                f"<tr{' class=wrong' if wrong else ''}>"
                + _cell(row, numeric=True)
                + _cell(html.escape(explanation.true_label or ""))
                + _cell(html.escape(explanation.predicted))
                + _cell(html.escape(explanation.label))
                + _cell(f"{explanation.score:.3f}", numeric=True)
                + _cell(html.escape(name))
                + _cell(
                    highlight(explanation.tokens, explanation.attributions, explanation.words_seen)
                    + held_fixed(explanation.pair),
                    sort=explanation.text,
                )
                + "</tr>"
            )
    left_out = summary.get("not_applicable") or {}
    notes = "".join(f"<li>{html.escape(m)}: {html.escape(r)}</li>" for m, r in left_out.items())
    agreement = summary.get("agreement_spearman") or {}
    agree = "".join(
        f"<li>{html.escape(pair)}: {'—' if v is None else f'{v:.3f}'}</li>" for pair, v in agreement.items()
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_PAGE_STYLE}{STYLE}</style></head><body>",
        f"<h1>Why the model decided: {html.escape(title)}</h1>",
        f"<p>{summary.get('n_texts', len(rows))} texts; explained label: {html.escape(str(summary.get('target')))}."
        " Each word's attribution is its push on the log-odds of the explained label.</p>",
        "<h2>Faithfulness</h2>",
        "<p>Comprehensiveness: how much the label's probability drops when the top words are removed (higher is "
        "better). Sufficiency: how much it drops when only the top words are kept (lower is better). Averaged over "
        "the top 1, 5, 10, 20 and 50% of words (DeYoung et al., 2020), next to random attributions.</p>",
        "<table class='summary sortable'><thead><tr><th>method</th><th>comprehensiveness</th><th>sufficiency</th>"
        "<th>compr. / random</th><th>suff. / random</th><th>seconds per text</th></tr></thead>"
        f"<tbody>{''.join(method_rows)}</tbody></table>",
        f"<p>Agreement between methods (mean Spearman correlation per text):</p><ul>{agree}</ul>" if agree else "",
        f"<p>Methods that cannot explain this model:</p><ul>{notes}</ul>" if notes else "",
        "<h2>Texts</h2>",
        legend(),
        "<p>Click a column header to sort. Rows the model got wrong are shaded.</p>",
        "<table id='explanations' class='sortable'><thead><tr><th>row</th><th>true label</th><th>predicted</th>"
        "<th>explained label</th><th>score</th><th>method</th><th>text</th></tr></thead>",
        f"<tbody>{''.join(body)}</tbody></table>",
        f"<script>{_SORT_SCRIPT}</script></body></html>",
    ]
    path.write_text("\n".join(p for p in parts if p), encoding="utf-8")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
