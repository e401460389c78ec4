#!/usr/bin/env bash
# Every row of the heal benchmark at once, each pinned to 2 cores with 2 threads (6 MiniLM runs: 12 cores;
# with LM=1 also 2 runs of the byte-level GPT-2: 16 cores), within ~9 minutes (each MiniLM process has a
# 465 s deadline, the heal budget shrinks to fit; each GPT-2 run heals 5.5 minutes). Run from the repository
# root on a CPU host with >= 12 (16) cores (the device host's CPUs; its GPU is unused):
#     [RESULT=heal_minilm] [LM=1] [ROW6="TAG ARGS"] bash benchmarks/heal_parallel.sh CARRY [extra heal.py args for every row]
# CARRY holds data.npz and held.npz (pre-tokenised DATA and held-out feeds, 8 x 64) and the model:
# minilm.onnx, or minilm16.onnx (fp16-carried weights restored to float32): python benchmarks/heal_carry.py pack CARRY. LM=1 needs
# build/lm (benchmarks/lm_train.py's trained GPT-2 and its data: reused, not retrained). Writes
# benchmarks/results/$RESULT.json (the MiniLM rows; default heal_minilm) and, with LM=1, merges the GPT-2
# rows into benchmarks/results/$LM_RESULT.json (default heal_lm; its other rows kept: same LM only); copies them and the logs to $OUT when set.
set -euo pipefail
CARRY=${1:?usage: heal_parallel.sh CARRY [heal.py args]}; shift
[[ -f $CARRY/data.npz && -f $CARRY/held.npz ]] || { echo "$CARRY: needs data.npz and held.npz" >&2; exit 2; }
if [[ -n ${LM:-} && ! -f build/lm/stamp.json ]]; then echo "LM=1 needs build/lm (benchmarks/lm_train.py)" >&2; exit 2; fi
if [[ ! -f $CARRY/minilm.onnx ]]; then
  python3 benchmarks/heal_carry.py restore "$CARRY"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONWARNINGS=ignore
PARTS=${PARTS:-build/heal-parts}
RESULT=${RESULT:-heal_minilm}
mkdir -p "$PARTS"
RUNS=$([[ -n ${LM:-} ]] && echo 8 || echo 6)
NOTE="device host CPU, 2 cores per run (taskset), 2 threads, $RUNS runs in parallel"
job() {
  local tag=$1 cores=$2; shift 2
  taskset -c "$cores" timeout 490 python3 benchmarks/heal.py --model "$CARRY/minilm.onnx" --data "$CARRY/data.npz" \
    --held "$CARRY/held.npz" --minutes 8 --deadline 465 --eval-every 50 --part "$PARTS/$tag.json" \
    --note "$tag; $NOTE (taskset $cores)" "$@" > "$PARTS/$tag.log" 2>&1 &
}
lmjob() {
  local tag=$1 cores=$2; shift 2
  taskset -c "$cores" timeout 530 python3 benchmarks/heal_lm.py --no-uncalibrated --out "$PARTS/lm_$tag.json" \
    --note "$tag; $NOTE (taskset $cores)" "$@" > "$PARTS/lm_$tag.log" 2>&1 &
}
job int8_egyptian 0-1 --only int8 --only attention=egyptian "$@"
job phi6 2-3 --only gelu=phi6 "$@"
job bottleneck 4-5 --only ffn=phi-bottleneck:4/3 "$@"
job fftmix 6-7 --only attention=fftmix:2 "$@"
job combined 8-9 --only gelu=phi6+ffn=phi-bottleneck:4/3+attention=fftmix:2 "$@"
# a sixth row on cores 10-11 (ROW6="TAG ARGS..."): by default the live weights (no average) of gelu=phi6, same run
read -ra row6 <<< "${ROW6:-phi6_live --only gelu=phi6 --set ema=0}"
job "${row6[0]}" 10-11 "${row6[@]:1}" "$@"
if [[ -n ${LM:-} ]]; then  # the byte-level GPT-2 (issue 16's decoder goal: top-1 agreement >= 0.97)
  lmjob defaults 12-13 --heal "minutes=5.5"
  lmjob local 14-15 --heal "minutes=5.5,local=1,local_lr=2e-3"
fi
wait || true
tail -n 2 "$PARTS"/*.log
python3 benchmarks/heal.py --name "$RESULT" --merge $(ls "$PARTS"/*.json | grep -v '/lm_')
LM_RESULT=${LM_RESULT:-heal_lm}
if [[ -n ${LM:-} ]]; then python3 benchmarks/heal_lm.py --merge "$PARTS"/lm_*.json --out "benchmarks/results/$LM_RESULT.json"; fi
if [[ -n ${OUT:-} ]]; then
  cp "benchmarks/results/$RESULT.json" "$PARTS"/*.log "$OUT/"
  if [[ -n ${LM:-} ]]; then cp "benchmarks/results/$LM_RESULT.json" "$OUT/"; fi
fi
