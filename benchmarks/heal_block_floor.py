"""Where one rewritten FFN block of all-MiniLM-L6-v2 stops improving, and why (issue 16's gaps).

    python benchmarks/heal_block_floor.py [--layer 2] [--seconds 90]
    python benchmarks/heal_block_floor.py --family bottleneck --name heal_block_floor_bottleneck_minilm

One FFN block, the original's GELU replaced by Phi6 at the same width (1536 units), fitted block-locally
to the original block's output on the original's input (the block-local problem of a heal): the
closed-form start (calibration's per-unit affine fit, ``calibrate.fit.fit_affine_activation``, folded into
the projections), then each optimiser for the same wall time on the same training tokens:
- ``adam``: Adam on all four tensors (up and down projections and biases), at several steps;
- ``varpro``: variable projection: Adam on the up projection and its bias only, the down projection and
  its bias solved exactly (least squares on 16384 training tokens) at the start and every 50 steps, so
  the ill-conditioned down projection (rows of norm ~400 after the fold) never trains by gradient;
- ``varpro_2x``: the same with twice the units (each unit copied with its input scaled by 1.5 and shifted
  by 0.5, so the copy sits on another part of Phi6's parabola), i.e. twice the capacity at twice the cost.
``--family bottleneck``: the same block keeps GELU but only K of its 1536 units (ffn=phi-bottleneck:4/3 keeps
512): the units chosen by the pass's forward selection (``calibrate.fit.greedy_units``; unweighted here, on
the 16384 training tokens the least squares also use), the down projection and bias by least squares (the pass's refit), then Adam on all four
tensors, for K = 512, 768 (ratio 2) and 1024 (ratio 8/3).
Error: mean squared error over the block's output on tokens of 256 held-out sentences (corpus 1000..1255),
relative to the output's variance. Training tokens: corpus sentences 0..999 and 1256..2255 (8 x 64
batches, real tokens only). 2 threads. Writes benchmarks/results/NAME.json (``--name``, default
heal_block_floor_minilm).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from n6onnx.calibrate import load_batches  # noqa: E402
from n6onnx.calibrate.fit import fit_affine_activation, gelu, greedy_units  # noqa: E402
from n6onnx.graph import proto_consumers  # noqa: E402
from n6onnx.testing import corpus, zoo  # noqa: E402

from _common import write  # noqa: E402

RUNS = (("adam", 1e-4, 1), ("adam", 3e-5, 1), ("varpro", 1e-4, 1), ("varpro", 3e-5, 1), ("varpro_2x", 3e-5, 2))
BOTTLENECK_RUNS = (("adam", 1e-4, 512), ("adam", 3e-5, 512), ("adam", 3e-5, 768), ("adam", 3e-5, 1024))


def phi6_np(t):
    c = np.clip(t, -2, 2)
    return c * c - c + 1


def hidden(x, w1, c1):
    c = torch.clamp(x @ w1 + c1, -2, 2)
    return c * c - c + 1


def hidden_gelu(x, w1, c1):
    return torch.nn.functional.gelu(x @ w1 + c1)


def ffn_block(m: onnx.ModelProto, layer: int):
    """(W1, b1, W2, b2, input name, output name) of the layer-th GELU FFN (MatMul, Add, Gelu, MatMul, Add)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    users = proto_consumers(m)
    g = [n for n in m.graph.node if n.op_type == "Gelu"][layer]
    add1 = prod[g.input[0]]
    mm1 = prod[next(i for i in add1.input if i not in inits)]
    mm2 = users[g.output[0]][0]
    add2 = users[mm2.output[0]][0]
    b1 = next(inits[i] for i in add1.input if i in inits)
    b2 = next(inits[i] for i in add2.input if i in inits)
    return inits[mm1.input[1]], b1, inits[mm2.input[1]], b2, mm1.input[0], add2.output[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=90.0, help="wall time per optimiser")
    ap.add_argument("--name", default="heal_block_floor_minilm")
    ap.add_argument("--family", choices=("phi6", "bottleneck"), default="phi6",
                    help="Phi6 at full width, or GELU at a bottleneck's width")
    ap.add_argument("--conditions", default="dev VM (2-core AMD EPYC), nothing else running")
    a = ap.parse_args()
    torch.set_num_threads(2)
    src = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    m = onnx.load(src)
    W1, b1, W2, b2, x_name, y_name = ffn_block(m, a.layer)
    for nm in (x_name, y_name):
        m.graph.output.append(onnx.helper.make_tensor_value_info(nm, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    sents = corpus.sentences()

    def tokens(texts):
        with tempfile.TemporaryDirectory() as tmp:
            p = pathlib.Path(tmp) / "d.txt"
            p.write_text("\n".join(texts))
            batches = load_batches(str(p), onnx.load(src), dims={"batch": 8, "seq": 64})
        xs, ys = [], []
        for b in batches:
            x, y = sess.run([x_name, y_name], b)
            mask = b["attention_mask"].astype(bool)
            xs.append(x[mask])
            ys.append(y[mask])
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    Xt, Yt = tokens(sents[:1000] + sents[1256:2256])
    Xh, Yh = tokens(sents[1000:1256])
    yvar = float(((Yh - Yh.mean(0)) ** 2).mean())
    act = hidden_gelu if a.family == "bottleneck" else hidden
    if a.family == "phi6":  # calibration's per-unit affine fit, folded into the projections
        fit = fit_affine_activation(Xt.numpy() @ W1 + b1, gelu, phi6_np)
        w1f = torch.from_numpy((W1 * fit.a).astype(np.float32))
        c1f = torch.from_numpy((b1 * fit.a + fit.c).astype(np.float32))
        w2f = torch.from_numpy((fit.alpha[:, None] * W2).astype(np.float32))
        c2f = torch.from_numpy((b2 + fit.beta @ W2).astype(np.float32))
    rows = torch.randperm(len(Xt), generator=torch.Generator().manual_seed(0))[:16384]  # for every exact solve

    def err(w1, c1, w2, c2) -> float:
        with torch.no_grad():
            return float(((act(Xh, w1, c1) @ w2 + c2 - Yh) ** 2).mean()) / yvar

    def solve(w1, c1, lam=1e-4):
        """The down projection and bias by least squares on training tokens (a tiny ridge for conditioning)."""
        with torch.no_grad():
            h, t = act(Xt[rows], w1, c1).double(), Yt[rows].double()
            hm, tm = h.mean(0), t.mean(0)
            hc = h - hm
            gram = hc.T @ hc
            gram += lam * torch.trace(gram) / len(gram) * torch.eye(len(gram), dtype=gram.dtype)
            w2 = torch.linalg.solve(gram, hc.T @ (t - tm))
            return w2.float(), (tm - hm @ w2).float()

    def units(k: int) -> np.ndarray:
        """The k GELU units ffn=phi-bottleneck keeps: forward selection on the solve's training tokens."""
        return greedy_units(np.asarray(hidden_gelu(Xt[rows], torch.tensor(W1), torch.tensor(b1))),
                            Yt[rows].numpy(), k)

    def run(mode: str, lr: float, width: int) -> dict:
        torch.manual_seed(0)
        if a.family == "bottleneck":  # width = units kept
            sel = units(width)
            w1, c1 = torch.from_numpy(W1[:, sel].copy()), torch.from_numpy(b1[sel].copy())
        else:
            w1 = torch.cat([w1f] + [w1f * 1.5] * (width - 1), 1)
            c1 = torch.cat([c1f] + [c1f * 1.5 + 0.5] * (width - 1))
        up = [w1.clone().requires_grad_(True), c1.clone().requires_grad_(True)]
        w2, c2 = solve(w1, c1) if mode != "adam" or a.family == "bottleneck" else (w2f.clone(), c2f.clone())
        down = [w2.requires_grad_(mode == "adam"), c2.requires_grad_(mode == "adam")]
        start = err(*up, *down)
        opt = torch.optim.Adam(up + (down if mode == "adam" else []), lr=lr)
        gen = torch.Generator().manual_seed(1)
        t0, step, curve = time.perf_counter(), 0, []
        while time.perf_counter() - t0 < a.seconds:
            idx = torch.randint(len(Xt), (512,), generator=gen)
            loss = ((act(Xt[idx], *up) @ down[0] + down[1] - Yt[idx]) ** 2).mean() / yvar
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if mode != "adam" and step % 50 == 0:
                for p, v in zip(down, solve(*[u.detach() for u in up])):
                    p.data.copy_(v)
            if step % 200 == 0:
                curve.append([step, round(time.perf_counter() - t0, 1), err(*[u.detach() for u in up], *down)])
        final = err(*[u.detach() for u in up], *[d.detach() for d in down])
        out = {"optimiser": mode, "lr": lr, "units": int(w1.shape[1]), "steps": step, "start": start,
               "held_rel_err": final, "curve": curve}
        print(f"{mode:10s} lr {lr:g} units {w1.shape[1]} steps {step}: {start:.6f} -> {final:.6f}", flush=True)
        return out

    if a.family == "bottleneck":
        start_fold = start_ls = None  # each width's start (selection + least squares) is its run's "start"
    else:
        start_fold = err(w1f, c1f, w2f, c2f)
        start_ls = err(w1f, c1f, *solve(w1f, c1f))
        print(f"closed form {start_fold:.6f}; down projection by least squares {start_ls:.6f}", flush=True)
    runs = [run(mode, lr, width) for mode, lr, width in (BOTTLENECK_RUNS if a.family == "bottleneck" else RUNS)]
    write(a.name, {
        "benchmark": "heal_block_floor", "family": a.family, "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
        "layer": a.layer, "tokens": {"train": len(Xt), "held_out": len(Xh)}, "conditions": a.conditions,
        "method": __doc__.split("\n\n", 2)[2].strip(), "seconds_per_optimiser": a.seconds,
        "closed_form": start_fold, "closed_form_down_by_least_squares": start_ls, "runs": runs})


if __name__ == "__main__":
    main()
