"""The monitor's database: classified events and alerts, through SQLAlchemy (SQLite by default, PostgreSQL by URL).

The schema is created and upgraded by the tool itself: `MIGRATIONS` is an ordered list of steps, the version reached
is kept in the `monitor_meta` table, an older database is upgraded step by step in one transaction, and a database
written by a newer adaptext is refused. Every event has a unique `key` (a hash of its text, time, source and topic),
and events are inserted with the dialect's insert-or-ignore, so the same rows ingested twice are stored once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from adaptext.core.errors import AdaptextError

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///monitor.db"

ALL = "*"  # the group value of an alert on the whole stream rather than one source or topic


def _meta_columns() -> list[Any]:
    return [Column("key", String(64), primary_key=True), Column("value", String(200), nullable=False)]


def _event_columns(version: int) -> list[Any]:
    columns: list[Any] = [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", String(32), nullable=False, unique=True),
        Column("ts", BigInteger, nullable=False, index=True),  # seconds since 1970-01-01 UTC
        Column("source", String(200), nullable=False),  # "" when the event has none
        Column("topic", String(200), nullable=False),
        Column("text", Text, nullable=False),
        Column("label", String(200), nullable=False),
        Column("score", Float, nullable=False),  # the probability of `label` (the out-of-scope share, see Prediction)
    ]
    if version >= 2:
        columns.append(Column("ood_score", Float, nullable=True))  # only for models with an out-of-scope detector
    return columns


def _alert_columns(version: int) -> list[Any]:
    columns: list[Any] = [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("window_start", BigInteger, nullable=False),
        Column("metric", String(100), nullable=False),
        Column("source", String(200), nullable=False),  # ALL for the whole stream
        Column("topic", String(200), nullable=False),
        Column("value", Float, nullable=False),
        Column("baseline", Float, nullable=False),
        Column("statistic", Float, nullable=False),  # the z-score, or the CUSUM sum, that raised it
        Column("count", Integer, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        UniqueConstraint("window_start", "metric", "source", "topic", name="uq_monitor_alert"),
    ]
    if version >= 2:  # webhook delivery state
        columns += [
            Column("attempts", Integer, nullable=False, server_default="0"),
            Column("delivered_at", BigInteger, nullable=True),
            Column("last_error", Text, nullable=True),
        ]
    return columns


metadata = MetaData()
meta_table = Table("monitor_meta", metadata, *_meta_columns())
events = Table("monitor_events", metadata, *_event_columns(2))
alerts = Table("monitor_alerts", metadata, *_alert_columns(2))


def _create_version_1(connection: Connection) -> None:
    """Events without out-of-scope scores; alerts without delivery state (adaptext's first monitor schema)."""
    old = MetaData()
    Table("monitor_meta", old, *_meta_columns())
    Table("monitor_events", old, *_event_columns(1))
    Table("monitor_alerts", old, *_alert_columns(1))
    old.create_all(connection)


def _upgrade_to_2(connection: Connection) -> None:
    """Out-of-scope scores on events; webhook delivery state on alerts."""
    for statement in (
        "ALTER TABLE monitor_events ADD COLUMN ood_score FLOAT",
        "ALTER TABLE monitor_alerts ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE monitor_alerts ADD COLUMN delivered_at BIGINT",
        "ALTER TABLE monitor_alerts ADD COLUMN last_error TEXT",
    ):
        connection.execute(text(statement))
    # Alerts stored before delivery was tracked count as delivered: a new webhook must not replay history.
    connection.execute(update(alerts).values(delivered_at=alerts.c.created_at))


# Each step takes the schema from its index to the next version: MIGRATIONS[0] makes version 1, and so on.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_create_version_1, _upgrade_to_2)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class EventRow:
    """One classified event as stored."""

    key: str
    ts: int
    source: str
    topic: str
    text: str
    label: str
    score: float
    ood_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def event_key(text: str, ts: int, source: str, topic: str) -> str:
    """The identity of an event: the same text at the same second from the same source and topic is one event."""
    digest = hashlib.sha256("\x1f".join((text, str(ts), source, topic)).encode("utf-8"))
    return digest.hexdigest()[:32]


class Store:
    """A monitor database, migrated to the current schema on opening.

    >>> store = open_store("sqlite:///monitor.db")  # doctest: +SKIP
    >>> store.count_events()  # doctest: +SKIP
    0
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def schema_version(self) -> int:
        """The version recorded in the database (0 for an empty database)."""
        with self.engine.connect() as connection:
            return _recorded_version(connection)

    def existing_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` are stored already."""
        found: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(keys), 500):  # bound the number of SQL parameters
                part = list(keys[start : start + 500])
                found.update(connection.scalars(select(events.c.key).where(events.c.key.in_(part))))
        return found

    def add_events(self, rows: Sequence[EventRow]) -> int:
        """Store `rows` in one transaction, skipping any whose key is stored; returns how many were new."""
        if not rows:
            return 0
        values = [row.as_dict() for row in rows]
        with self.engine.begin() as connection:
            # RETURNING names the rows inserted: a driver's row count for many rows is not reliable (psycopg: -1).
            inserted = connection.execute(
                _insert_or_ignore(self.engine, events, ["key"]).returning(events.c.key), values
            )
            return len(inserted.all())

    def count_events(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(events)) or 0)

    def window_counts(self, window: int, *, since: int | None = None) -> list[tuple[int, str, str, str, int, float]]:
        """Per window start, source, topic and label: the number of events and the sum of their scores."""
        start = _floor_div(events.c.ts, window) * window
        query = select(
            start.label("start"),
            events.c.source,
            events.c.topic,
            events.c.label,
            func.count().label("n"),
            func.sum(events.c.score).label("score_sum"),
        ).group_by(start, events.c.source, events.c.topic, events.c.label)
        if since is not None:
            query = query.where(events.c.ts >= since)
        with self.engine.connect() as connection:
            return [
                (int(r.start), r.source, r.topic, r.label, int(r.n), float(r.score_sum or 0.0))
                for r in connection.execute(query)
            ]

    def ood_counts(self, window: int, threshold_label: str) -> dict[tuple[int, str, str], tuple[int, int, float]]:
        """Per window start, source and topic: events with an out-of-scope score, how many got `threshold_label`
        (the detector's label), and the sum of their out-of-scope scores."""
        start = _floor_div(events.c.ts, window) * window
        outside = func.sum((events.c.label == threshold_label).cast(Integer))
        query = (
            select(
                start.label("start"),
                events.c.source,
                events.c.topic,
                func.count(),
                outside,
                func.sum(events.c.ood_score),
            )
            .where(events.c.ood_score.is_not(None))
            .group_by(start, events.c.source, events.c.topic)
        )
        with self.engine.connect() as connection:
            return {
                (int(r[0]), r[1], r[2]): (int(r[3]), int(r[4] or 0), float(r[5] or 0.0))
                for r in connection.execute(query)
            }

    def events_between(
        self, start: int, end: int, *, source: str | None = None, topic: str | None = None
    ) -> list[tuple[str, str, float, int, str, str]]:
        """Events with `start <= ts < end` (of one source / topic when given): text, label, score, ts, source, topic."""
        query = select(events.c.text, events.c.label, events.c.score, events.c.ts, events.c.source, events.c.topic)
        query = query.where(events.c.ts >= start, events.c.ts < end)
        if source is not None:
            query = query.where(events.c.source == source)
        if topic is not None:
            query = query.where(events.c.topic == topic)
        with self.engine.connect() as connection:
            return [(r[0], r[1], float(r[2]), int(r[3]), r[4], r[5]) for r in connection.execute(query)]

    def time_range(self) -> tuple[int, int] | None:
        """The first and last event times (None with no events)."""
        with self.engine.connect() as connection:
            first, last = connection.execute(select(func.min(events.c.ts), func.max(events.c.ts))).one()
        return None if first is None else (int(first), int(last))

    def add_alert(self, values: dict[str, Any]) -> int | None:
        """Store an alert unless one exists for its window, metric and group; returns its id when it is new."""
        statement = _insert_or_ignore(self.engine, alerts, ["window_start", "metric", "source", "topic"])
        with self.engine.begin() as connection:
            inserted = connection.execute(statement.values(**values).returning(alerts.c.id)).scalar()
        return None if inserted is None else int(inserted)

    def alerts(self, *, since: int | None = None, undelivered: bool = False) -> list[dict[str, Any]]:
        """Stored alerts in window order (from window `since` on; only those not yet delivered)."""
        query = select(alerts).order_by(alerts.c.window_start, alerts.c.id)
        if since is not None:
            query = query.where(alerts.c.window_start >= since)
        if undelivered:
            query = query.where(alerts.c.delivered_at.is_(None))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def record_delivery(self, alert_id: int, *, attempts: int, delivered_at: int | None, error: str | None) -> None:
        """Add `attempts` to an alert's count and record whether (when) it was delivered, or the last error."""
        with self.engine.begin() as connection:
            connection.execute(
                update(alerts)
                .where(alerts.c.id == alert_id)
                .values(attempts=alerts.c.attempts + attempts, delivered_at=delivered_at, last_error=error)
            )


