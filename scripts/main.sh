#!/usr/bin/env bash
# Set up (idempotent), execute every notebook on the embedded default (the model organism) and build the book.
# The organism is committed under data/organism; it is retrained only if missing (erasekit build-organism).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/erasekit build-organism --if-missing
.venv/bin/jupyter-book build book --all -W --keep-going 2>&1 | tee book/build.log
echo "book: $(pwd)/book/_build/html/index.html"
