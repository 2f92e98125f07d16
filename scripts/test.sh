#!/usr/bin/env bash
# Set up (idempotent) and run every test: unit tests of erasekit, then every notebook through nbmake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
# pytest exits 5 when no test ran; that must fail, not pass silently.
exit $rc
