#!/usr/bin/env bash
# Create .venv (if needed) and install adaptext with pinned dependencies.
#   bash scripts/setup.sh        # the package and the bundled model
#   bash scripts/setup.sh dev    # plus test and lint tools, and a headless browser for the web page test
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
extras="[postgres]"  # the PostgreSQL driver of `adaptext monitor`
if [ "${1:-}" = "dev" ]; then extras="[dev]"; fi
# torch first and alone: pinned to the CPU build so nothing pulls a CUDA build.
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt torch
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extras}"
if [ "${1:-}" = "dev" ] && ! command -v chromium >/dev/null 2>&1; then
  # The web page is tested in headless Chromium (Debian's package; playwright drives it).
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: no chromium (sudo apt-get install chromium); the browser test will be skipped" >&2
  fi
fi
