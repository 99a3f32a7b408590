"""Screenshots of the explanations for the docs: `adaptext explain`'s page and `adaptext serve`'s "why?" view.

    python bench/explain.py --datasets sst2       # trains (or reuses) the SST-2 model the benchmark explains
    python bench/screenshots_explain.py /tmp/adaptext-bench-explain/sst2/run --data ../shared/datasets/sst2/dev.csv

writes `docs/images/explanations.png` (the `explanations.html` of `adaptext explain MODEL --data DATA --method ig
occlusion --limit 6`) and `docs/images/serve-why.png` (the service's page at `/` after classifying `--texts`, with
the "why?" view of the first two open), from headless Chromium (playwright; Debian's chromium or `playwright install
chromium`). Everything runs on this machine, offline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "a gorgeous, witty and deeply moving film",
    "the plot is thin and the jokes fall flat",
    "not bad at all, though a little too long",
]


def launch(playwright: Any) -> Any:
    executable = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])


def explanations_page(model: str, data: str, limit: int, folder: Path) -> Path:
    """`adaptext explain` on the first `limit` texts of `data`, by ig and occlusion; the page's path."""
    output = folder / "explain"
    command = [sys.executable, "-m", "adaptext", "explain", model, "--data", data, "--output", str(output)]
    subprocess.run([*command, "--method", "ig", "occlusion", "--limit", str(limit)], check=True)
    return output / "explanations.html"


def serve_in_thread(model: str) -> tuple[str, Any, threading.Thread]:
    """The service for `model` on a free local port (uvicorn in a thread); its URL, server and thread."""
    from adaptext.deploy.serve import ServeOptions, build_server, create_app, load_models

    options = ServeOptions()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = build_server(create_app(load_models([model]), options), options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    if not server.started:
        raise SystemExit("the server did not start")
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run, model or adapter folder")
    parser.add_argument("--data", required=True, help="file of texts for adaptext explain (its text column)")
    parser.add_argument("--limit", type=int, default=6, help="texts of --data to explain (default 6)")
    parser.add_argument("--texts", nargs="+", default=TEXTS, help="texts typed into the service's page")
    parser.add_argument("--method", default="default", help="the page's explanation method (default: default)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "images"), help="folder of the PNG files")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        html = explanations_page(args.model, args.data, args.limit, Path(tmp))
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(html.as_uri())
        page.screenshot(path=str(output / "explanations.png"), full_page=True)
        page.close()

        url, server, thread = serve_in_thread(args.model)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(f"{url}/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            page.fill("#texts", "\n".join(args.texts))
            page.select_option("#method", args.method)
            page.fill("#topk", "2")
            page.click("#go")
            page.wait_for_function(f"document.querySelectorAll('.why-button').length === {len(args.texts)}")
            for i in range(min(2, len(args.texts))):
                page.locator(".why-button").nth(i).click()
                page.wait_for_selector(f"#why-{i} .word, #why-{i} .why-error")
            page.locator(f"#why-{min(2, len(args.texts)) - 1} .word").first.focus()  # shows a focused word's value
            page.screenshot(path=str(output / "serve-why.png"), full_page=True)
            page.close()
        finally:
            server.should_exit = True
            thread.join(30)
            browser.close()
    print(f"wrote {output / 'explanations.png'} and {output / 'serve-why.png'}")


if __name__ == "__main__":
    main()
