#!/usr/bin/env bash
# The MiniLM rows of the heal benchmark healed on one CUDA GPU (the student in torch on cuda, HealConfig.device;
# the teacher on onnxruntime's CPU provider), every row at once sharing the GPU, each process pinned to 3 CPU
# cores with 3 threads (the teacher's first pass over DATA runs on them), within ~9 minutes (each has a 465 s deadline, the heal budget shrinks to fit). Run from
# the repository root on a host with a CUDA build of torch and >= 15 cores (the GPU machine):
#     [RESULT=heal_minilm_gpu] bash benchmarks/heal_gpu.sh CARRY [extra benchmarks/heal.py args for every row]
# CARRY as for heal_parallel.sh (python benchmarks/heal_carry.py pack CARRY): data.npz, held.npz, the model.
# Every row's teacher values stay cached (--cache-mb), so steps are not bound by the CPU teacher after the
# first pass over DATA. Writes benchmarks/results/$RESULT.json; copies it and the logs to $OUT when set.
set -euo pipefail
CARRY=${1:?usage: heal_gpu.sh CARRY [heal.py args]}; shift
[[ -f $CARRY/data.npz && -f $CARRY/held.npz ]] || { echo "$CARRY: needs data.npz and held.npz" >&2; exit 2; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
if [[ ! -f $CARRY/minilm.onnx ]]; then
  python3 benchmarks/heal_carry.py restore "$CARRY"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=3 MKL_NUM_THREADS=3 PYTHONWARNINGS=ignore
PARTS=${PARTS:-build/heal-gpu-parts}
RESULT=${RESULT:-heal_minilm_gpu}
SAMPLES=$(python3 -c "import numpy as np, sys; print(len(np.load(sys.argv[1]).files) // 3 * 8)" "$CARRY/data.npz")
mkdir -p "$PARTS"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
NOTE="GPU machine: student on $GPU (torch cuda, float32), teacher on onnxruntime CPU, 3 cores per run (taskset), 3 threads, 5 runs sharing the GPU"
job() {
  local tag=$1 cores=$2; shift 2
  taskset -c "$cores" timeout 490 python3 benchmarks/heal.py --model "$CARRY/minilm.onnx" --data "$CARRY/data.npz" \
    --held "$CARRY/held.npz" --samples "$SAMPLES" --minutes 8 --deadline 465 --cache-mb 12000 --threads 3 --part "$PARTS/$tag.json" \
    --note "$tag; $NOTE (taskset $cores)" --set device=cuda "$@" > "$PARTS/$tag.log" 2>&1 &
}
# ROWS (optional): other rows, "TAG ARGS...;TAG ARGS..." (at most 5), e.g.
#     ROWS="phi6_ema --only gelu=phi6 --set ema=0.99;int8 --only int8"
ROWS=${ROWS:-"int8_egyptian --only int8 --only attention=egyptian;phi6 --only gelu=phi6;\
bottleneck --only ffn=phi-bottleneck:4/3;fftmix --only attention=fftmix:2;\
combined --only gelu=phi6+ffn=phi-bottleneck:4/3+attention=fftmix:2"}
IFS=';' read -ra rows <<< "$ROWS"
(( ${#rows[@]} <= 5 )) || { echo "ROWS: at most 5 rows (3 cores each)" >&2; exit 2; }
for i in "${!rows[@]}"; do
  read -ra row <<< "${rows[$i]}"
  job "${row[0]}" "$((3 * i))-$((3 * i + 2))" "${row[@]:1}" "$@"
done
wait || true
tail -n 2 "$PARTS"/*.log
python3 benchmarks/heal.py --name "$RESULT" --merge "$PARTS"/*.json
if [[ -n ${OUT:-} ]]; then
  cp "benchmarks/results/$RESULT.json" "$PARTS"/*.log "$OUT/"
fi
