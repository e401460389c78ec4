#!/usr/bin/env bash
# End-to-end Egyptian attention at a long sequence on the GPU machine: a BERT-base-shaped encoder
# (768 hidden, 12 heads, 4 layers, batch 1 x 4096 tokens, float32 and float16, with or without an
# attention_mask input; tools/long_encoder.py) rewritten
# with attention=egyptian:by-index (fused core) and attention=egyptian:by-index:mha (full heads
# through com.microsoft.MultiHeadAttention), each against ORT's best original (its transformer
# fusions, so the original's attention runs as ORT's own fused kernel) on the CUDA provider, IO
# binding, NVML energy (benchmarks/e2e.py -> n6onnx bench). The graph travels without its weights
# and is regrown here with seeded random values: timing and energy do not depend on the values.
# Needs onnxruntime-gpu on PYTHONPATH and the built libraries. Results: benchmarks/results/
# e2e_egyptian_long_<L>[_nomask][_fp16]_<core>_cuda.json (and $OUT when set).
set -euo pipefail
export N6ONNX_CUDA_LIBRARY=${N6ONNX_CUDA_LIBRARY:-build/cuda/libn6ops_cuda.so}
export N6ONNX_LIBRARY=${N6ONNX_LIBRARY:-build/cuda/libn6ops.so}
export PYTHONPATH=${PYTHONPATH:-}:.
# MODELS: graphs in build/gpu-e2e/<name>.weightless.onnx (tools/long_encoder.py writes them; with
# --fp16 also <name>-fp16, its onnxruntime.transformers.float16 conversion; with --no-mask the
# export has no attention_mask input, e.g. MODELS="bert-long-L4096-nomask bert-long-L4096-nomask-fp16")
models=${MODELS:-bert-long-L4096}  # CORES: which cores to run (default: fused mha)
note="BERT-base-shaped encoder (tools/long_encoder.py: 768 hidden, 12 heads, FFN 3072, 4 layers), seeded random values regrown from the weightless graph (tools/weightless.py): timing and energy do not depend on the values"
for m in $models; do
  python3 tools/weightless.py regrow "build/gpu-e2e/$m.weightless.onnx" "/tmp/$m.onnx"
  seq=${m#bert-long-L}; seq=${seq%%-*}
  tag=${m#bert-long-}; tag=${tag//-/_}
  for core in ${CORES:-fused mha}; do
    python3 benchmarks/e2e.py --provider cuda --model bert --batch 1 --seq "$seq" --original "/tmp/$m.onnx" \
      --passes "attention=egyptian:by-index:$core" --name "e2e_egyptian_long_${tag}_${core}_cuda" \
      --seconds "${SECONDS_PER_MODEL:-10}" --workdir /tmp/e2e --weights-note "$note"
  done
done
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/e2e_egyptian_long_*_cuda.json "$OUT"/; fi
