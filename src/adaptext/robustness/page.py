"""`robustness.html`: one self-contained page (inline SVG chart, no script) of a `RobustnessReport`."""

from __future__ import annotations

import difflib
import html
import re
from pathlib import Path
from typing import Any

from adaptext.data.perturb import PERTURBATIONS
from adaptext.robustness.report import RobustnessReport


def write_page(report: RobustnessReport, path: Path) -> None:
    """Write `report` as an HTML page at `path`."""
    attack = report.attack
    title = f"Robustness of {report.model or 'the model'}"
    parts = [
        "<!doctype html>",
        f"<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _summary(report),
        "<h2>Flip rate per perturbation</h2>",
        "<p>The share of the texts a perturbation changed whose prediction changed with them. Each perturbation is "
        "scored only on the texts it changed (a text without a number is not counted for <i>numbers</i>). "
        "Grey bars: perturbations that may change the label, left out of the overall flip rate.</p>",
        _chart(report),
        _scores(report),
        "<h2>Word-substitution attack</h2>",
        _attack(report)
        if attack.attacked
        else "<p class='note'>Not run"
        + (" (--attack-words 0)" if attack.max_words <= 0 else ": the model got no text right")
        + ".</p>",
        "<h2>Worst examples</h2>",
        "<p>Per perturbation: flips first, then the texts whose probabilities moved most. "
        "<del>Struck out</del>: removed; <ins>underlined</ins>: added.</p>",
        *(_examples(name, examples) for name, examples in report.worst.items()),
        "</body></html>",
    ]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _summary(report: RobustnessReport) -> str:
    settings = report.settings
    items: list[tuple[str, Any]] = [
        ("model", report.model),
        ("data", report.source + (f" (first {report.n} rows)" if settings.limit is not None else "")),
        ("texts", report.n),
        ("clean accuracy", _number(report.clean_accuracy)),
        ("flip rate (label-preserving perturbations, weighted by texts changed)", _number(report.flip_rate)),
        ("attack success rate", _number(report.attack.success_rate)),
        ("seed", settings.seed),
        ("time", f"{report.seconds:.0f} s"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table class='summary'>{rows}</table>"


def _preserving(name: str) -> bool:
    return name not in PERTURBATIONS or PERTURBATIONS.get(name).label_preserving


def _chart(report: RobustnessReport) -> str:
    """A horizontal bar per perturbation, its flip rate as length (the axis ends at the largest rate, at least 10%)."""
    rates = {name: score.flip_rate for name, score in report.perturbations.items()}
    top = max([0.1, *(r for r in rates.values() if r is not None)])
    label_w, bar_w, row_h = 130, 360, 24
    height = row_h * len(rates) + 30
    items = []
    for k, (name, rate) in enumerate(rates.items()):
        y = 10 + k * row_h
        width = 0 if rate is None else bar_w * rate / top
        colour = "#3b6fb6" if _preserving(name) else "#999"
        shown = "not applicable" if rate is None else f"{rate:.1%}"
        items.append(
            f"<text x='{label_w - 6}' y='{y + 15}' text-anchor='end'>{html.escape(name)}</text>"
            f"<rect x='{label_w}' y='{y + 3}' width='{width:.1f}' height='{row_h - 8}' fill='{colour}'>"
            f"<title>{html.escape(name)}: {shown}</title></rect>"
            f"<text x='{label_w + width + 4:.1f}' y='{y + 15}'>{shown}</text>"
        )
    axis_y = 10 + row_h * len(rates)
    axis = (
        f"<line x1='{label_w}' y1='{axis_y}' x2='{label_w + bar_w}' y2='{axis_y}' stroke='#888'/>"
        f"<text x='{label_w}' y='{axis_y + 15}'>0%</text>"
        f"<text x='{label_w + bar_w}' y='{axis_y + 15}' text-anchor='end'>{top:.0%}</text>"
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_w + bar_w + 80}' height='{height}' "
        f"role='img' aria-label='flip rate per perturbation' font-size='13'>{''.join(items)}{axis}</svg>"
    )


def _scores(report: RobustnessReport) -> str:
    rows = []
    for name, score in report.perturbations.items():
        description = PERTURBATIONS.get(name).description if name in PERTURBATIONS else ""
        rows.append(
            f"<tr><td>{html.escape(name)}{'' if _preserving(name) else ' (may change the label)'}</td>"
            f"<td class='num'>{score.changed}</td>"
            f"<td class='num'>{_number(score.clean_accuracy_on_changed)}</td>"
            f"<td class='num'>{_number(score.accuracy)}</td>"
            f"<td class='num'>{_number(score.flip_rate)}</td>"
            f"<td>{html.escape(description)}</td></tr>"
        )
    return (
        "<table><thead><tr><th>perturbation</th><th>texts changed</th><th>accuracy before</th>"
        "<th>accuracy after</th><th>flip rate</th><th>what it does</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _attack(report: RobustnessReport) -> str:
    a = report.attack
    words = "–" if a.mean_words_changed is None else f"{a.mean_words_changed:.2f}"
    queries = "–" if a.mean_queries is None else f"{a.mean_queries:.1f}"
    source = report.settings.attack.embeddings or "the attacked model"
    return (
        f"<p>Each of the {a.attacked} texts the model got right was attacked: its words ranked by how much deleting "
        "each one lowers the model's margin for the right answer, then replaced in that order by the nearest "
        "whole words of the model's input embeddings (not stop words), keeping a change only when it lowers the "
        f"margin, until the answer is wrong, {a.max_words} words are changed or {a.max_queries} texts have been "
        "sent to the model. Nearest neighbours in embedding space are not always synonyms (an antonym can be one), "
        "so read the examples below: the success rate is an upper bound on the model's weakness.</p>"
        "<table class='summary'>"
        f"<tr><th>success rate (share of attacked texts flipped)</th><td>{_number(a.success_rate)}</td></tr>"
        f"<tr><th>accuracy under attack (all texts)</th><td>{_number(a.accuracy_under_attack)}</td></tr>"
        f"<tr><th>words changed per successful attack</th><td>{words}</td></tr>"
        f"<tr><th>queries per attacked text</th><td>{queries}</td></tr>"
        f"<tr><th>substitutes from the input embeddings of</th><td>{html.escape(source)}</td></tr>"
        "</table>"
    )


def _tokens(text: str) -> list[str]:
    # Word by word, but a text without spaces (Chinese, Japanese) character by character.
    return re.findall(r"\s+|\S+", text) if re.search(r"\s", text.strip()) else list(text)


def _diff(original: str, perturbed: str) -> tuple[str, str]:
    """Both texts as HTML, with what the perturbation removed in `<del>` and what it added in `<ins>`."""
    a, b = _tokens(original), _tokens(perturbed)
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old, new = html.escape("".join(a[i1:i2])), html.escape("".join(b[j1:j2]))
        if op == "equal":
            left.append(old)
            right.append(new)
            continue
        if old.strip() or (old and op == "delete"):
            left.append(f"<del>{old}</del>")
        if new.strip() or (new and op == "insert"):
            right.append(f"<ins>{new}</ins>")
    return "".join(left), "".join(right)


def _answer(value: str | list[str]) -> str:
    return html.escape(", ".join(value) if isinstance(value, list) else value)


def _examples(name: str, examples: list[dict[str, Any]]) -> str:
    if not examples:
        return f"<h3>{html.escape(name)}</h3><p class='note'>No text changed.</p>"
    rows = []
    for example in examples:
        before, after = _diff(example["original"], example["perturbed"])
        flipped = example["before"] != example["after"]
        scores = ", ".join(
            f"{html.escape(label)} {p:.3f}→{example['scores']['after'][label]:.3f}"
            for label, p in example["scores"]["before"].items()
        )
        rows.append(
            f"<tr{' class=flip' if flipped else ''}><td class='num'>{example['row']}</td><td>{before}</td>"
            f"<td>{after}</td><td class='label'>{_answer(example['label'])}</td>"
            f"<td class='label'>{_answer(example['before'])}</td><td class='label'>{_answer(example['after'])}</td>"
            f"<td>{scores}</td></tr>"
        )
    return (
        f"<h3>{html.escape(name)}</h3><table><thead><tr><th>row</th><th>original</th><th>perturbed</th>"
        "<th>label</th><th>before</th><th>after</th><th>probabilities before→after</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
thead th, table.summary th { background: #f4f4f4; }
td { max-width: 36em; overflow-wrap: anywhere; }
td.label { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flip td { background: #fff3f0; }
del { background: #fdd; }
ins { background: #dfd; }
.note { color: #666; }
svg text { fill: #222; }
"""
