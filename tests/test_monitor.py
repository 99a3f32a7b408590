"""The sentiment monitor: ingestion (idempotent, resumable after a bad row), alerts on a planted spike, webhook
retries, `alerts --json`, schema migration, PostgreSQL, `POST /events` and the dashboard in a browser."""

from __future__ import annotations

import http.server
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text as sql

from adaptext.apps.monitor import MonitorConfig, ingest, judge_series, load_monitor_config, open_store, watched_label
from adaptext.apps.monitor.server import Monitor, create_monitor_app
from adaptext.apps.monitor.store import SCHEMA_VERSION, connect, migrate
from adaptext.cli import main
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.deploy.serve import ServeOptions
from adaptext.inference.predictor import Predictor
from conftest import FILLER, KEYWORDS, served_in_thread, train_keyword_run

START = 1_714_521_600  # 2024-05-01T00:00:00Z
HOUR = 3600


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny keyword-task run (labels billing, shipping, technical) with an out-of-scope detector."""
    folder = tmp_path_factory.mktemp("monitor")
    return train_keyword_run(folder, tiny_model_dir, "ood.method=msp", "ood.in_scope_recall=0.99", validation=60)


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_dir(run_dir)


def config(**changes: Any) -> MonitorConfig:
    return MonitorConfig.model_validate({"label": "technical", "min_count": 20, **changes})


def stream(windows: int, per_window: int = 40, spike: tuple[int, ...] = (), seed: int = 0) -> list[dict[str, Any]]:
    """Keyword-task events, a third of them `technical`; in the `spike` windows, 90% are."""
    rng = random.Random(seed)
    rows = []
    for window in range(windows):
        share = 0.9 if window in spike else 1 / 3
        for i in range(per_window):
            label = "technical" if rng.random() < share else rng.choice(["billing", "shipping"])
            words = rng.sample(FILLER, 4) + rng.sample(KEYWORDS[label], 2)
            rng.shuffle(words)
            seconds = START + window * HOUR + i * (HOUR // per_window)
            rows.append({"text": " ".join(words), "time": pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()})
    return rows


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def db(tmp_path: Path, name: str = "monitor.db") -> str:
    return f"sqlite:///{tmp_path / name}"


# ingestion ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_ingesting_a_file_twice_stores_its_rows_once(tmp_path: Path, predictor: Predictor, suffix: str) -> None:
    rows = [*stream(3, per_window=10), {"text": "login error again", "time": START + 5, "source": "app"}]
    if suffix == ".parquet":
        rows[-1]["time"] = str(rows[-1]["time"])
    path = write(tmp_path / f"events{suffix}", rows)
    store = open_store(db(tmp_path))
    first = ingest(predictor, store, path, config(batch_size=8), progress=False)
    assert (first.read, first.stored, first.known) == (31, 31, 0)
    again = ingest(predictor, store, path, config(batch_size=8), progress=False)
    assert (again.read, again.stored, again.known) == (31, 0, 31)
    assert store.count_events() == 31
    labels = {label for _, _, _, label, _, _ in store.window_counts(HOUR)}
    assert labels <= {*predictor.labels, "unknown"} and "technical" in labels


def test_a_bad_row_names_file_row_and_column_keeps_earlier_batches_and_a_rerun_resumes(
    tmp_path: Path, predictor: Predictor
) -> None:
    rows = stream(1, per_window=30)
    rows[25]["time"] = "next tuesday"
    path = write(tmp_path / "events.csv", rows)
    store = open_store(db(tmp_path))
    with pytest.raises(DataError) as error:
        ingest(predictor, store, path, config(batch_size=10), progress=False)
    message = str(error.value)
    assert str(path) in message and "row 26" in message and "'time'" in message and "next tuesday" in message
    assert store.count_events() == 20  # the two batches before the bad one
    rows[25]["time"] = rows[24]["time"]
    rows[3]["text"] = ""
    write(path, rows)
    with pytest.raises(DataError, match=r"row 4: column 'text' is empty"):
        ingest(predictor, store, path, config(batch_size=10), progress=False)
    rows[3]["text"] = "refund please"
    write(path, rows)
    resumed = ingest(predictor, store, path, config(batch_size=10), progress=False)
    # rows 21 to 30, and row 4, whose text changed: a new event beside the one stored first
    assert resumed.known == 19 and resumed.stored == 11 and store.count_events() == 31


def test_events_from_stdin_through_the_cli(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    lines = "\n".join(json.dumps(row) for row in stream(2, per_window=5)) + "\n"
    settings = tmp_path / "monitor.yaml"
    settings.write_text("label: technical\nwindow: 30min\n")
    command = ["monitor", "ingest", str(run_dir), "-", "--db", db(tmp_path), "--config", str(settings)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(command) == 0
    assert open_store(db(tmp_path)).count_events() == 10
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "bug", "time": "x"}\n'))
    assert main(command) == 2
    assert "<stdin>: row 1: column 'time' is 'x'" in capsys.readouterr().err


# alerts ---------------------------------------------------------------------------------------------------------


def test_a_planted_spike_raises_exactly_one_alert_and_a_clean_stream_none(tmp_path: Path, predictor: Predictor) -> None:
    clean = open_store(db(tmp_path, "clean.db"))
    result = ingest(predictor, clean, write(tmp_path / "clean.csv", stream(16)), config(), progress=False)
    assert result.evaluation.new_alerts == [] and clean.alerts() == []

    spiked = open_store(db(tmp_path, "spike.db"))
    path = write(tmp_path / "spike.csv", stream(16, spike=(10, 11)))
    result = ingest(predictor, spiked, path, config(), progress=False)
    assert len(result.evaluation.new_alerts) == 1
    alert = result.evaluation.new_alerts[0]
    assert alert["window_start"] == "2024-05-01T10:00:00Z" and alert["metric"] == "share:technical"
    assert alert["value"] > 0.6 and alert["baseline"] < 0.45 and alert["source"] is None
    again = ingest(predictor, spiked, path, config(), progress=False)
    assert again.evaluation.new_alerts == [] and len(spiked.alerts()) == 1


def test_the_rules_detect_a_shift_and_stay_quiet_without_one() -> None:
    rng = random.Random(3)
    windows = [
        (START + w * HOUR, 200, sum(rng.random() < (0.35 if w >= 30 else 0.15) for _ in range(200))) for w in range(40)
    ]
    for rule in ({"method": "zscore"}, {"method": "cusum"}):
        for baseline in ({"method": "rolling"}, {"method": "ewma"}):
            points = judge_series(windows, config(rule=rule, baseline=baseline))
            alerts = [i for i, p in enumerate(points) if p.alert]
            assert alerts and alerts[0] in (30, 31), (rule, baseline, alerts)
            assert all(i >= 30 for i in alerts)
            assert all(p.lower is not None and p.lower <= p.baseline <= p.upper for p in points[6:] if p.baseline)


class Hook(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = Hook.answers.pop(0) if Hook.answers else 200
        Hook.received.append({"status": status, "body": body, "key": self.headers["Idempotency-Key"]})
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    Hook.answers, Hook.received = [500, 503], []
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()


def test_the_webhook_is_retried_until_it_answers_and_gets_each_alert_once(
    tmp_path: Path, predictor: Predictor, hook: str
) -> None:
    store = open_store(db(tmp_path))
    settings = config(webhook={"url": hook, "retries": 3, "backoff": 0.01})
    path = write(tmp_path / "spike.csv", stream(14, spike=(10,)))
    result = ingest(predictor, store, path, settings, progress=False)
    assert result.evaluation.delivered == 1 and result.evaluation.undelivered == 0
    assert [r["status"] for r in Hook.received] == [500, 503, 200]
    assert len({r["key"] for r in Hook.received}) == 1
    assert Hook.received[-1]["body"]["window_start"] == "2024-05-01T10:00:00Z"
    (stored,) = store.alerts()
    assert stored["attempts"] == 3 and stored["delivered_at"] is not None
    ingest(predictor, store, path, settings, progress=False)
    assert len(Hook.received) == 3  # delivered: never posted again


def test_an_undelivered_alert_is_retried_on_the_next_evaluation(
    tmp_path: Path, predictor: Predictor, hook: str
) -> None:
    Hook.answers = [500, 500]
    store = open_store(db(tmp_path))
    path = write(tmp_path / "spike.csv", stream(14, spike=(10,)))
    result = ingest(predictor, store, path, config(webhook={"url": hook, "retries": 1, "backoff": 0}), progress=False)
    assert result.evaluation.undelivered == 1 and store.alerts()[0]["last_error"] == "HTTP 500"
    result = ingest(predictor, store, path, config(webhook={"url": hook, "retries": 1, "backoff": 0}), progress=False)
    assert result.evaluation.delivered == 1 and [r["status"] for r in Hook.received] == [500, 500, 200]


def test_alerts_json_lists_the_stored_alerts(
    tmp_path: Path, predictor: Predictor, capsys: pytest.CaptureFixture[str]
) -> None:
    url = db(tmp_path)
    rows = stream(14, spike=(10,))
    for row in rows:
        row["source"] = "wire" if row["text"] < "m" else "blog"
    ingest(predictor, open_store(url), write(tmp_path / "spike.csv", rows), config(), progress=False)
    capsys.readouterr()
    assert main(["monitor", "alerts", "--db", url, "--json"]) == 0
    alerts = json.loads(capsys.readouterr().out)
    assert alerts and {"window_start", "metric", "value", "baseline", "source", "topic"} <= set(alerts[0])
    assert all(datetime.fromisoformat(a["window_start"]).utcoffset() is not None for a in alerts)
    assert {a["window_start"] for a in alerts} == {"2024-05-01T10:00:00Z"}
    assert None in {a["source"] for a in alerts}  # the whole stream
    assert main(["monitor", "alerts", "--db", url, "--json", "--since", "2024-05-01T11:00:00Z"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["monitor", "alerts", "--db", url, "--since", "soon"]) == 2


# the database ---------------------------------------------------------------------------------------------------


def test_an_older_database_is_upgraded_and_a_newer_one_refused(tmp_path: Path) -> None:
    url = db(tmp_path)
    engine = connect(url)
    migrate(engine, target=1)
    with engine.begin() as connection:
        connection.execute(
            sql(
                "INSERT INTO monitor_events (key, ts, source, topic, text, label, score) "
                "VALUES ('k1', 100, '', '', 'old text', 'negative', 0.9)"
            )
        )
        connection.execute(
            sql(
                "INSERT INTO monitor_alerts (window_start, metric, source, topic, value, baseline, statistic, count, "
                "created_at) VALUES (0, 'share:negative', '*', '*', 0.5, 0.1, 6, 40, 1000)"
            )
        )
    store = open_store(url)
    assert store.schema_version() == SCHEMA_VERSION == 2
    assert store.count_events() == 1
    (alert,) = store.alerts()
    assert alert["delivered_at"] == 1000 and alert["attempts"] == 0  # history is not replayed to a new webhook
    assert store.alerts(undelivered=True) == []
    with engine.begin() as connection:
        connection.execute(sql("UPDATE monitor_meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(AdaptextError, match="schema version 99, newer than this adaptext's 2"):
        open_store(url)


def test_bad_urls_and_configs_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(AdaptextError, match="not a database URL"):
        open_store("monitor.db")
    with pytest.raises(AdaptextError, match="SQLite or PostgreSQL"):
        open_store("mysql://u@h/db")
    with pytest.raises(AdaptextError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/monitor.db")
    bad = tmp_path / "monitor.yaml"
    bad.write_text("window: 1h\nrule:\n  treshold: 3\n")
    with pytest.raises(ConfigError, match=r"rule.treshold: unknown key; valid keys here: rule.method, rule.threshold"):
        load_monitor_config(bad)
    bad.write_text("window: 10s\n")
    with pytest.raises(ConfigError, match="at least one minute"):
        load_monitor_config(bad)
    bad.write_text("window: 30min\nrule: {method: cusum, h: 5e0}\n")
    assert load_monitor_config(bad).window == 1800 and load_monitor_config(bad).rule.h == 5.0
    assert watched_label(["positive", "Negative"], None) == "Negative"
    with pytest.raises(ConfigError, match="have no negative one"):
        watched_label(["billing", "shipping"], None)


def test_the_documented_monitor_yaml_is_valid(tmp_path: Path) -> None:
    page = (Path(__file__).parents[1] / "docs" / "monitor.md").read_text(encoding="utf-8")
    block = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "monitor.yaml").write_text(block)
    documented = load_monitor_config(tmp_path / "monitor.yaml")
    assert documented.webhook.url is not None
    assert documented.model_dump(exclude={"webhook", "label"}) == MonitorConfig().model_dump(
        exclude={"webhook", "label"}
    )


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL cluster of its own in a temporary folder, reached through a Unix socket."""
    binaries = [shutil.which(name) for name in ("initdb", "pg_ctl")]
    if None in binaries:
        pytest.skip("PostgreSQL's initdb / pg_ctl are not installed")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed (pip install 'adaptext[postgres]')")
    # A short path of its own: the socket's path must fit in 107 bytes, and as root the cluster runs as `postgres`,
    # which cannot enter pytest's private temporary folders.
    folder = Path(tempfile.mkdtemp(prefix="adaptext-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = lambda *argv: subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(binaries[0], "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-k {folder} -p {port} -c listen_addresses=''"
    run(binaries[1], "-D", str(folder / "data"), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        run(binaries[1], "-D", str(folder / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_round_trip(tmp_path: Path, predictor: Predictor, postgres: str) -> None:
    store = open_store(postgres)
    assert store.engine.dialect.name == "postgresql" and store.schema_version() == SCHEMA_VERSION
    path = write(tmp_path / "spike.csv", stream(14, spike=(10,)))
    first = ingest(predictor, store, path, config(), progress=False)
    again = ingest(predictor, store, path, config(), progress=False)
    assert first.stored == store.count_events() == 14 * 40 and again.stored == 0 and again.known == 14 * 40
    assert len(first.evaluation.new_alerts) == 1 and again.evaluation.new_alerts == []
    assert [a["window_start"] for a in store.alerts()] == [START + 10 * HOUR]
    sqlite = open_store(db(tmp_path))
    ingest(predictor, sqlite, path, config(), progress=False)
    pg_rows, sqlite_rows = sorted(store.window_counts(HOUR)), sorted(sqlite.window_counts(HOUR))
    assert [r[:5] for r in pg_rows] == [r[:5] for r in sqlite_rows]
    assert [r[5] for r in pg_rows] == pytest.approx([r[5] for r in sqlite_rows])


# the app and its page -------------------------------------------------------------------------------------------


def test_post_events_classifies_stores_and_alerts(tmp_path: Path, predictor: Predictor) -> None:
    store = open_store(db(tmp_path))
    client = TestClient(create_monitor_app(Monitor(predictor, store, config())))
    events = stream(14, spike=(10,))
    answer = client.post("/events", json=events[:200])
    assert answer.status_code == 200 and answer.json()["stored"] == 200 and answer.json()["alerts"] == []
    answer = client.post("/events", json=events)
    assert answer.json()["stored"] == len(events) - 200 and answer.json()["known"] == 200
    assert [a["window_start"] for a in answer.json()["alerts"]] == ["2024-05-01T10:00:00Z"]
    bad = client.post("/events", json=[{"text": "bug", "time": START}, {"text": "bug"}])
    assert bad.status_code == 422 and "events: row 1: column 'time' is empty" in bad.json()["detail"]
    bad = client.post("/events", json=[{"text": "bug", "time": START}, {"text": " ", "time": START}])
    assert bad.status_code == 422 and "row 1: column 'text' is empty" in bad.json()["detail"]
    summary = client.get("/api/summary").json()
    assert len(summary["windows"]) == 14 and summary["windows"][10]["alert"] is True
    assert summary["has_detector"] is True and summary["window"]["count"] == 40
    assert sum(summary["window"]["histogram"]["counts"]) == 40
    assert {s["name"] for s in summary["drift"]["signals"]} == {"confidence", "label_shares", "ood_rate"}
    assert summary["drift"]["reference"]["origin"].startswith("the first")
    spike = client.get("/api/summary", params={"window": "2024-05-01T10:20:00Z"}).json()["window"]
    assert spike["start"] == "2024-05-01T10:00:00Z" and len(spike["top_texts"]) == 10
    assert all(t["score"] >= u["score"] for t, u in zip(spike["top_texts"], spike["top_texts"][1:], strict=False))
    assert client.get("/api/summary", params={"window": "later"}).status_code == 422


def test_the_dashboard_shows_the_alert_and_draws_its_charts(
    tmp_path: Path, predictor: Predictor, run_dir: Path, browser: Any
) -> None:
    from adaptext.apps.monitor.drift import training_shares

    store = open_store(db(tmp_path))
    rows = stream(14, spike=(10,))
    for i, row in enumerate(rows):
        row["source"] = ["wire", "blog"][i % 2]
    ingest(predictor, store, write(tmp_path / "spike.csv", rows), config(), progress=False)
    monitor = Monitor(predictor, store, config(), training_shares(run_dir, predictor.labels))
    assert monitor.reference is not None and monitor.reference.origin.startswith("training file")
    with served_in_thread(create_monitor_app(monitor), ServeOptions()) as (url, _):
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(f"{url}/")
            page.wait_for_selector("#alerts tbody tr.alert-row")
            assert "2024-05-01T10:00:00Z" in page.inner_text("#alerts")
            assert page.locator("#share polyline").count() >= 2 and page.locator("#share .alert-dot").count() == 1
            assert page.locator("#volume rect").count() == 14 and page.locator("#histogram rect").count() == 10
            assert not page.locator("#ood-card").is_hidden()
            assert "training file" in page.inner_text("#drift-origin")
            page.select_option("#group", "source:wire")
            page.wait_for_function(
                "document.querySelector('#volume rect') && document.querySelectorAll('#texts tbody tr').length > 0"
            )
            assert errors == []
        finally:
            page.close()
