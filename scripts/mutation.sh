#!/usr/bin/env bash
# Mutation testing of the scoring layers with mutmut (config: [tool.mutmut] in pyproject.toml).
#
#   scripts/mutation.sh                                    # leep_jax/{scores,streaming,sharding,metrics}
#   scripts/mutation.sh leep_jax/streaming/accumulators.py # only these files' mutants
#
# A developer tool, not CI: every mutant re-runs the fast tests that call the mutated
# function, in a fresh process (JAX compiles what the persistent cache below lacks), so a
# module takes minutes to hours. It runs niced (NICE=19 by default) with one worker (JOBS=1;
# shared machines). Results accumulate in mutants/ (ignored
# by git; delete it after changing the config or the tests' selection); the summary below
# marks survivors listed in benchmarks/results/mutation/equivalent.txt as equivalent,
# and exits 1 if any other mutant survived.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
MUTMUT="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/mutmut"
[ -x "$MUTMUT" ] || { echo "mutmut not found next to $PYTHON: pip install -e '.[dev]'" >&2; exit 2; }

globs=()
for file in "$@"; do
  [ -f "$file" ] || { echo "no such file: $file" >&2; exit 2; }
  module=${file%.py}
  globs+=("${module//\//.}.*")
done

# Mutants must not share JAX state: XLA_FLAGS etc. come from tests/conftest.py in each run.
# They do share JAX's persistent compilation cache: its key is the compiled program
# (HLO, options, versions), so a mutant whose program differs compiles anew and one whose
# program is the same reuses the unmutated kernel, which is then exactly what it computes.
# It cuts a killed mutant from about 20 s to 6 s here (tests/test_edge_cases.py: 19.6 s
# cold, 5.7 s warm).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/mutants/jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
rc=0
nice -n "${NICE:-19}" "$MUTMUT" run --max-children "${JOBS:-1}" "${globs[@]}" || rc=$?
if [ "$rc" -ne 0 ]; then
  # E.g. "failed to collect stats": a test of the selection fails on the unmutated code.
  echo "mutmut run failed (exit $rc); run the tests of [tool.mutmut] under pytest to see why" >&2
  exit 2
fi
"$PYTHON" scripts/mutation_summary.py "${globs[@]}"
