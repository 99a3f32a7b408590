"""`adaptext serve MODEL_DIR ...`: models over HTTP (Hugging Face-compatible API, web page at /)."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over HTTP (Hugging Face-compatible API, POST /explain, web page at /)",
        description="Serve one or more run, model, adapter or ONNX folders. The first is the default at /predict "
        "and POST /; each is also at /models/NAME/predict. Adapters of one base model share it in memory.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_DIR", help="folder, or NAME=folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (default: $ADAPTEXT_API_KEY if set)")
    p.add_argument("--max-batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch (default 5 ms)")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (default 64)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size (default 1 MB)")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's head and body: 408 for a slower body; a connection that "
        "sends no request in that time is closed (default 10)",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help="serve interactive API docs at /docs and /redoc; they load their scripts from a CDN, so the browser "
        "needs internet access (/openapi.json is always served)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: PyTorch models run under bf16 autocast, about 2x faster on CPUs with native bf16 (default fp32)",
    )
    p.add_argument(
        "--route",
        help="router config (see `adaptext route`): also serve POST /route, its model loaded as the model 'route'",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.apps.router.config import load_route_config
    from adaptext.deploy.serve import ServeOptions, run_server

    # ServeOptions checks the limits, and run_server the address, before any model is loaded.
    options = ServeOptions(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get("ADAPTEXT_API_KEY") or None,
        request_timeout=args.request_timeout,
        docs=args.docs,
    )
    # Read before any model loads, so a bad router config costs nothing.
    route = load_route_config(args.route) if args.route else None
    run_server(args.models, args.host, args.port, options, precision=args.precision, route=route)
    return 0
