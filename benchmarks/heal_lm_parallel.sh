#!/usr/bin/env bash
# Heal rows of the byte-level GPT-2 (benchmarks/heal_lm.py) at once, each pinned to 2 cores with 2 threads,
# one row per HealConfig spec given (at most 8 on a 16-core host), then merged into benchmarks/results/heal_lm.json
# (rows of the same name replaced, others kept). Needs build/lm (benchmarks/lm_train.py; carried to the device host):
#     bash benchmarks/heal_lm_parallel.sh "minutes=7" "minutes=7,local=1,local_lr=2e-3" ...
# LIMIT (seconds, default 570) bounds each process; logs and parts go to build/heal-lm-parts, and to $OUT when set.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: heal_lm_parallel.sh SPEC [SPEC ...] (HealConfig fields, as heal_lm.py --heal)" >&2; exit 2; }
[[ -f build/lm/stamp.json ]] || { echo "needs build/lm (python benchmarks/lm_train.py)" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONWARNINGS=ignore
PARTS=${PARTS:-build/heal-lm-parts}
rm -rf "$PARTS" && mkdir -p "$PARTS"
NOTE="device host CPU, 2 cores per run (taskset), 2 threads, $# runs in parallel"
k=0
for spec in "$@"; do
  cores="$((2 * k))-$((2 * k + 1))"
  taskset -c "$cores" timeout "${LIMIT:-570}" python3 benchmarks/heal_lm.py --no-uncalibrated --heal "$spec" \
    --out "$PARTS/lm_$k.json" --note "$spec; $NOTE (taskset $cores)" > "$PARTS/lm_$k.log" 2>&1 &
  k=$((k + 1))
done
wait || true
tail -n 1 "$PARTS"/*.log | cut -c1-300
python3 benchmarks/heal_lm.py --merge "$PARTS"/lm_*.json
if [[ -n ${OUT:-} ]]; then cp benchmarks/results/heal_lm.json "$PARTS"/*.log "$OUT/"; fi
