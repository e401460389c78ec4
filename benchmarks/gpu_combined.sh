#!/usr/bin/env bash
# The combined claim on the GPU machine: CUDA EP with IO binding, NVML energy (measured), the n6
# passes (default block=drop:1, attention=drop:1, ffn=phi-bottleneck:3) against ORT's best fp32
# original, side by side in one run. Writes benchmarks/results/combined_cuda.json (read by
# benchmarks/claims.py for docs/CLAIMS.md) and copies it to $OUT when set.
#
# The GPU machine receives small files only and has no real weights: prepare on the CPU machine
# (real weights: calibration and the drop ranking are those of the CPU run, combined_cpu.json)
#     python benchmarks/combined.py --prepare-gpu build/gpu-combined
# which writes build/gpu-combined/{original,rewritten}.weightless.onnx and recipe.json. The graphs
# are regrown here with seeded random values (tools/weightless.py: timing and energy do not depend
# on the values); fidelity is not measured on them (the CPU run's stands for the same recipe).
#
# Carry list (run tool): build/gpu-combined  build/cuda   (libn6ops.so, libn6ops_cuda.so)
# Needs onnxruntime-gpu and nvidia-ml-py on the device. Usage:
#     CONDITIONS="one H200, nothing else running" bash benchmarks/gpu_combined.sh [extra combined.py args]
# With the GPU's reduced-precision stages beside fp32 (one file each; combined.py --quantize, --name):
#     bash benchmarks/gpu_combined.sh --quantize fp16 --name combined_cuda_fp16
#     bash benchmarks/gpu_combined.sh --quantize int4 --name combined_cuda_int4
set -euo pipefail
export N6ONNX_CUDA_LIBRARY=${N6ONNX_CUDA_LIBRARY:-build/cuda/libn6ops_cuda.so}
export N6ONNX_LIBRARY=${N6ONNX_LIBRARY:-build/cuda/libn6ops.so}
export PYTHONPATH=${PYTHONPATH:-}:$PWD
DIR=${GPU_COMBINED_DIR:-build/gpu-combined}
for f in original rewritten; do
  [[ -f $DIR/$f.weightless.onnx ]] || { echo "missing $DIR/$f.weightless.onnx: run benchmarks/combined.py --prepare-gpu $DIR on the CPU machine" >&2; exit 2; }
  python3 tools/weightless.py regrow "$DIR/$f.weightless.onnx" "/tmp/combined-$f.onnx"
done
passes=$(python3 -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['passes']))" "$DIR/recipe.json")
python3 benchmarks/combined.py --provider cuda --original /tmp/combined-original.onnx \
    --rewritten /tmp/combined-rewritten.onnx --weights-regrown --passes "$passes" --quantize none \
    --batch "${BATCH:-32}" --seq "${SEQ:-128}" --seconds "${SECONDS_PER_VARIANT:-60}" --block-seconds 5 \
    --workdir /tmp/combined --conditions "${CONDITIONS:-GPU machine, one H200, nothing else running}" "$@"
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/combined_cuda*.json "$OUT"/; fi
