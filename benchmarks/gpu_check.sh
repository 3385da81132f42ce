#!/usr/bin/env bash
# The GPU path, checked in one command (see benchmarks/gpu_check.py):
#   bash benchmarks/gpu_check.sh                        # on a CUDA machine, a few minutes
#   bash benchmarks/gpu_check.sh --device cpu --quick   # a dry run anywhere
# Needs the package importable (`make install`, or `pip install -e .` into an environment
# that has a CUDA build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
