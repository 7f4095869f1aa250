#!/usr/bin/env bash
# Mutation testing of the scoring layers with mutmut (config: [tool.mutmut] in pyproject.toml).
#
#   scripts/mutation.sh                                    # leep_jax/{scores,streaming,sharding,metrics}
#   scripts/mutation.sh leep_jax/streaming/accumulators.py # only these files' mutants
#
# A developer tool, not CI: every mutant re-runs the fast tests that call the mutated
# function, in a fresh process (JAX compiles again), so a module takes minutes to hours.
# It runs niced with one worker (shared machines). Results accumulate in mutants/ (ignored
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
nice -n 19 "$MUTMUT" run --max-children 1 "${globs[@]}" || true
"$PYTHON" scripts/mutation_summary.py "${globs[@]}"
