"""Load test on loopback: `adaptext serve` (PyTorch, ONNX int8) against a minimal FastAPI + `pipeline` app.

    python bench/serve_load.py runs/quickstart --onnx exports/quickstart-int8
    python bench/serve_load.py runs/quickstart --onnx exports/quickstart-int8 --requests 500 --concurrency 1 16

For each server and each concurrency level, a bounded asyncio load generator sends single-text requests (texts
drawn from the bundled BANKING77 file) until `--requests` have been answered, and reports requests/s,
p50/p95/p99 latency and errors. Every server runs in its own process on the same machine; the servers take turns,
and the order of the servers alternates between concurrency levels to spread machine noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], port: int) -> subprocess.Popen[bytes]:
    import httpx

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"server did not come up: {' '.join(command)}")


async def load(url: str, texts: list[str], requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < requests:
            text = texts[sent % len(texts)]
            sent += 1
            start = time.perf_counter()
            try:
                response = await client.post(url, json={"inputs": text})
                ok = response.status_code == 200 and isinstance(response.json(), list)
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await client.post(url, json={"inputs": texts[0]})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * quantiles[49],
        "p95_ms": 1000 * quantiles[94],
        "p99_ms": 1000 * quantiles[98],
        "errors": errors,
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run or model folder (PyTorch)")
    parser.add_argument("--onnx", help="ONNX int8 export of the same model (adaptext export --quantize int8)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per server and concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--texts", default=str(ROOT / "data" / "banking77" / "train.csv"))
    args = parser.parse_args()

    import pandas as pd

    texts = pd.read_csv(args.texts, keep_default_na=False)["text"].sample(n=500, random_state=0).tolist()
    python = sys.executable
    servers = {
        "adaptext serve (PyTorch)": [python, "-m", "adaptext", "-q", "serve", args.model],
        "adaptext serve (PyTorch bf16)": [python, "-m", "adaptext", "-q", "serve", args.model, "--precision", "bf16"],
        "FastAPI + pipeline per request": [python, str(Path(__file__).with_name("pipeline_app.py")), args.model],
    }
    if args.onnx:
        servers["adaptext serve (ONNX int8)"] = [python, "-m", "adaptext", "-q", "serve", args.onnx]
    rows = []
    for level, concurrency in enumerate(args.concurrency):
        names = list(servers) if level % 2 == 0 else list(reversed(servers))
        for name in names:
            port = free_port()
            process = start([*servers[name], "--port", str(port)], port)
            try:
                result = asyncio.run(load(f"http://127.0.0.1:{port}/predict", texts, args.requests, concurrency))
            finally:
                process.terminate()
                process.wait(timeout=60)
            rows.append({"server": name, "concurrency": concurrency} | result)
            print(
                f"{name:32s} c={concurrency:<3d} {result['requests_per_s']:7.1f} req/s  p50 {result['p50_ms']:.1f} ms  "
                f"p95 {result['p95_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  errors {result['errors']}",
                flush=True,
            )
    print()
    print("| server | clients | requests/s | p50 ms | p95 ms | p99 ms | errors | throughput vs pipeline app |")
    print("|---|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["concurrency"], r["server"])):
        base = next(
            r["requests_per_s"]
            for r in rows
            if r["concurrency"] == row["concurrency"] and r["server"].startswith("FastAPI")
        )
        print(
            f"| {row['server']} | {row['concurrency']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.1f} "
            f"| {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | {row['requests_per_s'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
