#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the whole test suite, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,tfds,experiments
. .venv/bin/activate
# Hypothesis's "ci" profile: the same examples every run (derandomized), so a red run
# reproduces; plain `pytest` explores new ones (and saves any failure in .hypothesis/).
python -m pytest -n 2 --dist loadfile -q --hypothesis-profile=ci "$@"
