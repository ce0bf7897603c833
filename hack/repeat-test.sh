#!/usr/bin/env bash
# Runs one test N times in a row (default 50), stopping at the first failure and printing it:
# how a flake is shown gone. Usage: hack/repeat-test.sh TEST_ID [N]
set -euo pipefail
test_id=${1:?usage: hack/repeat-test.sh TEST_ID [N]}
runs=${2:-50}
py=${PY:-.venv/bin/python}
log=$(mktemp)
start=$(date +%s)
for i in $(seq 1 "$runs"); do
  if ! "$py" -m pytest -q -x -p no:cacheprovider "$test_id" >"$log" 2>&1; then
    echo "run $i of $runs FAILED after $(($(date +%s) - start))s:"
    tail -80 "$log"
    exit 1
  fi
  printf '\rrun %d of %d passed (%ds)' "$i" "$runs" "$(($(date +%s) - start))"
done
echo
echo "$runs of $runs passed in a row in $(($(date +%s) - start))s: $test_id"
