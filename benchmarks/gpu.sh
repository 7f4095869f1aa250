#!/usr/bin/env bash
# The whole benchmark suite on one accelerator (a GPU such as an H100/H200, or a TPU) in
# at most 6 minutes, offline. The same script runs unchanged on a GPU or a TPU host: jax
# picks the platform, which the log reports first.
#
#   bash benchmarks/gpu.sh            # device sizes; results in benchmarks/results/<device>/
#                                     # (<device>: h100, h200, tpu-v5-lite, ...)
#   bash benchmarks/gpu.sh --tiny     # smoke sizes (runs on a CPU-only machine too)
#
# Benchmarks that this checkout lacks (`scores`, `sweep`: added by other branches) are
# skipped with a line in the log; the time limits of those present add up to <= 330 s.
#
# Uses only what the accelerator machine has (jax with CUDA, flax, optax, orbax, numpy, scipy):
# leep-jax is installed with `pip install --no-deps -e .`, or put on PYTHONPATH when the
# offline install cannot build. FashionMNIST is read from $LEEP_JAX_DATA_DIR, else from a
# copy of /usr/share/datasets/fashion-mnist carried in benchmarks/.data/fashion-mnist,
# else from the system folder; score_vs_finetune falls back to scikit-learn's digits,
# and zoo to random images, when it is missing. tqdm (imported by leep_jax.transfer and
# the score CLI) is taken from benchmarks/.vendor/ if the machine lacks it:
#   mkdir -p benchmarks/.vendor && cp -r .venv/lib/python3.*/site-packages/tqdm benchmarks/.vendor/
# Carry both folders: run(..., carry=["benchmarks/.data", "benchmarks/.vendor"]).
#
# Each benchmark runs in its own process under its own time limit (at most 330 s in all),
# so one that overruns loses only itself; core writes partial results as it goes. If $OUT
# is set (the device runner's output folder), the results folder is copied there.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MODE_ARGS=()
SUFFIX=""
if [[ "${1:-}" == "--tiny" ]]; then MODE_ARGS=(--tiny); SUFFIX="-tiny"; shift; fi

# Allocate GPU memory on demand: the suite starts child processes that use the GPU too.
# (TPU runtimes ignore it.)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [[ -z "${LEEP_JAX_DATA_DIR:-}" && -d benchmarks/.data/fashion-mnist ]]; then
  export LEEP_JAX_DATA_DIR="$PWD/benchmarks/.data"
fi

if ! "$PY" -c "import leep_jax" >/dev/null 2>&1; then
  "$PY" -m pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || "$PY" -m pip install --no-deps -e . >/dev/null 2>&1 \
    || echo "gpu.sh: pip install -e . failed offline; using PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# leep_jax.transfer and `leep-jax score` import tqdm, which the GPU machine may lack: a copy
# of the real package (pure Python) carried in benchmarks/.vendor/ is used when present.
if [[ -d benchmarks/.vendor ]]; then export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks/.vendor"; fi

# What this machine has, and the matmul precision every number was measured under.
INVENTORY=$(mktemp)
LABEL=$("$PY" - 2>"$INVENTORY" <<'EOF'
import importlib, sys
import jax
from benchmarks.harness import device_label
device = jax.devices()[0]
print(f"platform: {jax.default_backend()} ({device.device_kind}, {jax.device_count()} "
      f"device(s))", file=sys.stderr)
print(f"jax {jax.__version__}, devices {jax.devices()}", file=sys.stderr)
print(f"default matmul precision: {jax.config.jax_default_matmul_precision} (None = backend "
      "default: TF32 for float32 matmuls and convolutions on NVIDIA GPUs since Ampere, "
      "bfloat16 passes on TPUs; H-score asks for Precision.HIGHEST, LEEP and NCE use no "
      "matmul)", file=sys.stderr)
for name in ("flax", "optax", "orbax.checkpoint", "numpy", "scipy", "tqdm", "sklearn"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}", file=sys.stderr)
    except ImportError as error:
        print(f"  {name}: MISSING ({error})", file=sys.stderr)
print(device_label())
EOF
)
RESULTS="benchmarks/results/${LABEL}${SUFFIX}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-run.log"
{ echo "gpu.sh $(date -u +%FT%TZ): results in $RESULTS"; cat "$INVENTORY"; } | tee "$LOG"
rm -f "$INVENTORY"

# The benchmarks this checkout has (benchmarks.BENCHMARKS), each with its time limit.
AVAILABLE=" $("$PY" -c 'from benchmarks import BENCHMARKS; print(" ".join(BENCHMARKS))') "
status=0
for entry in core:110 scores:35 sweep:35 score_vs_finetune:55 zoo:30 devices:30 memory:35; do
  name=${entry%%:*}
  limit=${entry##*:}
  if [[ "$AVAILABLE" != *" $name "* ]]; then
    echo "gpu.sh: no '$name' benchmark in this checkout; skipped" | tee -a "$LOG"
    continue
  fi
  [[ -n "$SUFFIX" ]] && limit=600  # smoke sizes on any machine: no GPU time limits
  start=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" \
    "$PY" -m benchmarks --only "$name" --out "$RESULTS" "${MODE_ARGS[@]}" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "gpu.sh: $name hit its ${limit} s limit (partial or no results)" | tee -a "$LOG"
    status=1
  elif [[ $rc -ne 0 ]]; then
    echo "gpu.sh: $name failed (exit $rc)" | tee -a "$LOG"
    status=1
  fi
  echo "gpu.sh: $name took $(( $(date +%s) - start )) s" | tee -a "$LOG"
done

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT/results" && cp -r "$RESULTS" "$OUT/results/"
fi
exit $status
