#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the whole test suite, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,tfds,experiments
. .venv/bin/activate
python -m pytest -n 2 --dist loadfile -q "$@"
