"""The sentiment monitor: timestamped texts classified and stored (SQLite or PostgreSQL through SQLAlchemy), spike
alerts on the share of one label per window with webhook delivery, drift signals, and a dashboard.

`adaptext monitor ingest | serve | alerts` are its front ends; see `docs/monitor.md`.
"""

from adaptext.apps.monitor.alerts import evaluate_alerts, judge_series, watched_label
from adaptext.apps.monitor.config import MonitorConfig, load_monitor_config
from adaptext.apps.monitor.ingest import IngestResult, ingest, ingest_records
from adaptext.apps.monitor.store import DEFAULT_URL, Store, open_store

__all__ = [
    "DEFAULT_URL",
    "IngestResult",
    "MonitorConfig",
    "Store",
    "evaluate_alerts",
    "ingest",
    "ingest_records",
    "judge_series",
    "load_monitor_config",
    "open_store",
    "watched_label",
]
