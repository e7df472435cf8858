#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool, carry [".whl"] after benchmarks/gpu_wheels.sh here):
#   bash benchmarks/gpu_run.sh [extra gpu_suite.py arguments]
# Installs the carried wheels, runs benchmarks/gpu_suite.py (its end-to-end part starts no
# run after 360 s) and the CUDA tests, and leaves in $OUT: gpu_suite.json, gpu_suite.md,
# suite.log, pytest_gpu.log, nvidia_smi.csv. Without $OUT (another machine): /tmp/gpu_out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv >"$OUT/nvidia_smi.csv" 2>&1
timeout 450 python3 benchmarks/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/suite.log" |
  tail -n 60
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_suite.py \
  tests/test_hook_exactness.py::test_proportional_attention_under_flash_attention 2>&1 |
  tee "$OUT/pytest_gpu.log" | tail -n 15
