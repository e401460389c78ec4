#!/usr/bin/env bash
# The combined claim on the GPU machine (see shared GPU.md): NVML energy, CUDA EP with IO binding.
# Run from the project root after installing onnxruntime-gpu there; bring the exported MiniLM
# (build/test-models/minilm-dynamo20-dyn-v1.onnx) since torch export may not be available.
set -euo pipefail
MODEL=${1:-build/test-models/minilm-dynamo20-dyn-v1.onnx}
export PYTHONPATH=$PWD
python benchmarks/combined.py --provider cuda --original "$MODEL" --batch 32 --seq 128 --seconds 60 \
    --block-seconds 5 --conditions "${CONDITIONS:-GPU machine, one H200, nothing else running}" "${@:2}"
