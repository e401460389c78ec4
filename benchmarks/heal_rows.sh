#!/usr/bin/env bash
# MiniLM heal rows of any setting at once (benchmarks/heal.py), each pinned to its own cores, then merged into
# benchmarks/results/$RESULT.json. A row is "TAG THREADS REWRITE [SPEC [DATA]]": THREADS cores (taskset) and threads,
# REWRITE as heal.py --only takes it (or int8), SPEC HealConfig fields (heal.py --set; - for none), DATA another
# pre-tokenised DATA .npz than $CARRY/data.npz (the held-out feeds stay $CARRY/held.npz). Run from the repository
# root on a host with enough cores (the device host's 16: e.g. 8 rows of 2, or 4 rows of 4):
#     RESULT=heal_minilm_bf16 bash benchmarks/heal_rows.sh CARRY "phi6 2 gelu=phi6" "phi6_bf16 2 gelu=phi6 train_dtype=bfloat16"
# CARRY as for heal_parallel.sh (data.npz, held.npz, minilm.onnx or minilm16.onnx: benchmarks/heal_carry.py pack CARRY). MINUTES (default 8)
# is each heal's budget, DEADLINE (default 465) the seconds each process may run (the budget shrinks to fit).
# HOST (default "device host CPU") names the machine in each row's note.
set -euo pipefail
CARRY=${1:?usage: heal_rows.sh CARRY "TAG THREADS REWRITE [SPEC]" ...}; shift
[[ -f $CARRY/data.npz && -f $CARRY/held.npz ]] || { echo "$CARRY: needs data.npz and held.npz" >&2; exit 2; }
[[ -f $CARRY/minilm.onnx ]] || python3 benchmarks/heal_carry.py restore "$CARRY"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONWARNINGS=ignore
PARTS=${PARTS:-build/heal-rows}
RESULT=${RESULT:-heal_minilm_rows}
rm -rf "$PARTS" && mkdir -p "$PARTS"
first=0
for row in "$@"; do
  read -r tag threads rewrite spec data <<< "$row"
  [[ ${spec:-} == - ]] && spec=""
  cores="$first-$((first + threads - 1))"
  first=$((first + threads))
  OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads taskset -c "$cores" timeout $(( ${DEADLINE:-465} + 25 )) \
    python3 benchmarks/heal.py --model "$CARRY/minilm.onnx" --data "${data:-$CARRY/data.npz}" --held "$CARRY/held.npz" \
    --minutes "${MINUTES:-8}" --deadline "${DEADLINE:-465}" --eval-every 50 --threads "$threads" --only "$rewrite" \
    --set "${spec:-}" --part "$PARTS/$tag.json" \
    --note "$tag: ${spec:-defaults}${data:+, DATA $data}; ${HOST:-device host CPU}, $threads cores (taskset $cores), $# runs in parallel" \
    > "$PARTS/$tag.log" 2>&1 &
done
wait || true
tail -n 2 "$PARTS"/*.log | cut -c1-300
python3 benchmarks/heal.py --name "$RESULT" --merge "$PARTS"/*.json
if [[ -n ${OUT:-} ]]; then cp "benchmarks/results/$RESULT.json" "$PARTS"/*.log "$OUT/"; fi
