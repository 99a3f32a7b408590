"""`adaptext monitor ingest | serve | alerts`: a sentiment monitor over timestamped texts (see docs/monitor.md)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adaptext.apps.monitor import MonitorConfig, Store
    from adaptext.inference.predictor import Predictor

DB_HELP = "database URL: sqlite:///monitor.db (default) or postgresql://user@host/database"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "monitor",
        help="classify timestamped texts into a database, alert on spikes of a label, serve a dashboard",
        description="A sentiment monitor: `ingest` classifies and stores texts, `serve` takes POST /events and "
        "shows a dashboard at /, `alerts` lists the alerts raised.",
    )
    p.set_defaults(func=run)
    commands = p.add_subparsers(dest="monitor_command", required=True)

    ingest = commands.add_parser("ingest", help="classify and store a file of events (or JSON lines on stdin)")
    ingest.add_argument("run", metavar="RUN", help="run, model, adapter or ONNX folder")
    ingest.add_argument("file", metavar="FILE", help="CSV/TSV/JSONL/Parquet with text,time[,source,topic]; - for stdin")
    _common(ingest)
    ingest.set_defaults(monitor_func=run_ingest)

    serve = commands.add_parser("serve", help="POST /events and the dashboard at /")
    serve.add_argument("run", metavar="RUN", help="run, model, adapter or ONNX folder")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(monitor_func=run_serve)

    alerts = commands.add_parser("alerts", help="list the stored alerts")
    alerts.add_argument("--db", default="sqlite:///monitor.db", help=DB_HELP)
    alerts.add_argument("--json", action="store_true", help="print a JSON list of alert objects")
    alerts.add_argument("--since", metavar="T", help="only windows from T on (ISO 8601 time, or seconds since 1970)")
    alerts.set_defaults(monitor_func=run_alerts)


def run(args: argparse.Namespace) -> int:
    return int(args.monitor_func(args))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default="sqlite:///monitor.db", help=DB_HELP)
    p.add_argument("--config", metavar="monitor.yaml", help="windows, watched label, baseline, rule, webhook")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: PyTorch models run under bf16 autocast (faster on CPUs with native bf16)",
    )


def _load(args: argparse.Namespace) -> tuple[MonitorConfig, Store, Predictor]:
    import torch

    from adaptext.apps.monitor import load_monitor_config, open_store
    from adaptext.inference.predictor import Predictor

    config = load_monitor_config(args.config)
    store = open_store(args.db)
    predictor = Predictor.from_dir(args.run)
    if args.precision == "bf16" and predictor.info.backend != "onnx":
        predictor.autocast_dtype = torch.bfloat16
    return config, store, predictor


def run_ingest(args: argparse.Namespace) -> int:
    from adaptext.apps.monitor import ingest

    config, store, predictor = _load(args)
    result = ingest(predictor, store, args.file, config)
    print(
        f"{result.read} events read, {result.stored} stored, {result.known} already stored "
        f"({result.rate:.0f} events/s) into {store.url}"
    )
    evaluation = result.evaluation
    for alert in evaluation.new_alerts:
        group = alert["source"] or alert["topic"] or "whole stream"
        print(
            f"ALERT {alert['window_start']} {alert['metric']} {100 * alert['value']:.1f}% "
            f"(baseline {100 * alert['baseline']:.1f}%) {group}"
        )
    if evaluation.undelivered:
        print(f"{evaluation.undelivered} alerts could not be delivered to the webhook; the next run retries them")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from adaptext.apps.monitor.drift import training_shares
    from adaptext.apps.monitor.server import Monitor, create_monitor_app
    from adaptext.deploy.serve import ServeOptions, bind_socket, build_server

    with bind_socket(args.host, args.port) as sock:
        config, store, predictor = _load(args)
        monitor = Monitor(predictor, store, config, training_shares(args.run, predictor.labels))
        server = build_server(create_monitor_app(monitor), ServeOptions())
        print(f"monitor of {args.run} on http://{args.host}:{args.port} (database {store.url})", flush=True)
        server.run(sockets=[sock])
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    from adaptext.apps.monitor.alerts import alert_record
    from adaptext.apps.monitor.ingest import parse_time
    from adaptext.apps.monitor.store import open_store

    store = open_store(args.db)
    since = parse_time(args.since, "--since") if args.since else None
    records = [alert_record(row) for row in store.alerts(since=since)]
    if args.json:
        # printed here: the console sends what other modules (json) write to stdout to the debug log
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no alerts")
    for alert in records:
        group = alert["source"] or alert["topic"] or "whole stream"
        state = "delivered" if alert.get("delivered_at") else "not delivered"
        print(
            f"{alert['window_start']}  {alert['metric']}  {100 * alert['value']:.1f}% "
            f"(baseline {100 * alert['baseline']:.1f}%, n={alert['count']})  {group}  {state}"
        )
    return 0
