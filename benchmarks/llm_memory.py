"""Peak memory of `n6onnx inspect` and `n6onnx rewrite` on an LLM-sized export (issue 20, item 5).

Model: a random-weight Llama-style decoder (transformers LlamaModel, SwiGLU MLPs, RMSNorm, RoPE,
grouped-query attention), exported with torch's dynamo exporter under no_grad with its tensors in
an external data file (as large exports are shipped). Default config ~1 B parameters: hidden 2048,
22 layers, intermediate 5632, 32 query / 4 key-value heads, vocabulary 32000; ``--layers`` and
``--hidden`` shrink it where a machine cannot hold the export.

Each command runs in a child process (the ``n6onnx`` CLI of this tree); its peak resident set size is
the child's ``ru_maxrss`` (resource.getrusage(RUSAGE_CHILDREN) after it exits: each command runs
in a fresh wrapper process, so the figure is that command's alone). Peak RSS is set against the model's
size on disk (.onnx + external data). Commands: inspect; rewrite --pass ffn=phi-bottleneck:4/3
(uncalibrated and with --calibrate on a few short sequences); rewrite --pass gelu=phi6 (Llama has no
GELU: nothing matches, but the model is still loaded, canonicalised and saved); each repeated
``--repeats`` times. Writes benchmarks/results/llm_memory.json (``--name``); with ``--only`` the rows of
the other commands are kept from that file when it describes the same model (each row says when and
on which commit it was measured).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx.io import atomic_path, external_files  # noqa: E402

from _common import write  # noqa: E402


def llama_config(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
                 act: str = "silu"):
    import transformers as tf

    return tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                          intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=4096, use_cache=False, hidden_act=act)


def export_llama(path: pathlib.Path, config, *, seq: int = 16) -> pathlib.Path:
    """Export a random-weight LlamaModel (dynamic batch and sequence) to ``path`` with external data
    ``path.name + '.data'``; skipped when it exists. Atomic: written in a temporary folder, then renamed."""
    import torch
    import transformers as tf

    if path.is_file():
        return path
    torch.manual_seed(0)
    with torch.device("meta"):
        model = tf.LlamaModel(config)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in model.parameters():  # random weights, cheaper than transformers' init
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.rotary_emb = type(model.rotary_emb)(config)  # its buffers are computed, not random

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    ids = torch.randint(0, config.vocab_size, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=2, max=4096)}
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with torch.no_grad():
            torch.onnx.export(Wrapper(model), (ids, mask), str(tmpdir / path.name), dynamo=True, opset_version=20,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_shapes=(dims, dims), external_data=True, optimize=True)
        for f in sorted(tmpdir.iterdir(), key=lambda f: f.name == path.name):  # the .onnx last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


N6 = "import sys; from n6onnx.cli import main; sys.argv[0] = 'n6onnx'; sys.exit(main())"


def measure(args: list[str], timeout: float) -> dict:
    """Run ``n6onnx ARGS`` in a child process; its peak RSS, wall time and exit status. The child runs
    under GNU time (``/usr/bin/time -f %M``), which forks it from its own small process: a child forked
    from this script would report this script's RSS at the fork as its floor (Linux keeps the peak
    across exec). A child still running after ``timeout`` seconds is killed, and reported so."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log, tempfile.NamedTemporaryFile("r") as rss:
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable, "-c", N6, *args],
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            p.wait(timeout)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            killed = True
        log.seek(0)
        tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
        kib = [int(x) for x in rss.read().split() if x.isdigit()]
    return {"command": "n6onnx " + " ".join(args), "peak_rss_bytes": kib[-1] * 1024 if kib else None,
            "seconds": round(time.perf_counter() - t0, 1), "exit_status": p.returncode,
            "timed_out": killed, **({"output_tail": tail} if p.returncode else {})}


def model_bytes(path: pathlib.Path) -> int:
    return path.stat().st_size + sum(f.stat().st_size for f in external_files(path))


