"""Sequential closed-form refit of the trained output projections on the student's own stream.

Calibration fits each block on the rewritten model's own input, in graph order, so each block
compensates the errors of the blocks before it (``calibrate.layer_target``). Block-local training
(each block from the teacher's input) undoes that compensation: held-out fidelity falls although
every block reconstructs its own output better. This restores it without training: every trained
output projection (W, b) that writes into a residual-stream point (an FFN's down projection, an
attention output projection) is refitted in graph order by the same ridge least squares as
calibration (``calibrate.fit.ridge_refit``, shrunk towards the current weights, row weights 1 / var
of the teacher's stream), on the student's own input with every earlier projection already
refitted, to the target  P + (teacher stream - student stream)  (P the projection's current output,
bias included): what it must add so that the stream equals the teacher's. Deterministic and cheap:
one partial forward per projection and batch, and one small linear solve each.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from ..calibrate import inverse_variance
from ..calibrate.fit import ridge_refit
from ..graph import proto_consumers
from .targets import bias_partners


@dataclasses.dataclass(frozen=True)
class Writer:
    """A trained projection x @ W + b (``out``: the value with the bias added) whose output is
    added into the stream point ``stream``."""
    weight: str
    bias: str
    transposed: bool
    x: str
    out: str
    stream: str


def writers(proto: onnx.ModelProto, names: Sequence[str], streams: Sequence[str]) -> list[Writer]:
    """The trained (W, b) pairs whose output reaches a stream point through Adds only (at most
    three), in graph order of their stream point."""
    train, points = set(names), list(streams)
    consumers = proto_consumers(proto)
    out = []
    for b, (w, tr, x) in bias_partners(proto, names).items():
        if w not in train:
            continue
        adder = next((n for n in consumers.get(b, ()) if n.op_type in ("Add", "Gemm") and n.domain in ("", "ai.onnx")),
                     None)
        if adder is None:
            continue
        v = adder.output[0]
        for _ in range(3):
            if v in points:
                out.append(Writer(w, b, tr, x, adder.output[0], v))
                break
            nxt = [n for n in consumers.get(v, ()) if n.op_type == "Add" and n.domain in ("", "ai.onnx")]
            if len(nxt) != 1:
                break
            v = nxt[0].output[0]
    return sorted(out, key=lambda r: (points.index(r.stream), r.out))


def refit(student, writers_: Sequence[Writer], values: dict[str, torch.Tensor], batches, idx: Sequence[int],
          teacher_stream: Callable[[int], dict], keep_rows: Callable[[dict, tuple], np.ndarray | None],
          min_rows: int = 0, deadline: float | None = None) -> dict[str, torch.Tensor]:
    """New values for every writer's (W, b), fitted in graph order on the batches ``idx`` (the
    first ones holding ``min_rows`` real tokens; all with 0). ``values``: the student's current
    trained values (the result starts from a copy). ``teacher_stream(k)``: {stream point: the
    teacher's array} of batch k. Each batch's student stream at the previous writer's stream point
    is kept (computed with the refitted weights) and injected, so each fit runs one block. Past
    ``deadline`` (a ``time.perf_counter()`` value) no further writer starts: the ones not reached
    keep their values (an earlier writer refitted and a later one as it was is still a consistent
    candidate: the caller checks it like any other)."""
    vals = dict(values)
    base: dict[int, tuple[str, torch.Tensor]] = {}  # batch -> (stream point, student value) before this writer
    used: list[int] | None = None
    done: str | None = None  # the last fitted writer's stream point

    def run(k, names):
        inject = dict([base[k]]) if k in base else None
        with torch.inference_mode():
            return student(batches[k], names, vals, inject)

    for wr in writers_:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        if done is not None and wr.stream != done:
            for k in used:
                base[k] = (done, run(k, [done])[done])
        ys, ts, ws, rows, batch_list = [], [], [], 0, []
        for k in (used if used is not None else idx):
            got = run(k, [wr.x, wr.out, wr.stream])
            t = np.asarray(teacher_stream(k)[wr.stream], np.float32)
            keep = keep_rows(batches[k], t.shape)
            h = t.shape[-1]
            y = got[wr.x].cpu().numpy().reshape(-1, got[wr.x].shape[-1])
            p = got[wr.out].cpu().numpy().reshape(-1, h)
            s = got[wr.stream].cpu().numpy().reshape(-1, h)
            t = t.reshape(-1, h)
            if keep is not None:
                y, p, s, t = y[keep], p[keep], s[keep], t[keep]
            ys.append(y)
            ts.append(p + (t - s))
            ws.append(inverse_variance(t.var(1, dtype=np.float64)))
            rows += len(y)
            batch_list.append(k)
            if used is None and min_rows and rows >= min_rows:
                break
        used = batch_list
        done = wr.stream
        w = vals[wr.weight].detach().cpu().numpy()
        w_io = w.T if wr.transposed else w
        b = vals[wr.bias].detach().cpu().numpy()
        if b.shape != (w_io.shape[1],):
            continue  # a broadcast bias of another shape: left as trained
        # the ridge strength chosen on held-out runs of rows, as calibration does (a fixed one, 0.3,
        # fell from 0.998 to 0.992 on MiniLM gelu=phi6 with 96 sentences: too few rows per unit)
        rf = ridge_refit(np.concatenate(ys), np.concatenate(ts), w_io, b, weights=np.concatenate(ws))
        dev = vals[wr.weight].device
        vals[wr.weight] = torch.from_numpy(np.ascontiguousarray(rf.W.T if wr.transposed else rf.W)).to(dev)
        vals[wr.bias] = torch.from_numpy(rf.b).to(dev)
    return vals
