#!/usr/bin/env bash
# The CUDA tests (tests/cuda/, pytest -m cuda) on a GPU machine, against a prebuilt
# libn6ops_cuda.so; writes a log, a JUnit XML and a JSON summary to $OUT.
#
#   N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so tools/gpu_pytest.sh
#
# Environment:
#   N6ONNX_CUDA_LIBRARY  the prebuilt CUDA library (required)
#   N6ONNX_LIBRARY       libn6ops.so for the CPU comparisons (optional: else the CPU kernels of
#                        the CUDA library)
#   OUT                  where the results go (default build/gpu-pytest)
#   MEMCHECK=1           also the compute-sanitizer memcheck tests (-m memcheck; several minutes);
#   MEMCHECK=only        only those
#   PYTEST_ARGS          more pytest arguments (e.g. "-k attention -x")
#   SITE                 onnxruntime-gpu's site folder, put first on PYTHONPATH (default /tmp/site)
# Needs python3 with pytest, numpy, onnx and onnxruntime-gpu; nvcc and nvidia-smi for the
# standalone kernel check; compute-sanitizer with MEMCHECK=1. Nothing is skipped: a missing piece
# fails the tests that need it. Exit status: pytest's (0 = every selected test passed, none skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-pytest}
mkdir -p "$out"
if [[ -z ${N6ONNX_CUDA_LIBRARY:-} || ! -f ${N6ONNX_CUDA_LIBRARY} ]]; then
  echo "gpu_pytest: set N6ONNX_CUDA_LIBRARY to the prebuilt libn6ops_cuda.so (got '${N6ONNX_CUDA_LIBRARY:-}')" >&2
  exit 2
fi
N6ONNX_CUDA_LIBRARY=$(realpath "$N6ONNX_CUDA_LIBRARY")
export N6ONNX_CUDA_LIBRARY
export PYTHONPATH=${SITE:-/tmp/site}:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
case ${MEMCHECK:-0} in
  0) marks=cuda ;;
  1) marks="cuda or memcheck" ;;
  only) marks=memcheck ;;
  *) echo "gpu_pytest: MEMCHECK must be 0, 1 or only (got '${MEMCHECK}')" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader > "$out/gpu.txt" 2>&1 || true
t0=$SECONDS
# shellcheck disable=SC2086  # PYTEST_ARGS: several words on purpose
python3 -m pytest -p no:cacheprovider -m "$marks" tests/cuda -o junit_family=xunit2 \
  --junitxml="$out/cuda-tests.xml" ${PYTEST_ARGS:-} 2>&1 | tee "$out/cuda-tests.log"
rc=${PIPESTATUS[0]}
python3 - "$out" "$rc" "$((SECONDS - t0))" "$marks" <<'PY'
import collections, json, os, pathlib, platform, sys, xml.etree.ElementTree as ET
out, rc, seconds, marks = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
summary = {"exit_status": rc, "seconds": seconds, "markers": marks, "python": platform.python_version(),
           "gpu": (out / "gpu.txt").read_text().strip(), "cuda_library": os.environ["N6ONNX_CUDA_LIBRARY"],
           "cpu_library": os.environ.get("N6ONNX_LIBRARY")}
try:
    import onnxruntime
    summary["onnxruntime"] = onnxruntime.__version__
except Exception as e:  # noqa: BLE001  (recorded: the tests then fail with the reason)
    summary["onnxruntime"] = f"not importable: {e}"
per_module = collections.defaultdict(collections.Counter)
problems = []
xml = out / "cuda-tests.xml"
if xml.exists():
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1] or "?"
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        per_module[module][kind] += 1
        if kind != "passed":
            detail = next(c for c in case if c.tag == kind)
            problems.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": kind,
                             "message": (detail.get("message") or "")[:500]})
totals = sum(per_module.values(), collections.Counter())
summary.update(totals=dict(totals), per_module={k: dict(v) for k, v in sorted(per_module.items())},
               problems=problems[:100])
# skipped counts as not passing: a selected CUDA test must run
summary["ok"] = rc == 0 and bool(totals) and totals["passed"] == sum(totals.values())
tmp = out / "cuda-tests.json.tmp"
tmp.write_text(json.dumps(summary, indent=2) + "\n")
os.replace(tmp, out / "cuda-tests.json")
print(f"gpu_pytest: {dict(totals)} ok={summary['ok']} -> {out / 'cuda-tests.json'}")
sys.exit(0 if summary["ok"] else (rc or 1))
PY
