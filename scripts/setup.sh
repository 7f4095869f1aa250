#!/usr/bin/env bash
# Sets up a fresh machine for leep-jax: the FashionMNIST dataset package (Debian/Ubuntu),
# a virtual environment in .venv, and leep-jax with the given extras (default:
# experiments, which `leep-jax rank` and `leep-jax experiment` need; the scores alone
# need none: `pip install leep-jax`).
# Usage: bash scripts/setup.sh [EXTRAS]     e.g. bash scripts/setup.sh test,tfds,experiments
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
python -m pip install -q -e ".[${1:-experiments}]"
