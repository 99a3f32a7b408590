"""The monitor's HTTP app: `POST /events`, a JSON API and the dashboard page at `/` that polls it.

- `POST /events`: a JSON list of events (`text`, `time`, optional `source`, `topic`), classified, stored and judged
  as `ingest` does; answers the counts and any new alerts. A bad event is a 422 naming its index and field.
- `GET /api/summary?source=S&topic=T&window=ISO`: the windows of the whole stream (or of one source / topic): volume,
  label shares, the watched share with its baseline band, mean confidence, out-of-scope rate; alerts; the
  confidence histogram and the most confident texts of the watched label in one window (default: the latest);
  drift signals.
- `GET /api/alerts?since=ISO`: the stored alerts. `GET /health`.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from adaptext.apps.monitor.alerts import alert_record, iso_time, judge_series, metric_name, point_dict, watched_label
from adaptext.apps.monitor.config import MonitorConfig
from adaptext.apps.monitor.drift import Reference, drift_signals
from adaptext.apps.monitor.ingest import ingest_records, parse_time
from adaptext.apps.monitor.store import ALL, Store
from adaptext.core.errors import AdaptextError
from adaptext.inference.predictor import Predictor

PAGE = Path(__file__).with_name("page.html")
MAX_WINDOWS = 500  # windows the summary returns, the latest ones
MAX_EVENTS = 10_000  # events one POST /events may carry


class Monitor:
    """A model, a store and the monitor's settings: what the app and its JSON answers are made from."""

    def __init__(
        self, predictor: Predictor, store: Store, config: MonitorConfig, reference: Reference | None = None
    ) -> None:
        self.predictor = predictor
        self.store = store
        self.config = config
        self.label = watched_label(predictor.labels, config.label)
        self.reference = reference
        self.lock = threading.Lock()  # one batch through the model at a time

    def summary(self, source: str | None, topic: str | None, window: int | None) -> dict[str, Any]:
        """The dashboard's data for the whole stream, or one source or topic (see the module docstring)."""
        size = self.config.window
        rows = self.store.window_counts(size)
        detector = self.predictor.detector
        ood_label = detector.label if detector is not None else None
        ood = self.store.ood_counts(size, ood_label) if ood_label is not None else {}
        cells: dict[int, dict[str, Any]] = {}
        overall: dict[int, dict[str, Any]] = {}
        sources, topics = Counter[str](), Counter[str]()
        for start, row_source, row_topic, label, n, score_sum in rows:
            sources[row_source] += n
            topics[row_topic] += n
            for table in (overall, cells) if _selected(row_source, row_topic, source, topic) else (overall,):
                cell = table.setdefault(start, {"labels": Counter(), "score": 0.0, "scored": 0, "ood": [0, 0]})
                cell["labels"][label] += n
                if label != ood_label:  # the detector's label carries the out-of-scope share as its score
                    cell["score"] += score_sum
                    cell["scored"] += n
        for (start, row_source, row_topic), (n, outside, _) in ood.items():
            for table in (overall, cells) if _selected(row_source, row_topic, source, topic) else (overall,):
                table[start]["ood"][0] += n
                table[start]["ood"][1] += outside
        windows = [_window(start, cell) for start, cell in sorted(cells.items())][-MAX_WINDOWS:]
        points = judge_series([(w["start"], w["count"], w["labels"].get(self.label, 0)) for w in windows], self.config)
        for w, point in zip(windows, points, strict=True):
            w |= {k: v for k, v in point_dict(point).items() if k not in ("start", "count")}
            w["start"] = iso_time(w["start"])
        chosen = window if window is not None else (max(cells) if cells else None)
        overall_windows = [_window(start, cell) for start, cell in sorted(overall.items())]
        return {
            "label": self.label,
            "metric": metric_name(self.label),
            "labels": self.predictor.labels,
            "window_seconds": size,
            "has_detector": detector is not None,
            "groups": {"sources": sorted(s for s in sources if s), "topics": sorted(t for t in topics if t)},
            "windows": windows,
            "alerts": [alert_record(a) for a in self.store.alerts()][-200:],
            "window": self.window_detail(chosen, source, topic),
            "drift": drift_signals(overall_windows, self.predictor.labels, self.reference, self.config.drift),
            "rule": self.config.rule.model_dump() | {"baseline": self.config.baseline.model_dump()},
        }

    def window_detail(self, start: int | None, source: str | None, topic: str | None) -> dict[str, Any] | None:
        """One window: the histogram of the predicted label's probability and the most confident watched texts."""
        if start is None:
            return None
        start -= start % self.config.window
        found = self.store.events_between(start, start + self.config.window, source=source, topic=topic)
        scores = [score for _, label, score, *_ in found]
        counts, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
        watched = sorted((e for e in found if e[1] == self.label), key=lambda e: -e[2])[:10]
        return {
            "start": iso_time(start),
            "count": len(found),
            "histogram": {"edges": [round(float(e), 2) for e in edges], "counts": [int(c) for c in counts]},
            "top_texts": [
                {"text": text, "score": score, "time": iso_time(ts), "source": src or None, "topic": top or None}
                for text, _, score, ts, src, top in watched
            ],
        }


def _selected(row_source: str, row_topic: str, source: str | None, topic: str | None) -> bool:
    return (source is None or row_source == source) and (topic is None or row_topic == topic)


def _window(start: int, cell: dict[str, Any]) -> dict[str, Any]:
    count = sum(cell["labels"].values())
    with_ood, outside = cell["ood"]
    return {
        "start": start,
        "count": count,
        "labels": dict(cell["labels"]),
        "shares": {label: n / count for label, n in cell["labels"].items()},
        "mean_confidence": cell["score"] / cell["scored"] if cell["scored"] else None,
        "ood_rate": outside / with_ood if with_ood else None,
    }


def create_monitor_app(monitor: Monitor) -> FastAPI:
    """The FastAPI app of `monitor` (serve it with `adaptext.deploy.serve.build_server`, as `adaptext monitor serve`
    does)."""
    app = FastAPI(title="adaptext monitor", docs_url=None, redoc_url=None)

    @app.post("/events")
    async def post_events(events: list[dict[str, Any]] = Body(...)) -> dict[str, Any]:  # noqa: B008
        if len(events) > MAX_EVENTS:
            raise HTTPException(413, f"at most {MAX_EVENTS} events per request, got {len(events)}")

        def work() -> dict[str, Any]:
            with monitor.lock:
                result = ingest_records(monitor.predictor, monitor.store, events, monitor.config)
            return {
                "received": result.read,
                "stored": result.stored,
                "known": result.known,
                "alerts": result.evaluation.new_alerts,
            }

        try:
            return await run_in_threadpool(work)
        except AdaptextError as error:
            raise HTTPException(422, str(error)) from None

    @app.get("/api/summary")
    async def summary(
        source: str | None = None, topic: str | None = None, window: str | None = Query(None)
    ) -> dict[str, Any]:
        try:
            start = parse_time(window, "window") if window else None
        except AdaptextError as error:
            raise HTTPException(422, str(error)) from None
        return await run_in_threadpool(monitor.summary, source or None, topic or None, start)

    @app.get("/api/alerts")
    async def list_alerts(since: str | None = None) -> list[dict[str, Any]]:
        try:
            start = parse_time(since, "since") if since else None
        except AdaptextError as error:
            raise HTTPException(422, str(error)) from None
        return [alert_record(a) for a in monitor.store.alerts(since=start)]

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


__all__ = ["ALL", "Monitor", "create_monitor_app"]
