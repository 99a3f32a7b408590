"""How well a router does on a labelled file: texts answered correctly without a person, wrong answers, handoffs,
and how these move with the confidence threshold (`adaptext route --evaluate`).

Definitions (shares of all texts unless said otherwise): a text is *answered* when the router gives its intent's
answer; *correct* when it is answered and in scope with the true intent; *wrong* when it is answered otherwise
(a wrong intent, or an out-of-scope text answered with an intent). `automation_rate` = correct / all texts;
`in_scope_automation` = correct / in-scope texts; `wrong_answer_rate` = wrong / all texts; `faq_rate` and
`handoff_rate` for the rest; `out_of_scope_contained` = out-of-scope texts handed over or sent to the FAQ /
out-of-scope texts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import beta

from adaptext.apps.router.route import Routed, Router, Signals
from adaptext.core.errors import AdaptextError


@dataclass
class RoutingReport:
    """The router's rates at its configured threshold, the threshold curve, and the lowest threshold that keeps
    wrong answers within `max_wrong_rate` (None when no threshold does)."""

    metrics: dict[str, Any]
    curve: list[dict[str, float]]
    curve_without_detector: list[dict[str, float]] | None
    suggested: dict[str, float] | None
    max_wrong_rate: float
    actions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "actions": self.actions,
            "max_wrong_rate": self.max_wrong_rate,
            "suggested_min_confidence": self.suggested,
            "curve": self.curve,
            "curve_without_detector": self.curve_without_detector,
        }


def text_weights(in_scope: np.ndarray, out_of_scope_share: float | None) -> np.ndarray:
    """(n,) weights summing to 1 that make a rate over all texts a weighted sum: 1/n each for the file's own mix;
    with `out_of_scope_share` s, the out-of-scope rows share s equally and the in-scope rows share 1 - s."""
    n = len(in_scope)
    if out_of_scope_share is None:
        return np.full(n, 1 / max(n, 1))
    n_out = int((~in_scope).sum())
    if n_out == 0 or n_out == n:
        raise AdaptextError(
            f"out_of_scope_share needs both in-scope and out-of-scope texts; this file has {n - n_out} and {n_out}"
        )
    return np.where(in_scope, (1 - out_of_scope_share) / (n - n_out), out_of_scope_share / n_out)


def upper_bound(count: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen as `count` of `n`, at `confidence` (1 for n = 0)."""
    if count >= n:
        return 1.0
    return float(beta.ppf(confidence, count + 1, n - count))


def wrong_rate_bound(wrong: np.ndarray, in_scope: np.ndarray, share: float, confidence: float) -> float:
    """An upper bound, at `confidence`, of the wrong-answer rate of traffic with `share` out of scope: a bound for
    the in-scope rows and one for the out-of-scope rows, each at half the risk (so both hold together), mixed."""
    level = (1 + confidence) / 2
    bound = (1 - share) * upper_bound(int((wrong & in_scope).sum()), int(in_scope.sum()), level)
    if share > 0:
        bound += share * upper_bound(int((wrong & ~in_scope).sum()), int((~in_scope).sum()), level)
    return bound


def _rates(
    answered: np.ndarray, right: np.ndarray, in_scope: np.ndarray, weights: np.ndarray, confidence: float | None
) -> dict[str, float]:
    """Shares for the boolean (n,) arrays (answered by the router, right intent and in scope, in scope), the rates
    over all texts weighted by `weights` (`text_weights`); with `confidence`, the wrong-answer rate's upper bound."""
    correct = answered & right
    wrong = answered & ~right
    rates = {
        "automation_rate": float(weights[correct].sum()),
        "in_scope_automation": float(correct[in_scope].mean()) if in_scope.any() else 0.0,
        "wrong_answer_rate": float(weights[wrong].sum()),
        "not_answered_rate": float(weights[~answered].sum()),
        "out_of_scope_contained": float((~answered)[~in_scope].mean()) if (~in_scope).any() else 1.0,
    }
    if confidence is not None:
        share = float(weights[~in_scope].sum())
        rates["wrong_answer_upper_bound"] = wrong_rate_bound(wrong, in_scope, share, confidence)
    return rates


def _curve(
    router: Router,
    signals: Signals,
    right: np.ndarray,
    in_scope: np.ndarray,
    weights: np.ndarray,
    confidence: float | None,
) -> list[dict[str, float]]:
    """Rates at every threshold where something changes: 0 and each distinct confidence, rounded down to 1e-4 (so
    that the text at a threshold is still answered there)."""
    thresholds = np.unique(np.concatenate([[0.0], np.floor(signals.confidence * 1e4) / 1e4, [1.0]]))
    return [
        {"min_confidence": float(t), **_rates(router.answered(signals, float(t)), right, in_scope, weights, confidence)}
        for t in thresholds
    ]


