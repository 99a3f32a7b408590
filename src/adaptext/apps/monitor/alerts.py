"""Spike alerts on the share of one label per window: a baseline, a rule, stored alerts and their webhook delivery.

Each group (the whole stream, each source, each topic) is a series of windows. A window with at least `min_count`
events is judged against the baseline of the windows before it:

- the baseline share `m` is the pooled share of the last `baseline.windows` windows (`rolling`) or an EWMA of the
  earlier shares (`ewma`); its spread is binomial, `m (1 - m) / n`, times the over-dispersion the baseline windows
  themselves show (never less than 1), plus the baseline's own uncertainty;
- `zscore` raises an alert when `z = (share - m) / sd` passes `threshold`; `cusum` when `S = max(0, S + z - k)`
  passes `h` (held at `h` while it alarms, and reset to 0 when the alarm ends).

A window that passes the rule is left out of the baseline, so a spike does not teach the baseline to expect spikes,
and only the first window of a run of such windows raises an alert (one alert per episode). Alerts are unique per
window, metric and group in the database, so evaluating again never repeats one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from adaptext.apps.monitor.config import MonitorConfig
from adaptext.apps.monitor.store import ALL, Store
from adaptext.apps.monitor.webhook import post_alert
from adaptext.core.errors import ConfigError

logger = logging.getLogger(__name__)

NEGATIVE_NAMES = ("negative", "neg", "bearish", "bad", "complaint", "angry", "toxic")

Group = tuple[str, str]  # (source, topic); ALL for "any"
OVERALL: Group = (ALL, ALL)


@dataclass
class WindowPoint:
    """One judged window of one group: its share of the watched label, the baseline and the band around it."""

    start: int
    count: int
    hits: int
    share: float
    baseline: float | None = None
    lower: float | None = None  # the band: a share outside it raises an alert on its own
    upper: float | None = None
    statistic: float | None = None  # z-score, or the CUSUM sum
    fired: bool = False
    alert: bool = False  # the first fired window of an episode


@dataclass
class Evaluation:
    """What one evaluation found: the alerts it stored (new ones only) and how many it delivered."""

    new_alerts: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0
    undelivered: int = 0


def metric_name(label: str) -> str:
    return f"share:{label}"


def watched_label(labels: Sequence[str], configured: str | None) -> str:
    """The label whose share is watched: `configured`, or the model's negative-like label."""
    if configured is not None:
        if configured not in labels:
            raise ConfigError(f"label: {configured!r} is not one of the model's labels: {', '.join(labels)}")
        return configured
    for name in NEGATIVE_NAMES:
        for label in labels:
            if label.lower() == name:
                return label
    raise ConfigError(
        f"the model's labels ({', '.join(labels)}) have no negative one; name the watched label in monitor.yaml "
        "(`label: ...`)"
    )


def judge_series(windows: Iterable[tuple[int, int, int]], config: MonitorConfig) -> list[WindowPoint]:
    """Judge windows `(start, count, hits)` in time order; windows under `min_count` are kept but not judged."""
    baseline = _Baseline(config)
    rule = config.rule
    band_z = rule.threshold if rule.method == "zscore" else rule.k + rule.h
    cusum = 0.0
    previous_fired = False
    points = []
    for start, count, hits in windows:
        point = WindowPoint(start=start, count=count, hits=hits, share=hits / count if count else 0.0)
        points.append(point)
        if count < config.min_count:
            continue
        if baseline.ready:
            mean, sd = baseline.judge(count)
            z = (point.share - mean) / sd
            point.baseline, point.lower, point.upper = mean, max(0.0, mean - band_z * sd), min(1.0, mean + band_z * sd)
            if rule.method == "zscore":
                point.statistic, point.fired = z, z > rule.threshold
            else:
                cusum = max(0.0, cusum + z - rule.k)
                point.statistic, point.fired = cusum, cusum > rule.h
                # While it alarms the sum is held at `h`, so the episode lasts while windows stay above `k` and
                # ends at the first that does not; then it starts again from 0.
                cusum = min(cusum, rule.h) if point.fired else (0.0 if previous_fired else cusum)
            point.alert = point.fired and not previous_fired
            previous_fired = point.fired
        if not point.fired:
            baseline.add(count, hits)
    return points


