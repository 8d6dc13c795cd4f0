#!/usr/bin/env bash
# Issue 9's GPU figures in one call on a machine with a CUDA card (about 5 minutes):
# forward-pass limit fp32 / bf16+channels_last at batch 1..1024, CPU decode in N processes
# and nvJPEG decode, and the worker's process_batch draining 5,000 jobs on CUDA.
# Runs from the repository root; uses .venv if there is one, else python3 with torch.
# Results: $OUT/gpu-bench.json (or ./gpu-bench.json) and the printed tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
timeout 540 "$PY" bench/gpu_bench.py --json "${OUT:-.}/gpu-bench.json" --jobs "${JOBS:-5000}" "$@"