def evaluate_routing(
    router: Router,
    signals: Signals,
    routes: Sequence[Routed],
    gold: Sequence[str],
    ood_label: str | None,
    max_wrong_rate: float,
    out_of_scope_share: float | None = None,
    wrong_rate_confidence: float | None = None,
) -> RoutingReport:
    """Score `routes` (decided from `signals`) against the true intents `gold` (`ood_label` marks out-of-scope);
    with `out_of_scope_share`, the rates over all texts are those of traffic with that share of out-of-scope texts;
    with `wrong_rate_confidence`, the suggested threshold keeps the wrong-answer rate's upper bound within the limit."""
    labels = router.predictor.labels
    gold_array = np.asarray(gold, dtype=object)
    in_scope = gold_array != ood_label if ood_label is not None else np.ones(len(gold), dtype=bool)
    predicted = np.asarray([labels[i] for i in signals.intent], dtype=object)
    right = in_scope & (predicted == gold_array)
    action = np.array([route.action for route in routes], dtype=object)
    answered = action == "answer"
    actions: Counter[str] = Counter(action.tolist())
    weights = text_weights(in_scope, out_of_scope_share)
    metrics: dict[str, Any] = {
        "n": len(routes),
        "n_in_scope": int(in_scope.sum()),
        "n_out_of_scope": int((~in_scope).sum()),
        # the mix every rate over all texts is of: the file's own, or the configured one
        "out_of_scope_share": float(weights[~in_scope].sum()),
        "out_of_scope_share_configured": out_of_scope_share is not None,
        "min_confidence": router.rule.min_confidence,
        "detector": router.predictor.detector.method if router.detector_used and router.predictor.detector else None,
        **_rates(answered, right, in_scope, weights, wrong_rate_confidence),
        "faq_rate": float(weights[action == "faq"].sum()),
        "handoff_rate": float(weights[action == "handoff"].sum()),
        "in_scope_accuracy": float(right[in_scope].mean()) if in_scope.any() else 0.0,
    }
    metrics["wrong_rate_confidence"] = wrong_rate_confidence
    curve = _curve(router, signals, right, in_scope, weights, wrong_rate_confidence)
    without = None
    if router.detector_used:
        plain = Signals(signals.intent, signals.confidence, np.zeros(len(gold), dtype=bool), None)
        without = _curve(router, plain, right, in_scope, weights, wrong_rate_confidence)
    key = "wrong_answer_rate" if wrong_rate_confidence is None else "wrong_answer_upper_bound"
    within = [point for point in curve if point[key] <= max_wrong_rate]
    suggested = min(within, key=lambda point: point["min_confidence"]) if within else None
    return RoutingReport(metrics, curve, without, suggested, max_wrong_rate, dict(actions))


def plot_routing(report: RoutingReport, path: Path) -> None:
    """Two panels: in-scope automation against the wrong-answer rate as the threshold moves, and each rate against
    the threshold; the configured and the suggested thresholds are marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    wrong = [100 * p["wrong_answer_rate"] for p in report.curve]
    left.plot(wrong, [100 * p["in_scope_automation"] for p in report.curve], color="tab:blue", label="router")
    if report.curve_without_detector is not None:
        left.plot(
            [100 * p["wrong_answer_rate"] for p in report.curve_without_detector],
            [100 * p["in_scope_automation"] for p in report.curve_without_detector],
            color="tab:gray",
            linestyle="--",
            label="confidence only (no detector)",
        )
    m = report.metrics
    left.scatter(
        [100 * m["wrong_answer_rate"]],
        [100 * m["in_scope_automation"]],
        color="tab:red",
        zorder=3,
        label=f"configured (min_confidence {m['min_confidence']:.2f})",
    )
    if report.suggested is not None:
        s = report.suggested
        left.scatter(
            [100 * s["wrong_answer_rate"]],
            [100 * s["in_scope_automation"]],
            color="tab:green",
            marker="D",
            zorder=3,
            label=f"lowest threshold with ≤ {100 * report.max_wrong_rate:g}% wrong"
            + ("" if m["wrong_rate_confidence"] is None else f" at {100 * m['wrong_rate_confidence']:g}% confidence")
            + f" ({s['min_confidence']:.2f})",
        )
    left.axvline(100 * report.max_wrong_rate, color="tab:green", linewidth=0.8, linestyle=":")
    left.set_xlabel("wrong answers (% of all texts)")
    left.set_ylabel("in-scope texts answered correctly (%)")
    left.set_title("Automation against wrong answers")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    thresholds = [p["min_confidence"] for p in report.curve]
    for key, name, color in (
        ("automation_rate", "answered correctly", "tab:blue"),
        ("wrong_answer_rate", "wrong answers", "tab:red"),
        ("not_answered_rate", "FAQ or handoff", "tab:orange"),
    ):
        right.plot(thresholds, [100 * p[key] for p in report.curve], color=color, label=name)
    right.axvline(m["min_confidence"], color="tab:red", linewidth=0.8, linestyle="--")
    right.set_xlabel("min_confidence")
    right.set_ylabel(
        "% of all texts"
        if not m["out_of_scope_share_configured"]
        else f"% of traffic with {100 * m['out_of_scope_share']:g}% out of scope"
    )
    right.set_title(f"Rates against the threshold ({m['n']} texts)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
