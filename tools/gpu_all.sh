#!/usr/bin/env bash
# One GPU-machine session for every GPU driver in turn, each under its own time limit; one failing
# driver never stops the others. Needs onnxruntime-gpu on PYTHONPATH (/tmp/site, see README "CUDA")
# and the libraries built from this checkout in build/cuda/. Results go to benchmarks/results/
# and, when $OUT is set, to $OUT.
#   tools/gpu_attention.py  FFTMix / EgyptianAttention: contract, placement, memcheck, op benchmark
#   tools/gpu_moe.py        MoE: contract, placement, memcheck, op benchmark (incl. com.microsoft MoE)
#   tools/gpu_check.py      the activations: contract (with placement) and memcheck
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}:.
export N6ONNX_CUDA_LIBRARY=${N6ONNX_CUDA_LIBRARY:-build/cuda/libn6ops_cuda.so}
export N6ONNX_LIBRARY=${N6ONNX_LIBRARY:-build/cuda/libn6ops.so}
export PYTHONUNBUFFERED=1
rc=0
run() {
  local limit=$1; shift
  echo "== $* (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@"; local s=$?
  echo "== exit $s after $((SECONDS - t0)) s: $*"
  (( s == 0 )) || rc=1
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
run "${ATTN_LIMIT:-200}" python3 tools/gpu_attention.py
run "${MOE_LIMIT:-200}" python3 tools/gpu_moe.py
run "${ACT_LIMIT:-300}" python3 tools/gpu_check.py --only contract,sanitizer --out benchmarks/results/gpu_check_activations.json
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/gpu_check_activations.json "$OUT"/ 2>/dev/null || true; fi
exit $rc
