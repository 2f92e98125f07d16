#!/usr/bin/env bash
# Set up (idempotent), execute every notebook on the embedded default (the model organism) and build the book.
# The organism is committed under data/organism; it is retrained only if missing (erasekit build-organism).
# The book's source is book/ (config, toc, intro, references); its chapters are notebooks/NN_*.ipynb, reached
# through the symlink book/notebooks. jupyter-book executes each notebook once (outputs go into the site, never
# into the committed notebooks) and keeps its outputs in jupyter-cache (book/_build/.jupyter_cache): a second run
# re-executes only notebooks whose code changed. The expensive steps are cached in .cache/erasekit besides.
set -euo pipefail
cd "$(dirname "$0")/.."
# Spinning OpenMP threads starve each other on a shared 2-core machine (10x slowdowns measured): wait passively.
export OMP_WAIT_POLICY=PASSIVE
# The published book is the full profile (jupyter-cache keys a notebook by its code, not by this variable).
export ERASEKIT_PROFILE=full
bash scripts/setup.sh
.venv/bin/erasekit build-organism --if-missing
mkdir -p book/_build
.venv/bin/jupyter-book build book --all -W --keep-going 2>&1 | tee book/_build/build.log
echo "book: $(pwd)/book/_build/html/index.html"
