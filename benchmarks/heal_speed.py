"""Heal step speed on all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20, batch 8 x 64).

Times the three things a heal repeats, in one process, for each variant, with the variants
interleaved round by round (the machine may be shared: each round sees about the same load), and
reports medians and spread of wall and process-CPU seconds:
- a global step (the student on the whole graph, loss on the residual streams + output, backward,
  fused Adam), as ``heal.train`` runs it;
- a block-local step (parallel, every block from the teacher's stream: the executor's ``inject``);
- one held-out evaluation batch (inference mode), timed as a check of ``--eval-batches`` (default 16,
  heal's most) batches with the same weights, divided by that count.

Cases: calibrated gelu=phi6, calibrated ffn=phi-bottleneck:4/3 (float), and the original under
``--quantize int8`` fake quantization (``heal.fakequant``; all quantized MatMul weights train).
Variants (only the student's execution differs; the data, weights and teacher are shared):
- ``eager``: the heal as it runs by default;
- ``no-grid-cache``: fake-quant weights requantized on every call (the previous behaviour; the
  fake-quant case only);
- ``compiled-act``: the n6 elementwise activations through ``torch.compile`` (its compile time is
  reported on its own: it counts against a heal's budget);
- ``bf16``: the training forward under ``torch.autocast("cpu", bfloat16)`` (the executor's
  ``train_dtype``; evaluation stays float32);
- ``flush-denormal``: ``torch.set_flush_denormal(True)`` while the variant runs.

    python benchmarks/heal_speed.py [--rounds 5] [--cases phi6,bneck,int8] [--variants ...]
    python benchmarks/heal_speed.py --fidelity --cases int8    # bf16's effect on a fixed-step heal

Writes benchmarks/results/heal_speed.json; ``--fidelity`` writes heal_speed_fidelity.json: the same
fixed-step heal (``--fidelity-steps``, block-local share 0.5, a check every 10 steps, 1 thread) with the
training forward in float32 and in bfloat16 (``--heal-dtype``), its held-out check and ``n6onnx validate`` on
the 256 held-out sentences of benchmarks/heal.py (never seen by calibration or healing)."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnx_ir as ir  # noqa: E402
import torch  # noqa: E402

import n6onnx  # noqa: E402
from n6onnx import io  # noqa: E402
from n6onnx.graph import canonicalize  # noqa: E402
from n6onnx.heal import executor, fakequant, targets  # noqa: E402
from n6onnx.heal import train as T  # noqa: E402
from n6onnx.heal.run import heal_file, load_data  # noqa: E402
from n6onnx.testing import zoo  # noqa: E402

from _common import hardware, write  # noqa: E402
from heal import DIMS, texts  # noqa: E402  (the same data splits)

CASES = {"phi6": ["gelu=phi6"], "bneck": ["ffn=phi-bottleneck:4/3"], "int8": []}
VARIANTS = ("eager", "no-grid-cache", "compiled-act", "bf16", "flush-denormal")
ELEMENTWISE = ("Phi6", "BiasPhi6", "ZetaLn2", "BiasZetaLn2")


class Case:
    """One student with its teacher targets, data and trainable set, as ``heal.train`` builds them."""

    def __init__(self, name: str, src, model_path, data, fq: bool):
        self.name = name
        model, original = io.load(model_path), io.load(src)
        canonicalize(original)
        self.proto, oproto = ir.to_proto(model), ir.to_proto(original)
        self.batches = load_data(data, original, dims=DIMS)
        self.fq = fakequant.plan(self.proto) if fq else {}
        names = targets.trainable(oproto, self.proto, "rewritten") if not fq else []
        self.names = sorted(set(names) | set(fakequant.trainable(self.proto, self.fq)))
        self.streams = targets.stream_points(original, self.proto)
        self.outputs = [o.name for o in self.proto.graph.output]
        self.local = targets.local_targets(self.proto, self.streams, self.outputs, self.names)
        teacher = targets.Teacher(original, self.streams + self.outputs, 2)
        self.tgt = T.Targets(teacher, lambda k: self.batches[k])
        self.train_idx, self.held_idx = T.split(self.batches, 0.1, 16)
        for k in range(len(self.batches)):  # teacher values cached before any timing
            self.tgt(k)
        self.students = {}

    def student(self, variant: str) -> executor.GraphModule:
        if variant not in self.students:
            s = executor.GraphModule(self.proto)
            s.fake_quant = self.fq
            if variant == "no-grid-cache":
                s.grids = None
            if variant == "bf16":
                s.train_dtype = torch.bfloat16
            if variant == "compiled-act":
                for op in ELEMENTWISE:
                    s.n6[op] = torch.compile(s.n6[op], dynamic=True)
            u = {n: torch.nn.Parameter(s.parameter(n).detach().clone()) for n in self.names}
            self.students[variant] = (s, u, torch.optim.Adam(list(u.values()), lr=1e-9, fused=True))
        return self.students[variant]

    def step(self, variant: str, k: int, phase: str) -> None:
        s, u, opt = self.student(variant)
        vals = {n: p * 1.0 for n, p in u.items()}  # fresh tensors per step, as the trainer's values()
        tgt = self.tgt(k)
        with _denormals(variant):
            if phase == "local":
                inject = {n: tgt[n][0].reshape(tgt[n][2]) for n in self.streams}
                out = s(self.batches[k], self.local, vals, inject)
            else:
                out = s(self.batches[k], self.streams + self.outputs, vals)
            if phase == "local":
                loss = torch.stack([T._rel_err(out[n], tgt[n]) for n in self.local]).mean()
            else:
                loss = T._loss(out, tgt, self.streams, self.outputs, "streams+output")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def evaluate(self, variant: str, batches: int) -> None:
        """A held-out check of ``batches`` batches (the held-out ones in turn), all with the same weights."""
        s, u, _ = self.student(variant)
        with torch.inference_mode(), _denormals(variant):
            vals = {n: p * 1.0 for n, p in u.items()}
            for j in range(batches):
                k = self.held_idx[j % len(self.held_idx)]
                s(self.batches[k], self.outputs[:1], vals)


@contextlib.contextmanager
def _denormals(variant: str):
    if variant != "flush-denormal":
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4),
            "n": len(xs)}


def fidelity(a, src, work: pathlib.Path, data: pathlib.Path, held: pathlib.Path) -> list[dict]:
    rows = []
    for cname in a.cases.split(","):
        path = work / f"{cname}.onnx"
        if CASES[cname]:
            n6onnx.rewrite(src, path, CASES[cname], calibrate=data, calib_samples=64, dims=DIMS)
        else:  # the int8 original: healed under fake quantization, re-quantized on write-out
            n6onnx.rewrite(src, path, [], quantize="int8")
        for dtype in ("float32", "bfloat16"):
            cfg = T.HealConfig(steps=a.fidelity_steps, threads=1, eval_every=10, local=0.5, holdout_batches=2,
                               train_dtype=dtype)
            out = work / f"{cname}-{dtype}.onnx"
            rep = heal_file(path, src, data, out, dims=DIMS, config=cfg)
            v = n6onnx.validate(src, out, dims=DIMS, threads=1, text=held).to_json()
            emb = v["outputs"]["last_hidden_state"]["embedding"]
            rows.append({"case": cname, "train_dtype": dtype, "steps": rep.steps, "heal_seconds": round(rep.seconds, 1),
                         "check_start": round(rep.start, 6), "check_best": round(rep.best, 6),
                         "checks": [c[2] for c in rep.curve], "heldout_cosine": round(emb["cosine_mean"], 6),
                         "heldout_nn": emb["nn_agreement"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each: every variant once)")
    ap.add_argument("--steps", type=int, default=3, help="steps of each kind per variant per round")
    ap.add_argument("--samples", type=int, default=160, help="DATA sentences (8 x 64 batches; last 10%% held out)")
    ap.add_argument("--eval-batches", type=int, default=16, help="batches of one held-out check (heal's most)")
    ap.add_argument("--cases", default="phi6,bneck,int8")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="heal_speed")
    ap.add_argument("--fidelity", action="store_true", help="bf16's effect on a fixed-step heal instead of timing")
    ap.add_argument("--fidelity-steps", type=int, default=60)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        train, _ = texts(a.samples)
        data = work / "data.txt"
        data.write_text("\n".join(train))
        if a.fidelity:
            held = work / "held.txt"
            held.write_text("\n".join(texts(a.samples)[1]))
            write(a.out if a.out != "heal_speed" else "heal_speed_fidelity",
                  {"hardware": hardware(), "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                   "batch": DIMS, "method": (f"{a.samples} DATA sentences (8 x 64 batches, the last 2 held out for "
                                            "the heal's checks), calibration on 64; fixed-step heal, float32 vs "
                                            "bfloat16 training forward; validate on 256 held-out sentences"),
                   "rows": fidelity(a, src, work, data, held)})
            return
        for cname in a.cases.split(","):
            path = src
            if CASES[cname]:
                path = work / f"{cname}.onnx"
                n6onnx.rewrite(src, path, CASES[cname], calibrate=data, calib_samples=64, dims=DIMS)
            case = Case(cname, src, path, data, fq=cname == "int8")
            variants = [v for v in a.variants.split(",") if v != "no-grid-cache" or case.fq]
            compile_s = None
            if "compiled-act" in variants:  # the first step compiles: timed on its own
                compile_s = round(_timed(lambda: case.step("compiled-act", case.train_idx[0], "global"))[0], 2)
            res = {v: {"global": ([], []), "local": ([], []), "eval_batch": ([], [])} for v in variants}
            for v in variants:  # warm-up: one of each, untimed
                case.step(v, case.train_idx[0], "global")
                case.step(v, case.train_idx[0], "local")
                case.evaluate(v, 1)
            for r in range(a.rounds):
                for v in variants:
                    for j in range(a.steps):
                        k = case.train_idx[(r * a.steps + j) % len(case.train_idx)]
                        for phase in ("global", "local"):
                            w, c = _timed(lambda: case.step(v, k, phase))
                            res[v][phase][0].append(w)
                            res[v][phase][1].append(c)
                    w, c = _timed(lambda: case.evaluate(v, a.eval_batches))
                    res[v]["eval_batch"][0].append(w / a.eval_batches)
                    res[v]["eval_batch"][1].append(c / a.eval_batches)
            row = {"case": cname, "passes": CASES[cname], "fake_quantized": len(case.fq), "trainable": len(case.names),
                   "compile_seconds": compile_s,
                   "variants": {v: {kind: {"wall_s": _stats(x[0]), "cpu_s": _stats(x[1])} for kind, x in d.items()}
                                for v, d in res.items()}}
            base = row["variants"]["eager"]
            row["steps_per_s_median"] = {v: {kind: round(1 / d[kind]["wall_s"]["median"], 3) for kind in d}
                                         for v, d in row["variants"].items()}
            row["speedup_vs_eager_median_wall"] = {
                v: {kind: round(base[kind]["wall_s"]["median"] / d[kind]["wall_s"]["median"], 3) for kind in d}
                for v, d in row["variants"].items()}
            rows.append(row)
            print(cname, row["speedup_vs_eager_median_wall"], row["steps_per_s_median"]["eager"], flush=True)
    write(a.out, {"hardware": hardware(), "threads": a.threads, "batch": DIMS,
                  "method": (f"one process; {a.rounds} interleaved rounds, each running every variant for {a.steps} "
                             f"global + local steps and one held-out check of {a.eval_batches} batches with the "
                             "same weights (per-batch time = check / batches); medians and min/max of wall (perf_counter) and process CPU seconds; "
                             "calibration: 64 sentences; compile time excluded from the step times and given "
                             "as compile_seconds"),
                  "note": a.note, "rows": rows})


if __name__ == "__main__":
    main()
