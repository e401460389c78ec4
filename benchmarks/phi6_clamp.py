"""Does gelu=phi6 on MiniLM use Phi6's clamp? Phi6(x) = c^2 - c + 1 with c = clamp(x, -2, 2): where no unit of an
FFN leaves [-2, 2], the FFN (up projection, Phi6, down projection) is a quadratic polynomial of its input, whatever
its width. all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20), batch 8 x 64.

    python benchmarks/phi6_clamp.py [--healed PHI6_HEALED.onnx]

The model: `rewrite --pass gelu=phi6 --calibrate` on corpus sentences 0..255, and with ``--healed`` also a healed
gelu=phi6 model of the same export. On held-out sentences 1000..1255, onnxruntime captures every BiasPhi6's input
plus bias (the activation's argument u, real tokens only). Reported per model and BiasPhi6 node (each layer's FFN,
and the outlier detours calibration splits off): the share of (token, unit)
values with |u| > 2 (where the clamp acts), the share of units that clamp on at least 1% of the tokens, and u's
range. Then the model with every clamp removed (BiasPhi6 replaced by u*u - u + 1, standard ops) is validated
against the fp32 original beside the model itself and ORT's per-channel int8 of the original (n6onnx validate,
mean-pooled embedding cosine and nearest-neighbour agreement; deterministic, one run). Writes
benchmarks/results/phi6_clamp_minilm.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx import calibrate as cal  # noqa: E402
from n6onnx import quantize as Q  # noqa: E402
from n6onnx.calibrate import collect  # noqa: E402
from n6onnx.feeds import parse_dims  # noqa: E402

from _common import fidelity, minilm_split, write  # noqa: E402

DIMS = ["batch=8", "seq=64"]


def unclamped(m: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``m`` with every BiasPhi6(x, b) as u = x + b; u*u - u + 1 (Phi6 without its clamp)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    one = "phi6_clamp_one"
    out.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    nodes = []
    for n in out.graph.node:
        if n.op_type != "BiasPhi6":
            nodes.append(n)
            continue
        u, y = n.output[0] + "_u", n.output[0]
        nodes += [helper.make_node("Add", list(n.input[:2]), [u]),
                  helper.make_node("Mul", [u, u], [u + "2"]),
                  helper.make_node("Sub", [u + "2", u], [u + "d"]),
                  helper.make_node("Add", [u + "d", one], [y])]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def clamp_use(m: onnx.ModelProto, batches) -> list[dict]:
    """Per BiasPhi6 node (graph order; a layer's outlier detour, where calibration made one, is a node of its own): how often its argument u = x + b leaves [-2, 2] on ``batches``' real tokens."""
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type == "BiasPhi6"]
    rows = collect.collect(m, [n.input[0] for n in nodes], batches)
    layers = []
    for n in nodes:
        u = rows[n.input[0]] + inits[n.input[1]].reshape(1, -1)
        out = np.abs(u) > 2
        layers.append({"node": n.name or n.output[0], "units": int(u.shape[1]), "tokens": int(len(u)),
                       "clamped_share": float(out.mean()), "units_clamping_1pct": float((out.mean(0) >= 0.01).mean()),
                       "u_min": float(u.min()), "u_max": float(u.max()),
                       "u_abs_p99": float(np.quantile(np.abs(u), 0.99))})
    return layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--healed", type=pathlib.Path, help="a healed gelu=phi6 model of the same export")
    a = ap.parse_args()
    if a.healed is not None and not a.healed.is_file():
        ap.error(f"--healed {a.healed}: no such file")
    work = ROOT / "build" / "phi6_clamp"
    src, calib, held = minilm_split(work, 256, 256)
    dims = parse_dims(DIMS)
    models = {"gelu=phi6 calibrated (256 sentences)": work / "phi6_calibrated.onnx"}
    n6onnx.rewrite(src, models["gelu=phi6 calibrated (256 sentences)"], ["gelu=phi6"], calibrate=calib, dims=dims)
    if a.healed:
        models["gelu=phi6 healed"] = a.healed

    def embedding(p: pathlib.Path) -> dict:
        return fidelity(src, p, {"text": held})

    Q.quantize(src, work / "int8.onnx", "int8")
    result = {"ort_int8_per_channel": embedding(work / "int8.onnx"), "models": {}}
    held_batches = cal.load_batches(str(held), onnx.load(str(src)), dims=dims)
    for name, p in models.items():
        m = onnx.load(str(p))
        flat = work / (p.stem + "_unclamped.onnx")
        onnx.save(unclamped(m), str(flat))
        layers = clamp_use(m, held_batches)
        result["models"][name] = {"layers": layers, "fidelity": embedding(p), "fidelity_unclamped": embedding(flat)}
        r = result["models"][name]
        print(f"{name}: clamped share per BiasPhi6 (units) " + " ".join(f"{l['clamped_share']:.2e} ({l['units']})" for l in layers)
              + f"; cosine {r['fidelity']['cosine']:.5f} / NN {r['fidelity']['nn']:.3f}, without the clamp "
              f"{r['fidelity_unclamped']['cosine']:.5f} / {r['fidelity_unclamped']['nn']:.3f}", flush=True)
    print(f"ORT per-channel int8 of the original: {result['ort_int8_per_channel']}")
    write("phi6_clamp_minilm", {"benchmark": "phi6_clamp", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                                "dims": DIMS, "heldout": "corpus sentences 1000..1255",
                                "method": __doc__.split("\n\n")[2].replace("\n", " "), **result})


if __name__ == "__main__":
    main()
