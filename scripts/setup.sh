#!/usr/bin/env bash
# Sets up a fresh machine for leep-jax: the FashionMNIST dataset package (Debian/Ubuntu),
# a virtual environment in .venv, and leep-jax with the given extras (default: none).
# Usage: bash scripts/setup.sh [EXTRAS]     e.g. bash scripts/setup.sh test,tfds
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
fi

[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ -n "${1:-}" ]; then
  python -m pip install -q -e ".[$1]"
else
  python -m pip install -q -e .
fi
