#!/usr/bin/env bash
# Every row of the heal benchmark at once, each pinned to 2 cores with 2 threads (6 runs: 12 cores),
# within ~8 minutes (each process has a 465 s deadline; the heal budget shrinks to fit). Run from
# the repository root on a CPU host with >= 12 cores (the device host's CPUs; its GPU is unused):
#     bash benchmarks/heal_parallel.sh CARRY [extra benchmarks/heal.py args for every row]
# CARRY holds data.npz and held.npz (pre-tokenised DATA and held-out feeds, 8 x 64) and the model:
# minilm.onnx, or minilm16.onnx with prep.py (fp16-carried weights restored to float32). Writes
# benchmarks/results/heal_minilm.json (merged rows) and copies it and the logs to $OUT when set.
set -euo pipefail
CARRY=${1:?usage: heal_parallel.sh CARRY [heal.py args]}; shift
[[ -f $CARRY/data.npz && -f $CARRY/held.npz ]] || { echo "$CARRY: needs data.npz and held.npz" >&2; exit 2; }
if [[ ! -f $CARRY/minilm.onnx ]]; then
  python3 "$CARRY/prep.py" "$CARRY/minilm16.onnx" "$CARRY/minilm.onnx"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONWARNINGS=ignore
PARTS=${PARTS:-build/heal-parts}
mkdir -p "$PARTS"
NOTE="device host CPU, 2 cores per run (taskset), 2 threads, 6 runs in parallel"
job() {
  local tag=$1 cores=$2; shift 2
  taskset -c "$cores" timeout 490 python3 benchmarks/heal.py --model "$CARRY/minilm.onnx" --data "$CARRY/data.npz" \
    --held "$CARRY/held.npz" --minutes 8 --deadline 465 --eval-every 50 --part "$PARTS/$tag.json" \
    --note "$tag; $NOTE (taskset $cores)" "$@" > "$PARTS/$tag.log" 2>&1 &
}
job int8_egyptian 0-1 --only int8 --only attention=egyptian "$@"
job phi6 2-3 --only gelu=phi6 "$@"
job bottleneck 4-5 --only ffn=phi-bottleneck:4/3 "$@"
job fftmix 6-7 --only attention=fftmix:2 "$@"
job combined 8-9 --only gelu=phi6+ffn=phi-bottleneck:4/3+attention=fftmix:2 "$@"
job phi6_sequential 10-11 --only gelu=phi6 --local-mode sequential --local-lr 3e-4 "$@"  # the no-fall setting, for comparison
wait || true
tail -n 2 "$PARTS"/*.log
python3 benchmarks/heal.py --merge "$PARTS"/*.json
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/heal_minilm.json "$PARTS"/*.log "$OUT/"; fi
