"""Shared helpers for benchmark scripts: hardware description, robust statistics, JSON output."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform

import onnxruntime as ort

from n6onnx.bench.latency import summary  # noqa: F401  (the scripts' one statistics helper: bench's)
from n6onnx.io import atomic_write
from n6onnx.quantize import kernel

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def side_parser(doc: str, workdir: str, name: str) -> argparse.ArgumentParser:
    """The arguments of a MiniLM side-by-side script: --threads, --workdir (build/WORKDIR), --name (the result
    file), --conditions (what the timing was taken on)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=pathlib.Path, default=RESULTS.parents[1] / "build" / workdir)
    ap.add_argument("--name", default=name, help="result file name under benchmarks/results/")
    ap.add_argument("--conditions", default="shared 2-core machine: timing is noisy")
    return ap


INT8_INSTRUCTIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(the CPU's model name, its feature flags: x86 ``flags``, ARM ``Features``) from /proc/cpuinfo; ("", set())
    where there is none."""
    name, flags = "", set()
    try:
        for line in open(path):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, flags


def fidelity(src, cand, held: dict, dims: dict | None = None) -> dict:
    """MiniLM-style embedding fidelity of ``cand`` against ``src`` (``n6onnx validate``, 2 threads): mean-pooled
    ``last_hidden_state`` cosine (mean, min) and nearest-neighbour agreement. ``held``: validate's data argument,
    ``{"text": PATH}`` (tokenized at ``dims``, default 8 x 64) or ``{"feeds": NPZ}`` (its own shapes)."""
    import n6onnx

    dims = (dims or {"batch": 8, "seq": 64}) if "text" in held else None
    rep = n6onnx.validate(src, cand, dims=dims, threads=2, **held).to_json()
    emb = rep["outputs"]["last_hidden_state"]["embedding"]
    return {"cosine": emb["cosine_mean"], "cosine_min": emb["cosine_min"], "nn": emb["nn_agreement"]}


def hardware() -> dict:
    cpu, flags = cpu_info()
    hw = {
        "cpu": cpu or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "int8_kernel": kernel.kind(),  # int8 models' products on this CPU: "saturating" on x86 without VNNI
        "int8_instructions": sorted(flags & set(INT8_INSTRUCTIONS)),
    }
    gpu = _gpu_name()
    if gpu:
        hw["gpu"] = gpu
    return hw


def _gpu_name() -> str | None:
    """The first GPU's name and driver from nvidia-smi, when the machine has one."""
    import shutil
    import subprocess

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return line or None


def write(name: str, payload: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "hardware": hardware(), **payload}
    out = RESULTS / f"{name}.json"
    atomic_write(out, json.dumps(payload, indent=2) + "\n")
    return out


def heal_fields(spec: str) -> dict:
    """``"minutes=6,lr=1e-3,local=0"`` -> HealConfig field overrides (numbers as int where they parse so, else
    float; ``true``/``false`` -> bool; ``none`` -> None for a field that may be None, else the word; anything else
    a string). An unknown field or a value HealConfig refuses ends the run with its message, before any work."""
    from n6onnx.errors import BadArgumentError
    from n6onnx.heal.config import HealConfig

    fields = HealConfig.__dataclass_fields__
    kw = {}
    for item in filter(None, spec.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise SystemExit(f"{item!r}: a HealConfig field is set as FIELD=VALUE")
        if k not in fields:
            raise SystemExit(f"unknown HealConfig field {k!r}")
        words = {"true": True, "false": False, **({"none": None} if "None" in str(fields[k].type) else {})}
        kw[k] = words.get(v.lower(), v)
        for conv in (int, float):
            try:
                kw[k] = conv(v)
                break
            except ValueError:
                pass
    try:
        HealConfig(**kw)
    except BadArgumentError as e:
        raise SystemExit(f"{spec!r}: {e}") from None
    return kw


def check_passes(ap: argparse.ArgumentParser, specs, sep: str = "+", also: tuple[str, ...] = ()) -> None:
    """Every pass in ``specs`` (each one or more ``KIND=OPTION`` joined by ``sep``; the words in ``also``
    allowed as parts) checked by n6onnx's own pass parser before any work: a bad one ends the run with the
    parser's message and exit status 2 (``ap.error``), not a traceback minutes later."""
    from n6onnx.errors import BadArgumentError
    from n6onnx.passes import parse

    for spec in specs:
        for part in filter(None, spec.split(sep)):
            if part in also:
                continue
            try:
                parse(part)
            except BadArgumentError as e:
                ap.error(f"{spec!r}: {e}")


def minilm_split(work: pathlib.Path, calib_n: int = 255, held_n: int = 255) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """The MiniLM dynamic export (opset 20) and its text files in ``work``: held-out = corpus sentences
    1000..1000+held_n-1 (never seen by a fit), calibration = the first calib_n sentences outside that range
    (0..calib_n-1 while calib_n <= 1000)."""
    from n6onnx.testing import corpus, zoo

    work.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(__file__).resolve().parents[1]
    cache = pathlib.Path(os.environ.get("N6ONNX_TEST_CACHE", root / "build" / "test-models"))
    src = zoo.export("minilm", "dynamo20", cache, dynamic=True)
    s = corpus.sentences()
    calib, held = work / "calib.txt", work / "held.txt"
    outside = s[:1000] + s[1000 + held_n:]
    if calib_n > len(outside):
        raise SystemExit(f"minilm_split: {calib_n} calibration sentences asked, the corpus has {len(outside)} outside "
                         "the held-out range")
    calib.write_text("\n".join(outside[:calib_n]))
    held.write_text("\n".join(s[1000:1000 + held_n]))
    return src, calib, held