class _Baseline:
    """The expected share of the watched label and its spread, from the windows judged normal so far."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config.baseline
        self.recent: deque[tuple[int, int]] = deque(maxlen=self.config.windows)
        self.seen = 0
        self.mean = 0.0  # EWMA state
        self.size = 0.0
        self.dispersion = 1.0

    @property
    def ready(self) -> bool:
        return self.seen >= self.config.warmup

    def add(self, count: int, hits: int) -> None:
        share = hits / count
        if self.config.method == "ewma":
            if self.seen == 0:
                self.mean, self.size = share, float(count)
            else:
                alpha = self.config.alpha
                expected = _clip(self.mean, count)
                ratio = (share - self.mean) ** 2 / (expected * (1 - expected) / count)
                self.dispersion += alpha * (ratio - self.dispersion)
                self.mean += alpha * (share - self.mean)
                self.size += alpha * (count - self.size)
        self.recent.append((count, hits))
        self.seen += 1

    def judge(self, count: int) -> tuple[float, float]:
        """The baseline share and the standard deviation of a window of `count` events around it."""
        if self.config.method == "ewma":
            mean = _clip(self.mean, self.size)
            dispersion = max(1.0, self.dispersion)
            # An EWMA of shares of about `size` events each averages like 2 / alpha - 1 windows.
            pooled = self.size * (2 - self.config.alpha) / self.config.alpha
        else:
            total = sum(n for n, _ in self.recent)
            mean = _clip(sum(k for _, k in self.recent) / total, total)
            ratios = [(k / n - mean) ** 2 / (mean * (1 - mean) / n) for n, k in self.recent]
            dispersion = max(1.0, sum(ratios) / max(1, len(ratios) - 1))
            pooled = float(total)
        variance = dispersion * mean * (1 - mean) * (1 / count + 1 / pooled)
        return mean, math.sqrt(variance)


def _clip(share: float, n: float) -> float:
    # A share of exactly 0 or 1 would make every change infinitely surprising: keep it half an event inside.
    half = 0.5 / max(n, 1.0)
    return min(max(share, half), 1 - half)


def group_windows(
    rows: Iterable[tuple[int, str, str, str, int, float]], label: str, config: MonitorConfig
) -> dict[Group, list[tuple[int, int, int]]]:
    """Per group, its windows `(start, count, hits)` in time order, from `Store.window_counts` rows.

    A source's or topic's window that holds the whole stream's events is left out: the overall series judges it."""
    counts: dict[Group, dict[int, list[int]]] = {}
    for start, source, topic, row_label, n, _ in rows:
        hit = n if row_label == label else 0
        groups = [OVERALL]
        if "source" in config.group_by and source:
            groups.append((source, ALL))
        if "topic" in config.group_by and topic:
            groups.append((ALL, topic))
        for group in groups:
            cell = counts.setdefault(group, {}).setdefault(start, [0, 0])
            cell[0] += n
            cell[1] += hit
    overall = counts.get(OVERALL, {})
    series: dict[Group, list[tuple[int, int, int]]] = {}
    for group, windows in counts.items():
        kept = [(start, n, k) for start, (n, k) in sorted(windows.items()) if group == OVERALL or n < overall[start][0]]
        if kept:
            series[group] = kept
    return series


def evaluate_alerts(store: Store, config: MonitorConfig, label: str) -> Evaluation:
    """Judge every window of every group, store the alerts not stored yet, log them, and POST each undelivered
    alert to the webhook (those a failed delivery left behind too)."""
    evaluation = Evaluation()
    metric = metric_name(label)
    now = int(time.time())
    for group, windows in group_windows(store.window_counts(config.window), label, config).items():
        for point in judge_series(windows, config):
            if not point.alert or point.baseline is None or point.statistic is None:
                continue
            values = {
                "window_start": point.start,
                "metric": metric,
                "source": group[0],
                "topic": group[1],
                "value": point.share,
                "baseline": point.baseline,
                "statistic": point.statistic,
                "count": point.count,
                "created_at": now,
            }
            alert_id = store.add_alert(values)
            if alert_id is not None:
                record = alert_record(values | {"id": alert_id})
                logger.warning(
                    "alert: %s %.1f%% (baseline %.1f%%) in the window from %s, %s",
                    metric,
                    100 * point.share,
                    100 * point.baseline,
                    record["window_start"],
                    _group_text(group),
                )
                evaluation.new_alerts.append(record)
    if config.webhook.url is not None:
        for stored in store.alerts(undelivered=True):
            delivery = post_alert(alert_record(stored), config.webhook)
            store.record_delivery(
                int(stored["id"]),
                attempts=delivery.attempts,
                delivered_at=int(time.time()) if delivery.delivered else None,
                error=delivery.error,
            )
            if delivery.delivered:
                evaluation.delivered += 1
            else:
                evaluation.undelivered += 1
    return evaluation


def alert_record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored alert as the JSON the CLI, the API and the webhook give: ISO 8601 times, null for "any"."""
    record = {
        "id": row.get("id"),
        "window_start": iso_time(int(row["window_start"])),
        "metric": row["metric"],
        "value": round(float(row["value"]), 6),
        "baseline": round(float(row["baseline"]), 6),
        "statistic": round(float(row["statistic"]), 4),
        "count": int(row["count"]),
        "source": None if row["source"] == ALL else row["source"],
        "topic": None if row["topic"] == ALL else row["topic"],
        "created_at": iso_time(int(row["created_at"])),
    }
    if "attempts" in row:
        delivered = row.get("delivered_at")
        record |= {
            "delivered_at": iso_time(int(delivered)) if delivered is not None else None,
            "delivery_attempts": int(row["attempts"] or 0),
            "delivery_error": row.get("last_error"),
        }
    return record


def iso_time(seconds: int) -> str:
    """Seconds since 1970 as ISO 8601 UTC (`2024-05-01T09:00:00Z`)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _group_text(group: Group) -> str:
    if group == OVERALL:
        return "whole stream"
    return f"source {group[0]}" if group[0] != ALL else f"topic {group[1]}"


def point_dict(point: WindowPoint) -> dict[str, Any]:
    """A judged window as JSON (the time as ISO 8601)."""
    return asdict(point) | {"start": iso_time(point.start)}
