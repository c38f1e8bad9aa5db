#!/usr/bin/env bash
# Mutation testing of core modules with cosmic-ray (make mutation; not part of make test).
#   mutation/run.sh [MODULE ...]      default: every mutation/*.toml
#   RECHECK=1 mutation/run.sh MODULE  re-test only the survivors of the last session (after
#                                     adding tests), then report again
#   RESUME=1 mutation/run.sh MODULE   go on with the mutants a stopped session has not run
# Each mutation/NAME.toml names one module and the fast tests that guard it. cosmic-ray
# mutates the module IN PLACE, one mutant at a time, and runs the tests; the working tree is
# checked to be clean of that module afterwards. Sessions and reports go to runs/mutation/.
# The tests run through mutation/warm.py (torch and the libraries imported once, one fork per
# mutant: 1.3x to 1.9x faster, bench/mutation_warm.py); WARM=0 runs each in a fresh interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
BIN=$(dirname "$(command -v "$PYTHON")")
CR="$PYTHON -m cosmic_ray.cli"
OUT=runs/mutation
mkdir -p "$OUT"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in mutation/*.toml; do names+=("$(basename "$f" .toml)"); done
fi
export PATH="$BIN:$PATH" OMP_NUM_THREADS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MLFLOW_DISABLE_TELEMETRY=true
if [ "${WARM:-1}" != 0 ]; then
  sock=$OUT/warm.sock
  rm -f "$sock"
  "$PYTHON" mutation/warm.py serve "$sock" >"$OUT/warm.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null' EXIT
  until [ -S "$sock" ]; do kill -0 $server || { cat "$OUT/warm.log" >&2; exit 1; }; sleep 0.5; done
fi
for name in "${names[@]}"; do
  cfg=mutation/$name.toml
  module=$(sed -n 's/^module-path *= *"\(.*\)"/\1/p' "$cfg")
  if ! git diff --quiet -- "$module"; then
    echo "$module has uncommitted changes; mutation testing edits it in place, commit first" >&2
    exit 1
  fi
  session=$OUT/$name.sqlite
  if [ -n "${server:-}" ]; then  # the same tests, through the warm server
    sed "s|^test-command = \"python -m pytest |test-command = \"python mutation/warm.py run $sock |" "$cfg" >"$OUT/$name.toml"
    cfg=$OUT/$name.toml
  fi
  if [ -n "${RECHECK:-}" ]; then
    "$PYTHON" mutation/recheck.py "$cfg" "$session"
  elif [ -n "${RESUME:-}" ]; then
    $CR exec "$cfg" "$session"  # runs only the work items that have no result yet
  else
    rm -f "$session"
    $CR init "$cfg" "$session"
    $CR baseline "$cfg" >/dev/null  # the tests must pass on the unmutated module
    $CR exec "$cfg" "$session"
  fi
  git diff --quiet -- "$module" || { echo "cosmic-ray left $module modified" >&2; exit 1; }
  "$PYTHON" mutation/report.py "$session" "$name" | tee "$OUT/$name.txt"
  if [ -n "${server:-}" ]; then  # kills by a crashed fork, if any, are listed in warm.log
    echo "warm test runs that crashed so far: $(grep -c '^crash:' "$OUT/warm.log" || true)" | tee -a "$OUT/$name.txt"
  fi
done
