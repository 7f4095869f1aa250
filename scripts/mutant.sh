#!/usr/bin/env bash
# One mutant against the tests you choose, without mutmut's bookkeeping:
#
#   scripts/mutant.sh leep_jax.scores.validation.x_prepare__mutmut_14 tests/test_edge_cases.py -k traced
#
# Runs pytest in mutmut's mutant tree (mutants/, made by scripts/mutation.sh) with
# MUTANT_UNDER_TEST set, as mutmut's own workers do, on the working tree's tests, and
# prints "killed NAME" (exit 0) or "survived NAME" (exit 1). A mutant some selection kills
# is killed; one a narrow selection lets through needs the tests mutmut maps to it
# (scripts/mutation.sh), a new test or a reason it is equivalent. For a function that
# hundreds of tests reach, this checks a mutant in seconds where mutmut reruns them all.
# mutmut's own records (mutants/**/*.meta) are left as they were.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: scripts/mutant.sh MUTANT_NAME PYTEST_ARGS..." >&2; exit 2; }
name=$1
shift
module=${name%.x*}
file=mutants/${module//.//}.py
grep -q "def ${name##*.}(" "$file" 2>/dev/null || {
  echo "no mutant $name in $file: run scripts/mutation.sh on its file first" >&2
  exit 2
}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
[[ $PYTHON == */* && $PYTHON != /* ]] && PYTHON=$PWD/$PYTHON
cp tests/*.py mutants/tests/
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/mutants/jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
cd mutants
set +e
MUTANT_UNDER_TEST=$name "$PYTHON" -m pytest -x -q -p no:cacheprovider -p no:randomly "$@" >&2
rc=$?
set -e
case $rc in
  0) echo "survived $name"; exit 1 ;;
  1) echo "killed $name" ;;
  *) echo "pytest exited $rc (not a verdict) for $name" >&2; exit 2 ;;
esac