def _mem_available() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def calibration_file(path: pathlib.Path, vocab: int, n: int, seq: int) -> pathlib.Path:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (n, seq)).astype(np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, input_ids=ids, attention_mask=np.ones_like(ids))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each command (peak RSS varies little)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a command is stopped")
    ap.add_argument("--calib", default="8x32", help="calibration sequences NxLEN (random token ids)")
    ap.add_argument("--skip", nargs="*", default=[], help="names of commands not to run")
    ap.add_argument("--only", nargs="*", help="names of the commands to run (the others' rows are kept)")
    ap.add_argument("--name", default="llm_memory", help="results file benchmarks/results/NAME.json")
    ap.add_argument("--work", default=str(ROOT / "build" / "llm"))
    ap.add_argument("--note", default="shared 2-core machine, 24 GB, other jobs running")
    ap.add_argument("--export-to", help=argparse.SUPPRESS)  # the export step, run in a child process
    ap.add_argument("--act", default="silu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = dict(hidden=args.hidden, layers=args.layers, intermediate=args.intermediate, heads=args.heads,
               kv_heads=args.kv_heads, vocab=args.vocab)
    if args.export_to:
        export_llama(pathlib.Path(args.export_to), llama_config(**cfg, act=args.act))
        return
    available = _mem_available()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = f"h{args.hidden}-l{args.layers}-i{args.intermediate}-q{args.heads}-kv{args.kv_heads}-v{args.vocab}"

    def export(path: pathlib.Path, act: str = "silu") -> pathlib.Path:
        """In a child process: torch keeps the export's memory, which would inflate later measurements."""
        if not path.is_file():
            subprocess.run([sys.executable, __file__, "--export-to", str(path), "--act", act,
                            *[f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]], check=True)
        return path

    llama = export(work / f"llama-{shape}.onnx")
    n, seq = (int(x) for x in args.calib.split("x"))
    calib = calibration_file(work / f"calib-{args.calib}.npz", args.vocab, n, seq)
    out = work / "out.onnx"
    commands = {
        "n6onnx --version (the floor: Python and the imports)": (llama, ["--version"]),
        "inspect": (llama, ["inspect", str(llama)]),
        "rewrite gelu=phi6": (llama, ["rewrite", str(llama), "-o", str(out), "--pass", "gelu=phi6"]),
        "rewrite ffn": (llama, ["rewrite", str(llama), "-o", str(out), "--pass", "ffn=phi-bottleneck:4/3"]),
        "rewrite gelu=phi6 --calibrate (GeGLU)": ("geglu", ["rewrite", "{geglu}", "-o", str(out), "--pass", "gelu=phi6",
                                                            "--calibrate", str(calib)]),
        "rewrite ffn --calibrate": (llama, ["rewrite", str(llama), "-o", str(out), "--pass", "ffn=phi-bottleneck:4/3",
                                            "--calibrate", str(calib)]),
    }
    rows = []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    params = sum(int(np.prod(t.dims)) for t in onnx.load(str(llama), load_external_data=False).graph.initializer)
    model_info = {"kind": "random-weight transformers LlamaModel, dynamo export (opset 20, dynamic batch/seq), "
                          "fp32, external data", **cfg, "parameters": params}
    old = _previous(ROOT / "benchmarks" / "results" / f"{args.name}.json", model_info)
    for name, (model, argv) in commands.items():
        if name in args.skip or (args.only is not None and name not in args.only):
            if name in old:
                rows.append(old[name])
            continue
        if model == "geglu":  # the same shape with GELU-gated MLPs (Gemma-style): the gelu pass has sites
            model = export(work / f"geglu-{shape}.onnx", "gelu_pytorch_tanh")
            argv = [a.replace("{geglu}", str(model)) for a in argv]
        size = model_bytes(model)
        runs = [measure(argv, args.timeout) for _ in range(args.repeats)]
        peak = max(r["peak_rss_bytes"] or 0 for r in runs)
        row = {"name": name, "model": model.name, "model_bytes": size, "peak_rss_bytes": peak,
               "peak_rss_over_model": round(peak / size, 3), "runs": runs,
               "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": commit, "note": args.note, "mem_available_at_start_bytes": available}
        rows.append(row)
        print(f"{name:40s} peak {peak / 2**30:6.2f} GiB = {peak / size:5.2f} x model "
              f"({size / 2**30:.2f} GiB) {[r['seconds'] for r in runs]} s"
              f"{' TIMED OUT' if any(r['timed_out'] for r in runs) else ''}", flush=True)
        for f in (out, work / "out.onnx.data"):
            f.unlink(missing_ok=True)
    payload = {
        "what": "peak RSS of n6onnx inspect / rewrite against the model's size on disk (issue 20, item 5)",
        "model": model_info,
        "method": ("each command in a fresh child process (python -c n6onnx.cli.main) under GNU time; peak RSS = "
                   "its %M (maximum resident set size: anonymous and file-backed mmap pages); model size = "
                   ".onnx + .onnx.data on disk; calibration data: random token ids, "
                   f"{n} sequences x {seq} tokens"),
        "repetitions": args.repeats, "note": "per row (measured, commit, note: machine load)", "rows": rows,
    }
    print(write(args.name, payload))


def _previous(path: pathlib.Path, model_info: dict) -> dict:
    """Rows of an earlier results file for the same model, by name; each keeps (or is given) the
    time, commit and note of the run that measured it."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("model") != model_info:
        return {}
    defaults = {"measured": old.get("generated"), "commit": None, "note": old.get("note"),
                "mem_available_at_start_bytes": old.get("mem_available_at_start_bytes")}
    return {r["name"]: {**defaults, **r} for r in old.get("rows", [])}


if __name__ == "__main__":
    main()
