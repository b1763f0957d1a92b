#!/usr/bin/env bash
# The GPU benchmark (bench/gpu_bench.py): the churn model trained through `mlops apply` with gpus: 1,
# the share of apply's wall time spent inside the training function, and the device the run recorded.
#
# On the device machine (see ../shared/device/README.md): pack once here with
#   EXTRA_WHEELS="jsonschema-rs" bash ../shared/device/pack.sh
# then run this script there with carry [".devcarry"]; it installs the carried wheels itself.
# Anywhere else it runs with the Python on the PATH (or $PYTHON); without CUDA it trains on the CPU.
#   SECONDS_OF_TRAINING=60 bash bench/gpu.sh [--json OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python                      # the project's own environment
elif [ -f .devcarry/setup.sh ]; then           # the device machine: its python3 plus the carried wheels
  [ -d /tmp/site/ray ] || bash .devcarry/setup.sh
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHON="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no NVIDIA GPU"
exec "$PYTHON" bench/gpu_bench.py --seconds "${SECONDS_OF_TRAINING:-60}" "$@"
