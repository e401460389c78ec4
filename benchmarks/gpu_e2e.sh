#!/usr/bin/env bash
# End-to-end benchmark on the GPU machine: all-MiniLM-L6-v2 and BERT-base (batch 8 x 128), gelu=phi6
# against ORT's best original on the CUDA provider with IO binding and NVML energy.
# The graphs travel without their large weights (tools/weightless.py) and are regrown here with
# seeded random values: timings and energy do not depend on the values; fidelity is measured on
# the CPU machine with the real weights. Needs onnxruntime-gpu on PYTHONPATH and the built
# libraries in build/cuda/. Results go to benchmarks/results/ (and $OUT when set).
set -euo pipefail
export N6ONNX_CUDA_LIBRARY=${N6ONNX_CUDA_LIBRARY:-build/cuda/libn6ops_cuda.so}
export N6ONNX_LIBRARY=${N6ONNX_LIBRARY:-build/cuda/libn6ops.so}
export PYTHONPATH=${PYTHONPATH:-}:.
seconds=${SECONDS_PER_MODEL:-20}
note="seeded random values regrown from the weightless graph (tools/weightless.py): timing and energy do not depend on the values"
for spec in minilm:minilm-b8s128 bert:bertbase-b8s128; do
  model=${spec%%:*}; file=${spec##*:}
  python3 tools/weightless.py regrow build/gpu-e2e/$file.weightless.onnx /tmp/$file.onnx
  python3 benchmarks/e2e.py --provider cuda --model $model --original /tmp/$file.onnx \
    --name e2e_${file%%-*}_cuda --seconds $seconds --workdir /tmp/e2e \
    --weights-note "$note"
done
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/e2e_*_cuda.json "$OUT"/; fi
