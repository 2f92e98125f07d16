#!/usr/bin/env bash
# Set up (idempotent) and run every check; exits non-zero if any step fails (all steps still run):
#   0. ruff over the code, mypy over the library's typed core (pyproject.toml [tool.ruff], [tool.mypy]);
#   1. unit tests of erasekit (tests/, without the built-book tests), beside step 2's first stream;
#   2. every notebook, executed ONCE by pytest --nbmake on a staged copy (.cache/book-stage; the committed
#      notebooks stay output-free), with the outputs written into the copy (--overwrite), under the documented
#      ci profile (ERASEKIT_PROFILE=ci: fewer forget splits / PGD budgets / baselines, same code paths), in two
#      single-threaded streams where the chapters' step-cache order allows (see below);
#   3. the book built from those executed copies with execution off, into book/_build/html;
#   4. the built site checked in headless Chromium (tests/test_book.py: figures present and fitting the column, no
#      error output, tables as <table>, no local paths / NaN / raw LaTeX, math served locally); screenshots of the
#      landing page, 05 and 06 at 1400 px go to book/_build/screenshots/.
# Extra arguments go to the unit-test pytest call (e.g. -k pipeline).
set -uo pipefail
cd "$(dirname "$0")/.."
# Spinning OpenMP threads starve each other on a shared 2-core machine (10x slowdowns measured): wait passively.
export OMP_WAIT_POLICY=PASSIVE
bash scripts/setup.sh || exit 1
.venv/bin/erasekit build-organism --if-missing || exit 1

failed=()
step() {  # step NAME CMD...: run, remember a failure, go on
  local name=$1; shift
  echo "==> $name"
  "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then failed+=("$name (exit $rc)"); fi
  return 0
}

PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider)
step "lint (ruff)" .venv/bin/ruff check erasekit erasebook tests scripts benchmarks
step "types (mypy, the typed core in pyproject.toml)" .venv/bin/mypy
# "heavy" tests (minutes each: a real pretrained LM end to end) run only with ERASEKIT_HEAVY=1.
MARK="not book and not heavy"
if [ "${ERASEKIT_HEAVY:-0}" = "1" ]; then MARK="not book"; fi

STAGE=.cache/book-stage
rm -rf "$STAGE"
mkdir -p "$STAGE/notebooks"
cp book/_config.yml book/_toc.yml book/*.md book/references.bib "$STAGE/"
cp -r book/_static "$STAGE/"
cp notebooks/*.ipynb "$STAGE/notebooks/"
# Execution happened in the nbmake step: the staged book renders the stored outputs.
sed -i 's/^\(\s*execute_notebooks:\s*\)\(force\|cache\|auto\)/\1"off"/' "$STAGE/_config.yml"
grep -q 'execute_notebooks: "off"' "$STAGE/_config.yml" || failed+=("stage config (execute_notebooks not switched off)")

# The documented ci profile (ERASEKIT_PROFILE=ci, read by the parameters cells of 05, 07, 08, 09 and 10): fewer
# forget splits, PGD budgets and baselines (one per training code path), the same code paths. scripts/main.sh builds
# the published book with the full profile.
#
# Two streams at a time, one core each: on the organism most of the work is per-call overhead, so a second thread
# buys little (PGD and ASRU's training do slow down on one), and two single-threaded processes finish sooner than one
# after the other (README: 28.6 -> 22 min). The order follows what each chapter reads from the step cache: 02-04
# make the shared set-up (direction, PGD images, both gates and their λ) while the unit tests and 01 (which needs
# none of it) run; then 07 -> 05 -> 06 beside 08 -> 09: 08 scores vanilla, the gates and NPO first, which 05 then
# reads instead of computing them at the same time, and 09 attacks the ASRU model 08 trained
# (erasebook.cache.cached_weights); 10 (timings) and 11 last, alone, on both cores.
NB=(--nbmake --overwrite --nbmake-timeout=3600 --durations=0)
stage() { for n in "$@"; do echo "$STAGE/notebooks/${n}_"*.ipynb; done; }
pair() {  # pair NAME_A "CMD_A" NAME_B "CMD_B": both at once, one thread each; each one's output after both end
  local logs; logs=$(mktemp -d)
  ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; eval "$2" >"$logs/a" 2>&1 ) & local pa=$!
  ( export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; eval "$4" >"$logs/b" 2>&1 ) & local pb=$!
  wait $pa; local ra=$?
  wait $pb; local rb=$?
  echo "==> $1"; cat "$logs/a"; [ "$ra" -ne 0 ] && failed+=("$1 (exit $ra)")
  echo "==> $3"; cat "$logs/b"; [ "$rb" -ne 0 ] && failed+=("$3 (exit $rb)")
  rm -rf "$logs"; return 0
}
UNIT_ARGS=("$@")
UNIT='"${PYTEST[@]}" -q tests -m "$MARK" "${UNIT_ARGS[@]}"'
pair "unit tests, then notebook 01 (nbmake, ci profile)" "$UNIT"'; r=$?; ERASEKIT_PROFILE=ci "${PYTEST[@]}" -q "${NB[@]}" $(stage 01) || r=1; exit $r' \
     "notebooks 02-04 (nbmake, ci profile)" 'ERASEKIT_PROFILE=ci "${PYTEST[@]}" -q "${NB[@]}" $(stage 02 03 04)'
pair "notebooks 07, 05, 06 (nbmake, ci profile)" 'ERASEKIT_PROFILE=ci "${PYTEST[@]}" -q "${NB[@]}" $(stage 07 05 06)' \
     "notebooks 08, 09 (nbmake, ci profile)" 'ERASEKIT_PROFILE=ci "${PYTEST[@]}" -q "${NB[@]}" $(stage 08 09)'
ERASEKIT_PROFILE=ci step "notebooks 10, 11 (nbmake, ci profile)" "${PYTEST[@]}" -q "${NB[@]}" $(stage 10 11)

rm -rf book/_build/html
if step "book build" .venv/bin/jupyter-book build "$STAGE" --all -W --keep-going; then :; fi
if [ -f "$STAGE/_build/html/index.html" ]; then
  mkdir -p book/_build
  cp -r "$STAGE/_build/html" book/_build/html
fi

ERASEKIT_REQUIRE_BOOK=1 step "built book (chromium)" "${PYTEST[@]}" -q -m book tests/test_book.py

if [ ${#failed[@]} -ne 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all checks passed; book: $(pwd)/book/_build/html/index.html"
