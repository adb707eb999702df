#!/usr/bin/env bash
# The GPU benchmarks in one command (issue 19): the training step and inference on CUDA, the loader with every
# core, then whether the loader keeps up with the step (benchmarks/keeps_up.py). Results land in
# benchmarks/results/ named after the machine. Run from anywhere:
#
#     benchmarks/gpu.sh            # or: make bench-gpu
#     PEAK_TFLOPS=989 BATCH=32 WORKERS=64 benchmarks/gpu.sh
#
# PEAK_TFLOPS: the card's dense bf16 peak, for MFU (H100/H200 SXM: 989). BATCH: clips per training step on one GPU
# (default 32). WORKERS: loader processes (default: every core). PYTHON: the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
BATCH="${BATCH:-32}"
WORKERS="${WORKERS:-$(nproc)}"
peak=()
if [[ -n "${PEAK_TFLOPS:-}" ]]; then peak=(--peak-tflops "$PEAK_TFLOPS"); fi

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: these benchmarks need a GPU')"
"$PY" benchmarks/train_step.py --device cuda --batch-size "$BATCH" --repeats 6 --configs bottleneck late "${peak[@]}"
"$PY" benchmarks/inference.py --device cuda "${peak[@]}"
# 4 clips per worker per epoch at least, so start-up does not dominate
files=$(( WORKERS * 2 > 16 ? WORKERS * 2 : 16 ))
"$PY" benchmarks/loader.py --workers "$WORKERS" --files "$files" --epochs 4 --device cuda
"$PY" benchmarks/keeps_up.py --batch-size "$BATCH"