def _floor_div(column: Any, window: int) -> Any:
    # SQLAlchemy renders `//` as integer floor division on every dialect.
    return column // window


def _insert_or_ignore(engine: Engine, table: Table, keys: list[str]) -> Any:
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    raise AdaptextError(f"the monitor stores events in SQLite or PostgreSQL, not {name}")


def _recorded_version(connection: Connection) -> int:
    if not inspect(connection).has_table("monitor_meta"):
        if inspect(connection).has_table("monitor_events"):
            raise AdaptextError("the database has monitor tables but no schema version; it was not made by adaptext")
        return 0
    value = connection.scalar(select(meta_table.c.value).where(meta_table.c.key == "schema_version"))
    return int(value) if value is not None else 0


def migrate(engine: Engine, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to schema version `target` in one transaction; returns the version it had.

    A database of a newer version than this adaptext knows is refused, untouched."""
    with engine.begin() as connection:
        found = _recorded_version(connection)
        if found > SCHEMA_VERSION:
            raise AdaptextError(
                f"{engine.url.render_as_string(hide_password=True)}: the monitor database has schema version {found}, "
                f"newer than this adaptext's {SCHEMA_VERSION}; upgrade adaptext to use it"
            )
        for version in range(found, target):
            MIGRATIONS[version](connection)
            if version + 1 == 1:
                connection.execute(meta_table.insert().values(key="schema_version", value="1"))
            else:
                connection.execute(
                    update(meta_table).where(meta_table.c.key == "schema_version").values(value=str(version + 1))
                )
        if found < target:
            logger.info("monitor database: schema version %d (was %s)", target, found or "empty")
    return found


def open_store(url: str = DEFAULT_URL) -> Store:
    """Connect to `url` (`sqlite:///path.db`, `postgresql://user@host/db`), creating or upgrading its schema."""
    engine = connect(url)
    try:
        migrate(engine)
    except OperationalError as error:
        raise AdaptextError(f"{engine.url.render_as_string(hide_password=True)}: cannot open: {error.orig}") from None
    return Store(engine)


def connect(url: str) -> Engine:
    """An engine for `url`; PostgreSQL URLs without a driver use psycopg 3, SQLite waits on a locked database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise AdaptextError(
            f"{url!r} is not a database URL; use sqlite:///monitor.db or postgresql://user@host/database"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise AdaptextError(f"{parsed.get_backend_name()}: the monitor stores events in SQLite or PostgreSQL")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise AdaptextError(f"{url}: the folder {folder} does not exist")
    try:
        engine = create_engine(parsed, future=True)
    except (ArgumentError, ImportError, SQLAlchemyError) as error:
        raise AdaptextError(f"{parsed.render_as_string(hide_password=True)}: {error}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the dashboard read while an ingest writes; a writer waits up to 30 s for another to finish.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
