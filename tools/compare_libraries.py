#!/usr/bin/env python3
"""Bitwise comparison of two builds of the n6onnx custom-op library (e.g. before and after a
refactoring of custom_ops/): every op of n6onnx.ops x its dtypes x (its contract samples, or for
the activations a set of shapes with and without bias, inf / NaN included), run with library A and
with library B, outputs compared bit for bit. On the CPU provider each ISA level
(N6ONNX_ISA=generic / avx2 / the host's best) runs in its own process, because the library picks
its ISA once per process; --provider cuda compares two libn6ops_cuda.so builds on
CUDAExecutionProvider (onnxruntime-gpu; TF32 off).

    python3 tools/compare_libraries.py OLD/libn6ops.so NEW/libn6ops.so
    python3 tools/compare_libraries.py --provider cuda OLD/libn6ops_cuda.so NEW/libn6ops_cuda.so

Exit status 0 when every output is bit-identical; the differences are listed otherwise. No
independent reference is involved: this checks "behaviour unchanged", the op tests check
"behaviour right".
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ISAS = ("generic", "avx2", "host")
SHAPES = [(0,), (1,), (7,), (1031,), (3, 5, 33), (70000,)]
BIAS_SHAPES = [(0, 8), (1, 1), (3, 1031), (64, 5), (2, 3, 33), (300, 257)]


def cases():
    import numpy as np
    from onnx import TensorProto, helper

    from n6onnx.ops import DOMAIN, REGISTRY, Sample

    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        for dtype in spec.dtypes:
            if spec.elementwise:
                rng = np.random.default_rng(0)
                samples = []
                for shape in BIAS_SHAPES if "bias" in spec.inputs else SHAPES:
                    x = rng.uniform(-4, 4, shape).astype(np.float32)
                    flat = x.reshape(-1)
                    flat[: min(6, flat.size)] = [np.nan, np.inf, -np.inf, -2.0, 2.0, 5 / 12][: min(6, flat.size)]
                    feeds = {"X": x}
                    if "bias" in spec.inputs:
                        feeds["bias"] = rng.uniform(-1, 1, shape[-1]).astype(np.float32)
                    samples.append(Sample(f"{shape}", feeds))
            else:
                samples = spec.samples(dtype)
            for s in samples:
                feeds = dict(s.feeds)
                et = helper.np_dtype_to_tensor_dtype(np.dtype("float32" if dtype == "bfloat16" else dtype))
                if dtype != "bfloat16":
                    feeds = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
                inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                          for k, v in feeds.items()]
                names = [n if n in feeds else "" for n in spec.inputs]
                while names and names[-1] == "":
                    names.pop()
                nodes = []
                if dtype == "bfloat16":  # numpy has no bfloat16: float32 IO, Casts around the node
                    for n in [n for n in names if n]:
                        nodes.append(helper.make_node("Cast", [n], [n + "_b"], to=TensorProto.BFLOAT16))
                    names = [n + "_b" if n else n for n in names]
                    nodes.append(helper.make_node(spec.name, names, ["Yb"], domain=DOMAIN, **s.attrs))
                    nodes.append(helper.make_node("Cast", ["Yb"], ["Y"], to=TensorProto.FLOAT))
                else:
                    nodes.append(helper.make_node(spec.name, names, ["Y"], domain=DOMAIN, **s.attrs))
                g = helper.make_graph(nodes, "cmp", inputs, [helper.make_tensor_value_info("Y", et, None)])
                m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                                      ir_version=10)
                yield f"{name}/{dtype}/{s.id}", m.SerializeToString(), feeds


def run_one(lib_a: str, lib_b: str, provider: str) -> list[str]:
    import numpy as np
    import onnxruntime as ort

    providers = ([("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"] if provider == "cuda"
                 else ["CPUExecutionProvider"])

    def sess(model, lib):
        so = ort.SessionOptions()
        so.register_custom_ops_library(lib)
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        return ort.InferenceSession(model, so, providers=providers)

    diffs, n = [], 0
    for cid, model, feeds in cases():
        outs = []
        for lib in (lib_a, lib_b):
            try:
                outs.append(sess(model, lib).run(None, feeds)[0])
            except Exception as e:  # noqa: BLE001  (both libraries must fail alike)
                outs.append(f"error: {str(e).splitlines()[0][:200]}")
        n += 1
        a, b = outs
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                diffs.append(f"{cid}: {a!r:.200} vs {b!r:.200}")
        elif a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
            diffs.append(f"{cid}: outputs differ (max |diff| {np.nanmax(np.abs(a.astype(np.float64) - b)):.3g})")
    print(f"{n} cases, {len(diffs)} differ")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lib_a")
    ap.add_argument("lib_b")
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--isa", choices=ISAS, help=argparse.SUPPRESS)  # the per-ISA subprocess
    args = ap.parse_args(argv)
    for lib in (args.lib_a, args.lib_b):
        if not os.path.isfile(lib):
            ap.error(f"no such library: {lib}")
    if args.provider == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            ap.error(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
    if args.isa or args.provider == "cuda":
        diffs = run_one(args.lib_a, args.lib_b, args.provider)
        for d in diffs:
            print("  " + d)
        if args.provider == "cuda":
            print("bit-identical" if not diffs else "DIFFERENCES FOUND")
        return 1 if diffs else 0
    rc = 0
    for isa in ISAS:
        env = dict(os.environ)
        env.pop("N6ONNX_ISA", None)
        if isa != "host":
            env["N6ONNX_ISA"] = isa
        print(f"== N6ONNX_ISA={isa}", flush=True)
        rc |= subprocess.run([sys.executable, __file__, args.lib_a, args.lib_b, "--isa", isa], env=env).returncode
    print("bit-identical" if rc == 0 else "DIFFERENCES FOUND")
    return rc


if __name__ == "__main__":
    sys.exit(main())
