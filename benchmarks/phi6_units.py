"""How the error of calibrated gelu=phi6 is spread over MiniLM's FFN units: is it a few units (which could stay
on GELU) or all of them (the activation's shape)? all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20).

    python benchmarks/phi6_units.py [--sentences 256]

For each FFN, the GELU's input z is captured by onnxruntime on corpus sentences 0..N-1 (real tokens only, as
calibration fits), and every unit gets calibration's own per-unit fit alpha * Phi6(a z + c) + beta of GELU(z)
(``n6onnx.calibrate.fit.fit_affine_activation``). Reported per layer: the units' R^2 (median, min), the error
the fit sends into the residual stream relative to the FFN's own output variance (e W2 against GELU(z) W2, no
refit), and the share of that error energy (per unit: var(e_j) |W2_j|^2) carried by the 8 / 32 / 128 worst
units. Writes benchmarks/results/phi6_units_minilm.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx import calibrate as cal  # noqa: E402
from n6onnx import runtime  # noqa: E402
from n6onnx.calibrate.fit import fit_affine_activation, gelu  # noqa: E402
from n6onnx.calibrate import ACTS  # noqa: E402

from _common import minilm_split, write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=256)
    a = ap.parse_args()
    src, calib, _ = minilm_split(ROOT / "build" / "phi6_units", a.sentences, 0)
    m = onnx.load(str(src))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    users: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    gelus = [n for n in m.graph.node if n.op_type == "Gelu"]
    w2 = [inits[users[g.output[0]][0].input[1]] for g in gelus]  # Gelu -> MatMul(., W2)
    names = [g.input[0] for g in gelus]
    for v in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None))
    sess = runtime.session_for(m)
    batches = cal.load_batches(str(calib), onnx.load(str(src)), dims={"batch": 8, "seq": 64})
    z = [[] for _ in gelus]
    for feed in batches:
        real = feed["attention_mask"].reshape(-1).astype(bool)
        for i, t in enumerate(sess.run(names, feed)):
            z[i].append(t.reshape(-1, t.shape[-1])[real])
    act = ACTS["Phi6"]
    layers = []
    for i in range(len(gelus)):
        zi = np.concatenate(z[i])
        g = gelu(zi)
        f = fit_affine_activation(zi, g, act, max_rows=4096)
        e = f.alpha * act(f.a * zi + f.c) + f.beta - g
        energy = np.sort(e.var(0) * (w2[i] ** 2).sum(1))[::-1]
        share = np.cumsum(energy) / energy.sum()
        layers.append({"layer": i, "tokens": int(len(zi)), "units": int(zi.shape[1]),
                       "r2_median": float(np.median(f.r2)), "r2_min": float(f.r2.min()),
                       "stream_error_vs_ffn_output": float((e @ w2[i]).var(0).sum() / (g @ w2[i]).var(0).sum()),
                       "worst_share": {str(k): float(share[k - 1]) for k in (8, 32, 128)}})
        l = layers[-1]
        print(f"layer {i}: {l['tokens']} tokens, R^2 median {l['r2_median']:.4f} min {l['r2_min']:.3f}, "
              f"error/output {l['stream_error_vs_ffn_output']:.4f}, worst 8/32/128 units carry "
              + " / ".join(f"{v:.2f}" for v in l["worst_share"].values()), flush=True)
    write("phi6_units_minilm", {"benchmark": "phi6_units", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, "
                                "opset 20", "sentences": a.sentences, "method": __doc__.split("\n\n")[2].replace("\n", " "),
                                "layers": layers})


if __name__ == "__main__":
    main()
