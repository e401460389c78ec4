"""Where dynamic int8's fidelity loss on all-MiniLM-L6-v2 comes from, and whether SmoothQuant's migration lowers it.

    python benchmarks/int8_error_sources.py

Fidelity only (no timing). The original is the dynamic-axes dynamo export (opset 20); every variant is validated
by n6onnx validate on corpus sentences 1000..1255 at batch 8 x 64 (mean-pooled embedding cosine, NN agreement).
- ``dynamic``: onnxruntime's quantize_dynamic (QInt8 weights per channel, the activations quantized per tensor at
  run time by DynamicQuantizeLinear), on all weight MatMuls, then on one class at a time (Q/K/V projections,
  attention output projections, FFN up projections, FFN down projections), the others left float, and on all
  but the FFN down projections;
- ``weights only``: each class's weights rounded to the same per-channel symmetric int8 grid in float (no
  activation quantization), to separate weight rounding from activation rounding;
- ``smoothquant``: SmoothQuant's migration (Xiao et al., 2023) before quantize_dynamic on all classes but the
  attention output: per input channel j of each MatMul group sharing an input, s_j = max|X_j|^alpha /
  max|W_j,:|^(1 - alpha) with the activation maxima from calibration sentences 0..255, W's rows scaled by s and an
  explicit Mul by 1/s on the shared input (exact in float; a post-LN block's LayerNorm output is also its
  residual, so the scale cannot be folded into the LayerNorm).
Writes benchmarks/results/int8_error_sources_minilm.json.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper as nh
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx.calibrate import load_batches  # noqa: E402

from _common import fidelity, minilm_split, side_parser, write  # noqa: E402

DIMS = {"batch": 8, "seq": 64}
CLASSES = ("qkv", "attn_out", "ffn_up", "ffn_down")


def classify(m: onnx.ModelProto) -> dict[str, list]:
    """The weight MatMuls by role, from their weight shapes and what produces their input."""
    inits = {t.name: t for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    d = next(int(t.dims[0]) for t in m.graph.initializer if len(t.dims) == 2 and t.dims[0] == t.dims[1])
    out: dict[str, list] = {c: [] for c in CLASSES}
    for n in m.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        rows, cols = inits[n.input[1]].dims
        if (rows, cols) != (d, d):
            out["ffn_up" if rows == d else "ffn_down"].append(n)
        else:
            p = prod.get(n.input[0])
            out["attn_out" if p is not None and p.op_type in ("Reshape", "Transpose") else "qkv"].append(n)
    return out


def dynamic(src, dst, nodes) -> pathlib.Path:
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_quantize=[n.name for n in nodes])
    return dst


def weights_only(src, dst, nodes) -> pathlib.Path:
    m = onnx.load(src)
    names = {n.input[1] for n in nodes}
    for t in m.graph.initializer:
        if t.name in names:
            a = nh.to_array(t)
            step = np.abs(a).max(0, keepdims=True) / 127
            t.CopyFrom(nh.from_array((np.clip(np.round(a / step), -127, 127) * step).astype(np.float32), t.name))
    onnx.save(m, dst)
    return dst


def smoothed(src, dst, calib, alpha: float, classes) -> pathlib.Path:
    m = onnx.load(src)
    inits = {t.name: t for t in m.graph.initializer}
    groups: dict[str, list] = {}
    for c, nodes in classify(m).items():
        for n in nodes if c in classes else ():
            groups.setdefault(n.input[0], []).append(n)
    probe = onnx.load(src)
    probe.graph.output.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in groups)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = {x: 0.0 for x in groups}
    for b in load_batches(str(calib), onnx.load(src), dims=DIMS):
        mask = b["attention_mask"].astype(bool)
        for x, o in zip(groups, sess.run(list(groups), b)):
            amax[x] = np.maximum(amax[x], np.abs(o[mask]).max(0))
    for k, (x, nodes) in enumerate(groups.items()):
        ws = [nh.to_array(inits[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(1) for w in ws], 0)
        s = (np.maximum(amax[x], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)).astype(np.float32)
        for n, w in zip(nodes, ws):
            inits[n.input[1]].CopyFrom(nh.from_array(w * s[:, None], n.input[1]))
        m.graph.initializer.append(nh.from_array(1 / s, f"smooth_{k}_inv"))
        m.graph.node.append(helper.make_node("Mul", [x, f"smooth_{k}_inv"], [f"smooth_{k}"], name=f"smooth_{k}"))
        for n in nodes:
            n.input[0] = f"smooth_{k}"
    model = ir.from_proto(m)
    model.graph.sort()
    onnx.save(ir.to_proto(model), dst.with_suffix(".float.onnx"))
    return dynamic(dst.with_suffix(".float.onnx"), dst, [n for ns in groups.values() for n in ns])


def main() -> None:
    ap = side_parser(__doc__, "int8_error_sources", "int8_error_sources_minilm")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    a = ap.parse_args()
    work = a.workdir
    src, calib, held = minilm_split(work, 256, 256)
    classes = classify(onnx.load(src))
    rows = []

    def row(kind, which, path, **extra):
        r = {"kind": kind, "quantized": which, **extra, **fidelity(src, path, {"text": held}, DIMS)}
        rows.append(r)
        print(f"{kind:12s} {which:28s} cos {r['cosine']:.5f} NN {r['nn']:.3f}", flush=True)

    everything = [n for ns in classes.values() for n in ns]
    row("dynamic", "all", dynamic(src, work / "all.onnx", everything))
    for c in CLASSES:
        row("dynamic", c, dynamic(src, work / f"dyn-{c}.onnx", classes[c]), matmuls=len(classes[c]))
    keep = ("qkv", "attn_out", "ffn_up")  # all but the FFN down projections, whose input is the GELU's output
    row("dynamic", "all but ffn_down", dynamic(src, work / "no-down.onnx", [n for c in keep for n in classes[c]]))
    for c in CLASSES:
        row("weights only", c, weights_only(src, work / f"w-{c}.onnx", classes[c]))
    mixed = ("qkv", "ffn_up", "ffn_down")
    row("dynamic", "qkv, ffn_up, ffn_down", dynamic(src, work / "mixed.onnx", [n for c in mixed for n in classes[c]]))
    for alpha in a.alphas:
        row("smoothquant", "qkv, ffn_up, ffn_down", smoothed(src, work / f"sq{alpha}.onnx", calib, alpha, mixed),
            alpha=alpha)
    write(a.name, {"benchmark": "int8_error_sources", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                   "dims": DIMS, "held_out": "corpus sentences 1000..1255", "onnxruntime": ort.__version__,
                   "method": __doc__.split("\n\n", 2)[2].strip(), "rows": rows})


if __name__ == "__main__":
    main()
