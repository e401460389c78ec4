"""What the GPU check drivers (gpu_check.py, gpu_attention.py, gpu_moe.py) share: running a part of
the driver again under compute-sanitizer memcheck, and writing result JSON atomically (copied to
$OUT, the folder the device machine sends back, when it is set)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's n6onnx

from n6onnx.io import atomic_write  # noqa: E402


def find_sanitizer() -> str | None:
    exe = shutil.which("compute-sanitizer")
    if exe:
        return exe
    for p in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if os.access(p, os.X_OK):
            return p
    return None


def memcheck(script: str, script_args: list[str], tmp: pathlib.Path, timeout: int) -> dict:
    """Run ``python script script_args...`` under memcheck; the script is told (in script_args) to
    write its JSON to ``tmp / "memcheck_contract.json"``, which comes back parsed under "sub".
    "clean" is True when the run exited 0 with an error summary of 0 errors; each driver adds its
    own "ok" from "clean" and what the sub-run reports."""
    exe = find_sanitizer()
    if exe is None:
        return {"ran": False, "ok": None, "clean": False, "why": "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"}
    log = tmp / "memcheck.log"
    sub_out = tmp / "memcheck_contract.json"
    cmd = [exe, "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "50", "--log-file", str(log),
           sys.executable, str(pathlib.Path(script).resolve()), *script_args]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = None, "timed out"
    text = log.read_text(errors="replace") if log.exists() else ""
    summary = [ln.strip() for ln in text.splitlines() if "ERROR SUMMARY" in ln]
    errors = None
    if summary:
        try:
            errors = int(summary[-1].split("ERROR SUMMARY:")[1].split()[0])
        except (IndexError, ValueError):
            pass
    sub = json.loads(sub_out.read_text()) if sub_out.exists() else {}
    return {"ran": True, "command": " ".join(cmd), "seconds": round(time.time() - t0, 1), "exit_status": rc,
            "error_summary": summary[-1] if summary else None, "errors": errors,
            "log_tail": text[-3000:] if (errors or rc != 0) else text[-300:], "output_tail": tail if rc != 0 else "",
            "clean": rc == 0 and errors == 0, "sub": sub}


def sub_out(tmp: pathlib.Path) -> str:
    return str(tmp / "memcheck_contract.json")


def write_json(path: pathlib.Path, payload: dict, *, copy_to_out: bool = True) -> None:
    """Atomic write (n6onnx.io.atomic_write); copied to $OUT when that folder is set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(payload, indent=2, default=str) + "\n")
    out = os.environ.get("OUT")
    if copy_to_out and out:
        os.makedirs(out, exist_ok=True)
        dest = pathlib.Path(out) / path.name
        if not (dest.exists() and dest.samefile(path)):
            shutil.copy(path, dest)
